"""The fault tier (`-m faults`): faults injected into real processes mid-batch.

The session builds the tiny INT8 artifact with the real CLI (tests/integration/conftest.py's
``model_dirs``), starts a Redis of its own (no persistence) on the port of
``LCM_TEST_REDIS_URL`` (default 16400) and SeaweedFS through deploy/local/services.py on
``LCM_TEST_S3_PORT`` (default 18350; weed also takes the next 9 ports). Scenarios that kill
Redis start their own ``redis-server`` beside it. Each scenario has its own queue, Redis
database and S3 prefix, and writes one JSON line to ``$LCM_FAULTS_REPORT`` (default: a file
in the session's tmp dir), printed again at the end of the run.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.settings import ProducerSettings
from tests.faultkit import OwnRedis
from tests.faults.faultkit import FAULTS_REDIS_PORT, FAULTS_S3_PORT, kill_worker, start_worker_cmd
from tests.integration.conftest import (
    WorkerProcess,
    load_services,
    model_dirs,  # noqa: F401  (the session fixture, reused)
    stop_worker,
    worker_env,
)

BUCKET = "lcm-faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = os.environ.get("LCM_FAULTS_REPORT")
    if path and Path(path).exists():
        terminalreporter.section("fault tier results (one JSON line per scenario)")
        terminalreporter.write_line(f"file: {path}")
        for line in Path(path).read_text().splitlines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def faults_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.environ.get("LCM_FAULTS_REPORT"):
        os.environ["LCM_FAULTS_REPORT"] = str(tmp_path_factory.mktemp("report") / "faults.jsonl")
    return Path(os.environ["LCM_FAULTS_REPORT"])


@pytest.fixture(scope="session")
def int8_dir(request: pytest.FixtureRequest) -> Path:
    """The tiny INT8 artifact (LCM_FAULTS_INT8_DIR reuses one built earlier, for iterating)."""
    given = os.environ.get("LCM_FAULTS_INT8_DIR")
    if given:
        return Path(given)
    return Path(request.getfixturevalue("model_dirs")["int8"])


@pytest.fixture(scope="session")
def base_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the tier's own (no persistence); scenarios take a database each."""
    server = OwnRedis(tmp_path_factory.mktemp("redis-base"), FAULTS_REDIS_PORT, aof=False)
    client = redis.Redis(port=FAULTS_REDIS_PORT, socket_connect_timeout=1)
    try:
        client.ping()
        started = False  # someone runs one there already (e.g. a previous run's): use it
    except redis.RedisError:
        server.start()
        started = True
    yield f"redis://127.0.0.1:{FAULTS_REDIS_PORT}"
    if started:
        server.stop()


@pytest.fixture(scope="session")
def s3_services(
    tmp_path_factory: pytest.TempPathFactory, base_redis: str
) -> Iterator[dict[str, Any]]:
    """SeaweedFS of the tier's own, as ``{"module", "state", "env", "port"}`` (what
    tests.faultkit.OwnS3 takes to stop or hang it)."""
    services = load_services()
    state = tmp_path_factory.mktemp("services")
    env = services.start(state, s3_port=FAULTS_S3_PORT, redis_url=f"{base_redis}/0", bucket=BUCKET)
    yield {"module": services, "state": state, "env": env, "port": FAULTS_S3_PORT}
    services.stop(state)


@pytest.fixture(scope="session")
def s3(s3_services: dict[str, Any]) -> Any:
    import boto3

    env = s3_services["env"]
    return boto3.client(
        "s3",
        endpoint_url=env["LCM_S3_ENDPOINT_URL"],
        region_name=env["LCM_S3_REGION"],
        aws_access_key_id=env["LCM_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["LCM_S3_SECRET_ACCESS_KEY"],
    )


_dbs = itertools.count(1)


@dataclass
class Scenario:
    """One scenario's queue, Redis, S3 prefix, worker environment and workers."""

    name: str
    settings: ProducerSettings
    service_env: dict[str, str]
    model_dir: Path
    tmp: Path
    cache_dir: Path
    workers: list[WorkerProcess]

    def env(self, **extra: str) -> dict[str, str]:
        env = worker_env(self.service_env, self.model_dir, self.tmp, self.settings.queue, **extra)
        env["LCM_CACHE_DIR"] = str(self.cache_dir)  # one compile cache for the tier
        return env

    def start_worker(
        self, log_name: str, env: dict[str, str], prefix: tuple[str, ...] = ()
    ) -> WorkerProcess:
        worker = start_worker_cmd(env, self.tmp / log_name, prefix)
        self.workers.append(worker)
        return worker


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest,
    s3_services: dict[str, Any],
    base_redis: str,
    int8_dir: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Scenario]]:
    """``scenario(redis_url=None)``: a fresh queue, S3 prefix and Redis database (of the
    base Redis unless a URL of another server is given); its workers are killed at the end."""
    made: list[Scenario] = []
    cache = tmp_path_factory.getbasetemp() / "ov-cache"
    cache.mkdir(exist_ok=True)

    def make(redis_url: str | None = None) -> Scenario:
        tag = uuid.uuid4().hex[:8]
        name = request.node.name.replace("[", "-").replace("]", "")[:40]
        if redis_url is None:
            db = next(_dbs)
            assert db < 16, "the base Redis has 16 databases"
            redis_url = f"{base_redis}/{db}"
        redis.Redis.from_url(redis_url).flushdb()
        env = {**s3_services["env"], "LCM_REDIS_URL": redis_url, "LCM_S3_PREFIX": f"faults/{tag}"}
        settings = ProducerSettings(
            redis_url=redis_url,
            queue=f"lcm.faults.{tag}",
            s3_endpoint_url=env["LCM_S3_ENDPOINT_URL"],
            s3_bucket=env["LCM_S3_BUCKET"],
            s3_access_key_id=env["LCM_S3_ACCESS_KEY_ID"],
            s3_secret_access_key=env["LCM_S3_SECRET_ACCESS_KEY"],
            s3_prefix=f"faults/{tag}",
        )
        sc = Scenario(name, settings, env, int8_dir, tmp_path, cache, [])
        made.append(sc)
        return sc

    yield make
    for sc in made:
        for worker in sc.workers:
            if worker.proc.poll() is None:
                if "KILL_AT_END" in worker.env:
                    kill_worker(worker)
                else:
                    stop_worker(worker)
