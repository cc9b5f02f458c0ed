"""No job waits for a worker that will never come: the session's real worker (the tiny INT8
model, 128x128) advertises what it serves; a job of another size is refused at submit by the
Python API, the CLI and the HTTP API, naming 128x128; a queue nobody consumes shows in the
worker's queue-depth gauge and log. Inputs that reach the worker around the producer fail
with bounded reasons."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from lcm_fleet.contract import TASK_RENDER
from lcm_fleet.errors import InvalidJob
from lcm_fleet.keys import job_key
from lcm_fleet.served import UnservedSize, read_adverts
from producer.api import handle, submit
from producer.errors import JobFailed
from producer.queue import make_client
from tests.integration.conftest import (
    METRICS_PORT,
    ApiProcess,
    WorkerProcess,
    api_env,
    run_cli,
    start_api,
    stop_api,
    wait_for_log,
)


@pytest.fixture(scope="module")
def broker(producer_settings: Any) -> redis.Redis:
    return redis.Redis.from_url(producer_settings.redis_url)


@pytest.fixture(scope="module")
def api(
    worker: WorkerProcess, service_env: dict[str, str], queue_name: str, tmp_path_factory: Any
) -> Iterator[ApiProcess]:
    proc = start_api(api_env(service_env, queue_name), tmp_path_factory.mktemp("api") / "api.log")
    yield proc
    stop_api(proc)


def test_the_worker_advertises_its_queues_sizes_and_model(worker, broker, queue_name, model_dirs):
    served, _ = read_adverts(broker)
    mine = served.family(queue_name)
    assert len(mine) == 1
    advert = mine[0]
    assert advert.sizes == ("128x128",)
    # Interactive queues first, then their bulk queues (worker/render/sizes.py queues_for).
    assert advert.queues == (
        queue_name,
        f"{queue_name}.128x128",
        f"{queue_name}.bulk",
        f"{queue_name}.128x128.bulk",
    )
    assert advert.model == str(model_dirs["int8"]) and len(advert.model_manifest_sha256) == 64


def test_python_api_refuses_a_size_nobody_serves(worker, producer_settings, broker, queue_name):
    unserved = f"{queue_name}.256x256"
    before = broker.llen(unserved)
    with pytest.raises(UnservedSize) as info:
        submit("a cat", settings=producer_settings, width=256, height=256)
    message = str(info.value)
    assert "field 'width'/'height' got 256x256" in message and "serve 128x128" in message
    assert info.value.served == ["128x128"]
    assert broker.llen(unserved) == before
    # The size it serves, and no size at all, are accepted and rendered.
    assert submit("a cat", settings=producer_settings, width=128, height=128).wait(60).images


def test_cli_refuses_it_with_exit_2_naming_the_sizes(
    worker, service_env, queue_name, broker, tmp_path
):
    env = {**service_env, "LCM_QUEUE": queue_name}
    out = run_cli(
        "producer.cli", "submit", "a cat", "--width", "256", "--height", "256", env=env, check=False
    )
    assert out.returncode == 2, out.stderr
    assert "got 256x256" in out.stderr and "serve 128x128" in out.stderr
    assert "Traceback" not in out.stderr
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"prompt": "fine", "width": 128, "height": 128}\n'
        '{"prompt": "not served", "width": 192, "height": 128}\n'
    )
    out = run_cli("producer.cli", "submit-file", str(rows), env=env, check=False)
    assert out.returncode == 2, out.stderr
    assert "line 2: field 'width'/'height' got 192x128" in out.stderr
    assert "nothing was submitted" in out.stderr and out.stdout == ""
    assert broker.llen(f"{queue_name}.128x128") == 0


def _error(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 400, answer.text
    return dict(answer.json()["error"])


def test_http_api_refuses_it_with_400_naming_the_field(api, broker, queue_name):
    key = api.create_key("served")
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as c:
        error = _error(c.post("/v1/jobs", json={"prompt": "a cat", "width": 256, "height": 256}))
        assert (error["param"], error["code"], error["value"]) == (
            "width",
            "unserved_size",
            "256x256",
        )
        assert "128x128" in error["allowed"] and "serve 128x128" in error["message"]

        jobs = [
            {"prompt": "ok", "width": 128, "height": 128},
            {"prompt": "no", "width": 256, "height": 256},
        ]
        error = _error(c.post("/v1/batches", json={"jobs": jobs}))
        assert error["param"] == "jobs[1].width" and error["code"] == "unserved_size"

        error = _error(
            c.post("/v1/images/generations", json={"prompt": "a cat", "size": "256x256"})
        )
        assert error["param"] == "size" and "128x128" in error["allowed"]

        accepted = c.post("/v1/jobs", json={"prompt": "a cat", "width": 128, "height": 128})
        assert accepted.status_code == 202, accepted.text
    # Nothing of the refused requests was queued (the batch's good job neither).
    assert broker.llen(f"{queue_name}.256x256") == 0


def test_strict_refuses_before_any_worker_advertises_auto_queues_ahead(producer_settings, broker):
    queue = f"lcm.nobody.{uuid.uuid4().hex[:8]}"
    strict = producer_settings.model_copy(update={"queue": queue, "served_size_check": "strict"})
    with pytest.raises(InvalidJob, match=f"no worker consumes queue {re.escape(queue)}"):
        submit("a cat", settings=strict)
    auto = producer_settings.model_copy(update={"queue": queue})
    submit("a cat", settings=auto)  # the fleet of this queue may be starting
    assert broker.llen(queue) == 1
    broker.delete(queue)


def _metrics() -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as page:
        return str(page.read().decode())


def test_a_queue_nobody_consumes_shows_in_the_gauge_and_the_worker_log(
    worker, producer_settings, broker, queue_name
):
    unserved = f"{queue_name}.192x192"
    ahead = producer_settings.model_copy(update={"served_size_check": "off"})
    h = submit("for a worker still starting", settings=ahead, width=192, height=192)
    try:
        text = _metrics()
        assert f'lcm_queue_depth{{queue="{unserved}"}} 1.0' in text
        assert f'lcm_queue_consumers{{queue="{unserved}"}} 0.0' in text
        assert f'lcm_queue_consumers{{queue="{queue_name}.128x128"}} 1.0' in text
        # The next heartbeat (LCM_HEARTBEAT_TTL_S / 3) looks at the queues.
        wait_for_log(
            worker,
            f"queue {unserved} holds 1 job(s) and no worker advertises consuming it "
            f"(workers on {queue_name} serve 128x128)",
            timeout_s=40,
        )
    finally:
        broker.delete(unserved)
        h.cancel()


def test_bad_input_sent_around_the_producer_fails_with_a_bounded_reason(
    worker, producer_settings, broker
):
    client = make_client(producer_settings)
    big, controls = f"big-{uuid.uuid4().hex[:8]}", f"esc-{uuid.uuid4().hex[:8]}"
    prompt = "z" * 20_000
    client.send_task(
        TASK_RENDER, args=[{"prompt": prompt}], task_id=big, queue=producer_settings.queue
    )
    client.send_task(
        TASK_RENDER,
        args=[{"prompt": "a cat\x1b[31m\x00"}],
        task_id=controls,
        queue=producer_settings.queue,
    )
    with pytest.raises(JobFailed, match=r"\(20000 characters\): String should have at most 2000"):
        handle(big, producer_settings).wait(60)
    with pytest.raises(JobFailed, match=r"control character U\+001B \(ESC\) at position 5"):
        handle(controls, producer_settings).wait(60)
    # The result backend keeps the bounded reason, not the payload (nor its arguments).
    meta = broker.get(f"celery-task-meta-{big}")
    assert meta is not None and len(meta) < 3000 and "z" * 100 not in meta.decode()
    assert "args" not in json.loads(meta) or not json.loads(meta)["args"]
    reason = broker.hget(job_key(big), "reason")
    assert reason is None or len(reason) < 1000
    lines = [ln for ln in worker.log_text().splitlines() if big in ln]
    assert lines and all(len(ln) < 1000 for ln in lines)
    assert "z" * 100 not in worker.log_text()
