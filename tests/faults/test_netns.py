"""One worker's network cut: it runs in a network namespace of the test's own, reaching
Redis and S3 across a veth pair; the link is set down while it holds jobs, and those jobs
finish on the other worker (on the host) once the cut worker's heartbeat expires."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
import uuid

import pytest
import redis

from tests.faultkit import OwnRedis
from tests.faults.faultkit import (
    FAULTS_REDIS_PORT,
    JOB_SLACK_S,
    assert_clean,
    audit,
    held_jobs,
    records_of,
    recovery_after,
    report,
    submit_batch,
    wait_finished,
    wait_succeeded,
)
from tests.integration.tcp_proxy import TcpProxy

TTL_S = 3.0
JOB = {"width": 512, "height": 512, "steps": 2}
NETNS_PORT_OFFSET = 3


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns():
    """A namespace, a veth pair (host 10.231.N.1/30, namespace .2) and the host-side name."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"lcmf-{tag}", f"lcmfh{tag}", f"lcmfn{tag}"
    subnet = f"10.231.{random.randint(1, 250)}"
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"`ip netns add` is refused here: {e.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{subnet}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{subnet}.2/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield {"ns": ns, "host_if": host_if, "host_ip": f"{subnet}.1"}
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)
        _ip("netns", "del", ns)


def test_worker_cut_off_by_the_network_its_jobs_finish_elsewhere(
    scenario, s3, s3_services, netns, tmp_path
):
    host_ip = netns["host_ip"]
    server = OwnRedis(
        tmp_path / "redis", FAULTS_REDIS_PORT + NETNS_PORT_OFFSET, aof=False,
        bind=f"127.0.0.1 {host_ip}",
    ).start()  # fmt: skip
    # SeaweedFS binds loopback only: the namespace reaches it through a proxy on the veth.
    forwarder = TcpProxy(("127.0.0.1", s3_services["port"]), listen=host_ip)
    try:
        sc = scenario(server.url)
        env = sc.env(LCM_SIZES="512x512", LCM_HEARTBEAT_TTL_S=str(TTL_S))
        cut = sc.start_worker(
            "cut.log",
            {
                **env,
                "LCM_UNIT": "netns",
                "LCM_REDIS_URL": server.url_for(0, host=host_ip),
                "LCM_S3_ENDPOINT_URL": f"http://{host_ip}:{forwarder.port}",
                "KILL_AT_END": "1",
            },
            prefix=("ip", "netns", "exec", netns["ns"]),
        )
        other = sc.start_worker("other.log", {**env, "LCM_UNIT": "host"})
        batch = submit_batch(sc.settings, 10, "network cut", **JOB)
        wait_succeeded(sc.settings, batch.ids, 2, JOB_SLACK_S)
        r = redis.Redis.from_url(sc.settings.redis_url)
        deadline = time.monotonic() + JOB_SLACK_S
        held: dict[str, str] = {}
        while time.monotonic() < deadline and not held:
            held = held_jobs(r, "netns")
            time.sleep(0.05)
        assert held, "the namespaced worker never held a job"
        _ip("link", "set", netns["host_if"], "down")
        cut_at = time.time()
        # Cut off, it can finish nothing more: what it holds now is what must move.
        held = held_jobs(r, "netns")
        unfinished = {
            j for j, rec in records_of(sc.settings, held.values()).items()
            if rec is None or not rec.finished
        }  # fmt: skip
        recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S + 10 * TTL_S)
        result = audit(s3, sc.settings, batch.ids, records=recs)
        names = {
            f"{socket.gethostname()}:{cut.proc.pid}": "netns",
            f"{socket.gethostname()}:{other.proc.pid}": "host",
        }
        by_worker: dict[str, int] = {}
        for rec in recs.values():
            if rec is not None and rec.worker:
                unit = names.get(rec.worker, rec.worker)
                by_worker[unit] = by_worker.get(unit, 0) + 1
        recovery = recovery_after(result, unfinished, cut_at)
        report(
            "network_cut_netns",
            result,
            recovery_s=recovery,
            held_at_cut=len(held),
            unfinished_at_cut=len(unfinished),
            batch_done_after_cut_s=recovery_after(result, batch.ids, cut_at),
            jobs_by_worker=by_worker,
            cut_worker_exit_code=cut.proc.poll(),
        )
        assert_clean(result)
        assert unfinished, "every job it held had finished before the cut"
        for job_id in unfinished:
            rec = recs[job_id]
            assert rec is not None and names.get(rec.worker or "") == "host"
        assert recovery is not None and recovery < TTL_S + JOB_SLACK_S
        assert other.proc.poll() is None
        assert cut.proc.poll() is None or cut.proc.returncode != 0
    finally:
        forwarder.cut()
        server.stop()
