"""A worker and a producer warn at start when their broker keeps nothing over a restart.

Against a Redis of the test's own (tests/faultkit.py OwnRedis) run once without persistence
(``appendonly no``, ``save ''``) and once with AOF: ``lcm-worker --check`` (the worker's start
up to serving: settings, broker, persistence check, artifact, bucket) and ``lcm submit`` log
lcm_fleet/broker.py's warn_if_not_persistent line with the first and never with the second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultkit import OwnRedis
from tests.integration.conftest import ROOT, run_cli, worker_env


@pytest.fixture(params=[False, True], ids=["no-persistence", "aof"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis", aof=request.param)
    if not server.port_is_free():
        pytest.skip(f"port {server.port} is in use; set LCM_TEST_OWN_REDIS_PORT")
    with server:
        yield server


def _lcm_submit(url: str, queue: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(LCM_REDIS_URL=url, LCM_QUEUE=queue, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", "submit", "a lighthouse", "--seed", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_worker_and_producer_warn_at_start_only_without_persistence(
    broker: OwnRedis, service_env, model_dirs, tmp_path
):
    queue = f"lcm.persistence.{uuid.uuid4().hex[:8]}"  # no worker serves it: jobs stay queued
    env = worker_env(
        {**service_env, "LCM_REDIS_URL": broker.url}, model_dirs["int8"], tmp_path, queue
    )
    check = run_cli("worker.cli", "--check", env=env, check=False)
    submitted = _lcm_submit(broker.url, queue)
    assert check.returncode == 0, check.stderr[-3000:]
    assert submitted.returncode == 0, submitted.stderr
    assert broker.client().llen(queue) == 1  # the submit was queued either way
    worker_lines = [ln for ln in check.stderr.splitlines() if "the broker at" in ln]
    lcm_lines = [ln for ln in submitted.stderr.splitlines() if "the broker at" in ln]
    if broker.aof:
        assert worker_lines == [] and lcm_lines == []
        return
    for role, lines in (("lcm-worker", worker_lines), ("lcm", lcm_lines)):
        assert len(lines) == 1, (role, lines)
        assert f"{role}: the broker at {broker.url} has no persistence" in lines[0]
        assert "appendonly yes" in lines[0] and "appendfsync everysec" in lines[0]
    # At start: the producer says it before its job is queued.
    assert submitted.stderr.index(lcm_lines[0]) < submitted.stderr.index("submitted job")
