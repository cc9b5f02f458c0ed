"""Webhook signatures, gallery link signatures, the retry policy, and one POST against a
loopback server (refused unless private URLs are allowed)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from lcm_fleet.backoff import Backoff
from producer.http.signatures import gallery_link_valid, gallery_sig, sign, verify
from producer.http.webhooks import Attempt, Poster, WebhookSettings, retry_delay, retryable_status

SECRET = b"whsec_" + b"ab" * 32
BODY = b'{"event":"job.succeeded","id":"j1"}'


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    mac = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"


def test_verify_accepts_a_fresh_signature_and_str_secrets() -> None:
    header = sign(SECRET, BODY)
    assert verify(SECRET, header, BODY)
    assert verify(SECRET.decode(), header, BODY)


def test_verify_refuses_a_tampered_body_or_another_secret() -> None:
    header = sign(SECRET, BODY)
    assert not verify(SECRET, header, BODY.replace(b"succeeded", b"failed"))
    assert not verify(SECRET, header, BODY + b" ")
    assert not verify(b"whsec_other", header, BODY)


def test_verify_refuses_an_old_or_future_timestamp() -> None:
    now = time.time()
    old = sign(SECRET, BODY, timestamp=int(now) - 301)
    assert not verify(SECRET, old, BODY, tolerance_s=300, now=now)
    assert verify(SECRET, old, BODY, tolerance_s=600, now=now)
    future = sign(SECRET, BODY, timestamp=int(now) + 400)
    assert not verify(SECRET, future, BODY, now=now)


def test_verify_refuses_a_changed_timestamp_and_malformed_headers() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    mac = header.split("v1=")[1]
    moved = f"t=1700000001,v1={mac}"
    assert not verify(SECRET, moved, BODY, now=1_700_000_001)
    for bad in ("", "t=,v1=", f"v1={mac}", "t=1700000000", "garbage", "t=abc,v1=00", "t=1,v1=é"):
        assert not verify(SECRET, bad, BODY, now=1_700_000_000)


def test_verify_accepts_any_of_several_v1_entries() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    other = sign(b"old-secret", BODY, timestamp=1_700_000_000).split(",")[1]
    assert verify(SECRET, f"{header},{other}", BODY, now=1_700_000_000)
    assert verify(b"old-secret", f"{header},{other}", BODY, now=1_700_000_000)


def test_gallery_links_expire_and_bind_kind_and_id() -> None:
    exp = int(time.time()) + 60
    sig = gallery_sig("pepper", "batch", "b1", exp)
    assert gallery_link_valid("pepper", "batch", "b1", exp, sig)
    assert not gallery_link_valid("pepper", "job", "b1", exp, sig)
    assert not gallery_link_valid("pepper", "batch", "b2", exp, sig)
    assert not gallery_link_valid("pepper", "batch", "b1", exp + 1, sig)
    assert not gallery_link_valid("other", "batch", "b1", exp, sig)
    assert not gallery_link_valid("pepper", "batch", "b1", exp, sig, now=exp + 1)
    assert not gallery_link_valid("pepper", "batch", "b1", exp, ":\u00f1\u00e9")  # not hex


def test_retry_policy_retries_5xx_408_429_only() -> None:
    assert all(retryable_status(s) for s in (500, 502, 503, 504, 408, 429))
    assert not any(retryable_status(s) for s in (200, 204, 301, 400, 401, 404, 410))


def _attempt(n: int, after: float | None = None) -> Attempt:
    return Attempt(n, 0.0, "u", "job.succeeded", 503, None, 0.1, True, after)


def test_retry_delay_is_capped_jittered_and_honours_retry_after_up_to_the_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0, attempts=10)
    delays = [retry_delay(backoff, _attempt(n)) for n in range(1, 10) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays) and len(set(delays)) > 10
    assert retry_delay(backoff, _attempt(1, after=5)) >= 5
    assert retry_delay(backoff, _attempt(1, after=3600)) <= 8.0


def test_settings_have_units_and_bounds() -> None:
    s = WebhookSettings(api_key_pepper="p")  # type: ignore[arg-type]
    assert s.webhook_backoff.attempts == s.webhook_max_attempts >= 1
    assert s.public_url == "http://127.0.0.1:8080"
    with pytest.raises(ValueError):
        WebhookSettings(api_key_pepper="p", webhook_max_attempts=0)  # type: ignore[arg-type]


class _Receiver(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = []
    seen: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.seen.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.statuses.pop(0) if self.statuses else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"statuses": [503, 404], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_poster_refuses_a_loopback_connection_unless_allowed(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    refused = Poster(5, allow_private=False).post(url, BODY, {}, 1, "job.succeeded")
    assert refused.status is None and not refused.retryable
    assert refused.error is not None and refused.error.startswith("refused")
    assert handler.seen == []
    poster = Poster(5, allow_private=True)
    first, second, third = (poster.post(url, BODY, {}, n, "job.succeeded") for n in (1, 2, 3))
    assert (first.status, first.retryable) == (503, True)
    assert (second.status, second.retryable, second.delivered) == (404, False, False)
    assert third.delivered and third.duration_s >= 0 and handler.seen == [BODY] * 3


def test_poster_records_a_connection_error_as_retryable() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Poster(2, allow_private=True).post(f"http://127.0.0.1:{port}/", BODY, {}, 1, "e")
    assert out.status is None and out.retryable and out.error and "connection" in out.error
