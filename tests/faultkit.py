"""Services of a test's own, to kill and bring back: a Redis with AOF, a SeaweedFS S3.

Both are started through deploy/local/services.py in a state dir of their own, on a port of
their own, so that killing them touches no other test's (or helper's) services:

    with OwnRedis(tmp_path / "redis", port=16380) as r:   # redis-server --appendonly yes
        r.url                                              # redis://127.0.0.1:16380/0
        r.kill()                                           # SIGKILL, as a crash
        r.start()                                          # loads its AOF again

    s3 = OwnS3(services_state)   # the session's SeaweedFS: stop() and start() it
    with s3.down():              # stopped inside the block, started again after it
        ...
    s3.hang(); s3.resume()       # SIGSTOP / SIGCONT: a hung S3

Fixtures: ``own_redis`` (a function-scoped OwnRedis on LCM_TEST_OWN_REDIS_PORT, default 16380)
and ``session_s3`` (OwnS3 over the integration tier's session S3); import them into a test
module (``from tests.faultkit import own_redis``) to use them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

OWN_REDIS_PORT = int(os.environ.get("LCM_TEST_OWN_REDIS_PORT", "16380"))


def load_services() -> Any:
    from tests.integration.conftest import load_services as load

    return load()


class OwnRedis:
    """A redis-server of the test's own with AOF (appendfsync everysec) in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int = OWN_REDIS_PORT, db: int = 0) -> None:
        self.services = load_services()
        self.state_dir = Path(state_dir)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/{db}"
        self.down_at: float | None = None
        self.up_at: float | None = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        self.services.start_redis(self.state_dir, self.url, persistent=True)
        self.up_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL, as a crash (what the AOF keeps is what was fsynced: up to ~1 s less)."""
        if self.services.kill_redis(self.state_dir) is None:
            raise AssertionError(f"no redis-server of {self.state_dir} to kill")
        self.down_at = time.monotonic()

    def stop(self) -> None:
        self.services.stop_redis(self.state_dir)

    def __enter__(self) -> OwnRedis:
        if not self.services._port_is_free(self.port):
            pytest.skip(f"port {self.port} is in use; set LCM_TEST_OWN_REDIS_PORT")
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OwnS3:
    """The S3 (SeaweedFS) of a services state dir, to stop and start again."""

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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    with OwnRedis(tmp_path / "own-redis") as redis:
        yield redis


@pytest.fixture
def session_s3(services_state: dict[str, Any]) -> OwnS3:
    return OwnS3(services_state)


def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
