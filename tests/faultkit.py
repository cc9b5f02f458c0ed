"""Services of a test's own, to kill and bring back: a Redis server, the SeaweedFS S3.

Shared by the integration tier's outage tests and the fault tier (tests/faults/faultkit.py
adds batches, the audit and the report). Killing these touches no other test's (or
helper's) services:

    with OwnRedis(tmp_path / "redis", port=16380) as r:   # AOF (appendfsync everysec)
        r.url                                              # redis://127.0.0.1:16380/0
        r.kill()                                           # SIGKILL, as a crash
        r.start()                                          # loads its AOF again
    OwnRedis(d, port, aof=False, bind="127.0.0.1 10.0.0.1").start()   # no persistence

    s3 = OwnS3(services_state)   # a services.py state dir's SeaweedFS
    with s3.down():              # stopped inside the block, started again after it
        ...
    with s3.hung():              # SIGSTOP inside the block (accepts, answers nothing), SIGCONT
        ...

Fixtures: ``own_redis`` (a function-scoped OwnRedis with AOF on LCM_TEST_OWN_REDIS_PORT,
default 16380; skipped when that port is taken) and ``session_s3`` (OwnS3 over the
integration tier's session S3); import them into a test module
(``from tests.faultkit import own_redis``) to use them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

OWN_REDIS_PORT = int(os.environ.get("LCM_TEST_OWN_REDIS_PORT", "16380"))
#: Seconds a started redis-server may take to answer PING (its AOF replayed).
REDIS_START_S = 20.0


@functools.cache
def load_services() -> Any:
    """deploy/local/services.py as a module (it is a script, not a package)."""
    from tests.integration.conftest import load_services as load

    return load()


class OwnRedis:
    """``redis-server`` of the test's own: its port, its data dir (``state_dir``), with AOF
    (``appendonly yes``, ``appendfsync everysec``, as deploy/local/services.py --persistent
    runs it) or without any persistence; SIGKILLed and started again on the same dir."""

    def __init__(
        self,
        state_dir: Path,
        port: int = OWN_REDIS_PORT,
        db: int = 0,
        *,
        aof: bool = True,
        bind: str = "127.0.0.1",
    ) -> None:
        self.dir = Path(state_dir)
        self.port, self.aof, self.bind = port, aof, bind
        #: The URL of database ``db`` on 127.0.0.1.
        self.url = self.url_for(db)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)

    def url_for(self, db: int = 0, host: str = "127.0.0.1") -> str:
        return f"redis://{host}:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def argv(self) -> list[str]:
        server = shutil.which("redis-server")
        assert server, "these tests need redis-server on PATH"
        return [
            server,
            "--port", str(self.port),
            "--bind", *self.bind.split(),
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            *load_services().redis_persistence_args(self.aof),
        ]  # fmt: skip

    def port_is_free(self) -> bool:
        return bool(load_services()._port_is_free(self.port))

    def start(self) -> OwnRedis:
        """Start it and wait until it answers PING (a server still loading its AOF answers
        LOADING, which is not an answer here)."""
        if not self.port_is_free():
            raise AssertionError(f"port {self.port} is in use: cannot start a Redis there")
        log_path = self.dir / "redis.log"
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + REDIS_START_S
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return self
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited: {log_path.read_text()[-2000:]}")
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise AssertionError(f"redis-server on {self.port} did not answer in {REDIS_START_S} s")

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown save, no AOF rewrite; what the AOF keeps is what
        was fsynced (up to about 1 s less)."""
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"no redis-server of {self.dir} runs to kill")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> OwnRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OwnS3:
    """The S3 (SeaweedFS) of a deploy/local/services.py state dir, to stop, hang and bring
    back. ``services_state``: ``{"module", "state", "env"}`` as the integration tier's
    ``services_state`` and the fault tier's ``s3_services`` fixtures give it."""

    def __init__(self, services_state: dict[str, Any]) -> None:
        self.services = services_state["module"]
        self.state = services_state["state"]
        self.env = dict(services_state["env"])
        self.port = int(self.env["LCM_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
        self.redis_url = self.env["LCM_REDIS_URL"]
        self.bucket = self.env["LCM_S3_BUCKET"]

    def stop(self) -> None:
        self.services.stop_s3(self.state)

    def start(self) -> None:
        self.services.start(
            self.state, s3_port=self.port, redis_url=self.redis_url, bucket=self.bucket
        )

    def _pid(self) -> int:
        pid = self.services._running_pid(Path(self.state) / "weed.pid", "weed")
        if pid is None:
            raise AssertionError(f"no weed of {self.state} runs")
        return int(pid)

    def hang(self) -> None:
        """SIGSTOP: S3 accepts connections and answers nothing (a hung server)."""
        os.kill(self._pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)

    @contextmanager
    def down(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    @contextmanager
    def hung(self) -> Iterator[None]:
        self.hang()
        try:
            yield
        finally:
            self.resume()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "own-redis")
    if not server.port_is_free():
        pytest.skip(f"port {server.port} is in use; set LCM_TEST_OWN_REDIS_PORT")
    with server:
        yield server


@pytest.fixture
def session_s3(services_state: dict[str, Any]) -> OwnS3:
    return OwnS3(services_state)


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
