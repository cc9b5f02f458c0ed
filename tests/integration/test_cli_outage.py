"""The CLI against a Redis (of the test's own, with AOF) that is killed under it: it rides
the outage out within its deadline, then says in one line what is queued and what to run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.faultkit import OwnRedis, own_redis  # noqa: F401  (a fixture)
from tests.integration.conftest import ROOT

# A fault scenario on real processes: the faults tier (`-m faults`, .ci/run), not the default run.
pytestmark = pytest.mark.faults


def _lcm(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "producer.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(url: str, password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(
        LCM_REDIS_URL=url.replace("redis://", f"redis://:{password}@") if password else url,
        LCM_QUEUE=f"lcm.cli-outage.{uuid.uuid4().hex[:8]}",  # no worker: jobs stay queued
        PYTHONPATH=str(ROOT),
    )
    return env


def test_submit_file_wait_survives_a_restart_and_gives_up_in_one_line(
    own_redis: OwnRedis,  # noqa: F811
    tmp_path,
):
    env = _env(own_redis.url)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"prompt": "row {n}", "seed": {n}}}\n' for n in range(3)))
    waiting = _lcm(env, "submit-file", str(jobs), "--wait", "--timeout-s", "12")
    r = own_redis.client()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(r.scan_iter("lcm-fleet:batch:*")):
        time.sleep(0.1)
    time.sleep(1.5)  # the jobs are queued and the CLI is waiting
    own_redis.kill()
    time.sleep(2)
    own_redis.start()  # back: the wait goes on (no traceback at the kill)
    time.sleep(2)
    own_redis.kill()  # away again, until the CLI's deadline passes
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lcm: stopped waiting: ") and f"Redis at {own_redis.url}" in last
    assert "3 job(s) of batch b" in last and "`lcm batch status b" in last
    assert len(out.split()) == 3  # the three job ids were printed as they were queued


def test_status_while_redis_is_down_is_one_line(own_redis: OwnRedis):  # noqa: F811
    env = _env(own_redis.url, password="not-a-real-password")
    own_redis.kill()
    status = _lcm(env, "status", "some-job")
    _out, err = status.communicate(timeout=60)
    assert status.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lcm: Redis at redis://:***@127.0.0.1:")
    assert "did not answer" in lines[0] and "not-a-real-password" not in err
