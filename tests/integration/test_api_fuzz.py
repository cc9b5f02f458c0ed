"""Schemathesis against the live lcm-api: no 5xx, no response outside the OpenAPI document.

Every operation gets a bounded number of generated requests (about a minute in all here);
the API runs on a queue no worker consumes, so submitted jobs stay queued.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.integration.conftest import ApiProcess, api_env, start_api, stop_api

EXAMPLES = 60


@pytest.fixture(scope="module")
def fuzzed_api(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    env = api_env(
        service_env,
        f"lcm.test.fuzz.{uuid.uuid4().hex[:8]}",
        # No worker serves these jobs: the images endpoint answers its timeout soon.
        LCM_OPENAI_WAIT_TIMEOUT_S="0.3",
        LCM_SERVED_SIZES="64x64,128x128",
        LCM_DEFAULT_RATE_PER_MINUTE="100000",
    )
    api = start_api(env, tmp / "api.log")
    yield api
    stop_api(api)


@pytest.fixture(scope="module")
def fuzz_key(fuzzed_api: ApiProcess) -> str:
    return fuzzed_api.create_key("fuzz")


def _check(case: Any, api: ApiProcess, key: str, seen: Counter[tuple[str, int]]) -> None:
    response = case.call(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    # Schema-valid requests may still be refused (400/409) for what JSON Schema cannot say:
    # a width not a multiple of 8, a webhook host that does not resolve or is private, a job
    # id in use, a size no worker serves. Those answers are checked like any other: 4xx in
    # the documented error shape.
    seen[(f"{case.method} {case.path}", response.status_code)] += 1
    excluded: list[Any] = [positive_data_acceptance]
    if case.path == "/v1/images/generations" and response.status_code == 504:
        # The one 5xx that is not about the input: no worker consumes this queue, so an
        # accepted request waits out LCM_OPENAI_WAIT_TIMEOUT_S. It must say so.
        assert response.json()["error"]["code"] == "timeout"
        excluded.append(not_a_server_error)
    if case.path == "/readyz" and response.status_code == 503:
        # Not ready is what /readyz is for: no worker beats on this test's Redis.
        assert response.json()["checks"]["worker"] is False
        excluded.append(not_a_server_error)
    case.validate_response(response, excluded_checks=excluded)


def test_api_answers_every_request_within_its_schema(fuzzed_api: ApiProcess, fuzz_key: str) -> None:
    # schemathesis' pytest plugin does not load under pytest 9; hypothesis drives each
    # operation's strategy directly instead.
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: Counter[tuple[str, int]] = Counter()
    assert len(operations) >= 11
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            _check(case, fuzzed_api, fuzz_key, seen)

        run()
    # The run reached past validation: jobs and batches were accepted, bad ones refused.
    assert seen[("POST /v1/jobs", 202)] and seen[("POST /v1/jobs", 400)], seen
    assert seen[("POST /v1/batches", 202)] and seen[("GET /v1/jobs/{job_id}", 404)], seen
