"""Webhook delivery: the ``lcm-webhooks`` role, a Celery worker (threads) on its own queue.

The render worker sends ``TASK_WEBHOOK`` by name with ``[kind, id, event]`` to
``QUEUE_WEBHOOKS`` when a job or batch ends (lcm_fleet/contract.py). One task run is one
attempt: read the record, build the body (the record as ``GET /v1/jobs/{id}`` or
``GET /v1/batches/{id}`` shows it), sign it with the owner key's webhook secret
(producer/http/signatures.py), POST it, record the attempt on the job or batch. A 5xx, 408,
429, timeout or connection error is retried by Celery after a capped, jittered delay
(:class:`lcm_fleet.backoff.Backoff`), at most ``LCM_WEBHOOK_MAX_ATTEMPTS`` attempts in all;
anything else ends the delivery. Redirects are not followed.

The connection itself is checked: the address the socket reached must be public (DNS may
have changed since the URL was accepted) unless ``LCM_WEBHOOK_ALLOW_PRIVATE_URLS``. Messages
are acknowledged after the attempt, so a deliverer killed mid-POST delivers again:
deliveries are at least once, and ``delivery_id`` lets a receiver drop a repeat.

Logs name the record, the event, the attempt, the status and the URL's host, never the
URL's path or query (some receivers put a token there), the secret or the signature.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
from celery import Celery, Task
from pydantic import Field, ValidationError
from starlette.requests import Request

from lcm_fleet.backoff import Backoff
from lcm_fleet.consuming.config import Guard, consumer_app, guard_app
from lcm_fleet.consuming.settings import ConsumerSettings
from lcm_fleet.contract import QUEUE_WEBHOOKS, TASK_WEBHOOK, WebhookEvent, WebhookKind
from lcm_fleet.settings import settings_problems
from producer.http.auth import webhook_secret
from producer.http.errors import ApiError
from producer.http.services import Services
from producer.http.settings import ApiSettings
from producer.http.signatures import SIGNATURE_HEADER, sign
from producer.http.webhook_urls import check_webhook_url, is_public

logger = logging.getLogger(__name__)

USER_AGENT = "lcm-fleet-webhooks/1"
#: Statuses worth another attempt besides 5xx: the receiver timed out or is throttling.
RETRY_STATUSES = frozenset({408, 429})
#: Job ids a batch body lists (the rest: GET /v1/batches/{id}?offset=...).
BATCH_BODY_JOB_IDS = 1000


#: The task names QUEUE_WEBHOOKS carries; anything else on it is dead-lettered.
WEBHOOK_TASKS = frozenset({TASK_WEBHOOK})


class WebhookSettings(ApiSettings, ConsumerSettings):
    """The deliverer's settings: the API's (pepper, Redis, S3), the queue screen's limits
    (LCM_MAX_MESSAGE_BYTES, LCM_DEAD_LETTER_MAX) and the retry policy."""

    #: Attempts per delivery, the first included; then it is given up (and recorded).
    webhook_max_attempts: int = Field(default=8, ge=1, le=30)
    #: Delay before retry n (0-based): uniform in [0, min(cap, base * 2**n)] seconds.
    webhook_backoff_base_s: float = Field(default=2.0, gt=0)
    webhook_backoff_cap_s: float = Field(default=300.0, gt=0, le=3000)
    #: Connect, write and read timeout of one POST.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: Deliveries in flight per lcm-webhooks process (Celery's threads pool).
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    #: The API's address as clients reach it; the bodies' ``image_url`` links point there.
    #: None: http://LCM_API_HOST:LCM_API_PORT.
    api_public_url: str | None = None

    @property
    def webhook_backoff(self) -> Backoff:
        return Backoff(
            base_s=self.webhook_backoff_base_s,
            cap_s=max(self.webhook_backoff_cap_s, self.webhook_backoff_base_s),
            attempts=self.webhook_max_attempts,
        )

    @property
    def public_url(self) -> str:
        return (self.api_public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")


class NonPublicAddress(Exception):
    """The webhook's host resolved to an address that is not public."""


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded on the job or batch."""

    attempt: int
    #: Unix seconds when the POST started.
    at: float
    url: str
    event: str
    #: The receiver's HTTP status; None when no answer came.
    status: int | None
    #: Why no answer came (or why the URL was refused).
    error: str | None
    duration_s: float
    #: Whether another attempt may succeed (5xx, 408, 429, timeout, connection error).
    retryable: bool
    #: Retry-After of the answer, if it had a valid one.
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def as_record(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("retry_after_s")
        return out


def retryable_status(status: int) -> bool:
    """The retry policy for answers (errors: timeouts and connection failures retry)."""
    return status >= 500 or status in RETRY_STATUSES


def retry_delay(backoff: Backoff, attempt: Attempt) -> float:
    """Seconds before the next attempt: the jittered backoff, or a longer Retry-After up to
    the cap."""
    delay = backoff.delay(attempt.attempt - 1)
    if attempt.retry_after_s is not None:
        delay = max(delay, min(attempt.retry_after_s, backoff.cap_s))
    return delay


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            text = value.decode("latin-1").strip()
            return float(text) if text.isdigit() else None
    return None


class _PublicOnlyBackend(httpcore.NetworkBackend):
    """httpcore's sockets, refusing a connection whose peer is not a public address."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        peer = stream.get_extra_info("server_addr")
        address = str(peer[0]) if peer else ""
        if not address or not is_public(address):
            stream.close()
            raise NonPublicAddress(
                f"the host {host!r} connected to the non-public address {address}"
            )
        return stream

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise NonPublicAddress("unix sockets are not webhook targets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class Poster:
    """POSTs signed bodies; one connection pool per process (thread-safe)."""

    def __init__(self, timeout_s: float, allow_private: bool) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=256,
            network_backend=None if allow_private else _PublicOnlyBackend(),
        )

    def post(
        self, url: str, body: bytes, headers: dict[str, str], attempt: int, event: str
    ) -> Attempt:
        at, start = time.time(), time.monotonic()

        def done(status: int | None, error: str | None, retry: bool, after: float | None = None):
            return Attempt(
                attempt=attempt,
                at=at,
                url=url,
                event=event,
                status=status,
                error=error,
                duration_s=round(time.monotonic() - start, 4),
                retryable=retry,
                retry_after_s=after,
            )

        try:
            # Checked again at delivery: the scheme, and (unless private URLs are allowed) that
            # the host still resolves to public addresses only; the socket is checked too.
            check_webhook_url(url, allow_private=self.allow_private)
        except ApiError as e:
            return done(None, f"refused: {e.message}", retry=False)
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.timeout_s)
        try:
            with self._pool.stream(
                "POST",
                url,
                headers=[(k.encode(), v.encode()) for k, v in headers.items()],
                content=body,
                extensions={"timeout": timeouts},
            ) as response:
                status = response.status
                after = _retry_after(response.headers)
        except NonPublicAddress as e:
            return done(None, f"refused: {e}", retry=False)
        except httpcore.TimeoutException as e:
            return done(None, f"timeout: {type(e).__name__}", retry=True)
        except (httpcore.NetworkError, httpcore.RemoteProtocolError, OSError) as e:
            return done(None, f"connection: {type(e).__name__}: {e}", retry=True)
        except (httpcore.UnsupportedProtocol, httpcore.LocalProtocolError) as e:
            return done(None, f"refused: {type(e).__name__}: {e}", retry=False)
        return done(status, None, retry=retryable_status(status), after=after)

    def close(self) -> None:
        self._pool.close()


def _request_for(base_url: str) -> Request:
    """A stand-in request so that the API's views build their absolute links for
    ``base_url`` (the views call ``request.url_for``)."""
    from fastapi import APIRouter

    from producer.http.routes import jobs

    router = APIRouter()
    router.include_router(jobs.router)
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    scope = {
        "type": "http",
        "scheme": parts.scheme,
        "server": (parts.hostname or "localhost", port),
        "root_path": parts.path.rstrip("/"),
        "path": "/",
        "query_string": b"",
        "headers": [(b"host", parts.netloc.encode())],
        "router": router,
    }
    return Request(scope)


@dataclass(frozen=True)
class Delivery:
    """What one attempt sends: where, and the signed body's parts."""

    url: str
    owner: str
    body: bytes


class Deliverer:
    """Builds, signs, posts and records webhook deliveries."""

    def __init__(self, settings: WebhookSettings, services: Services | None = None) -> None:
        self.settings = settings
        self.services = services or Services.from_settings(settings)
        self.poster = Poster(settings.webhook_timeout_s, settings.webhook_allow_private_urls)
        self._request = _request_for(settings.public_url)

    def delivery(self, kind: WebhookKind, record_id: str, event: WebhookEvent) -> Delivery | None:
        """The delivery of the event, or None: no such record, or it has no webhook."""
        from producer.http.views import batch_view, job_view

        records = self.services.records
        data: dict[str, Any]
        if kind is WebhookKind.JOB:
            job = records.get_job(record_id)
            if job is None or not job.webhook_url:
                return None
            url, owner = job.webhook_url, job.owner
            data = job_view(self.services, self._request, job).model_dump(mode="json")
            when = job.finished_at
        else:
            batch = records.get_batch(record_id)
            if batch is None or not batch.webhook_url:
                return None
            url, owner = batch.webhook_url, batch.owner
            ids = records.batch_job_ids(record_id, 0, BATCH_BODY_JOB_IDS)
            data = batch_view(batch, ids, 0, BATCH_BODY_JOB_IDS).model_dump(mode="json")
            when = batch.finished_at
        # The same event of the same record gets the same id on every attempt and every
        # redelivery, so that a receiver can drop repeats.
        delivery_id = hashlib.sha256(f"{kind.value}:{record_id}:{event.value}:{when!r}".encode())
        body = {
            "event": event.value,
            "kind": kind.value,
            "id": record_id,
            "delivery_id": delivery_id.hexdigest()[:32],
            "data": data,
        }
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return Delivery(url=url, owner=owner, body=raw)

    def attempt(
        self, kind: WebhookKind, record_id: str, event: WebhookEvent, number: int
    ) -> Attempt | None:
        """One attempt, recorded on the job or batch; None when there is nothing to deliver."""
        delivery = self.delivery(kind, record_id, event)
        if delivery is None:
            logger.info(
                "%s %s %s: no record or no webhook; nothing sent",
                kind.value,
                record_id,
                event.value,
            )
            return None
        secret = webhook_secret(self.settings, delivery.owner)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(secret, delivery.body),
            "X-LCM-Event": event.value,
            "X-LCM-Delivery-Attempt": str(number),
        }
        result = self.poster.post(delivery.url, delivery.body, headers, number, event.value)
        records = self.services.records
        if kind is WebhookKind.JOB:
            records.record_webhook(record_id, result.as_record())
        else:
            records.record_batch_webhook(record_id, result.as_record())
        logger.info(
            "%s %s %s attempt %d of %d to host %s: %s in %.3f s",
            kind.value,
            record_id,
            event.value,
            number,
            self.settings.webhook_max_attempts,
            urlsplit(delivery.url).hostname,
            result.status if result.status is not None else (result.error or "").split(":")[0],
            result.duration_s,
        )
        return result


def deliverer_name() -> str:
    """This process's Celery hostname (and the ``worker`` of its dead-letter entries)."""
    return f"lcm-webhooks@{socket.gethostname()}"


def make_app(settings: WebhookSettings, deliverer: Deliverer | None = None) -> Celery:
    """The lcm-webhooks Celery app with its one task. ``deliverer`` None: built on first use."""
    # Acknowledged after the attempt: a deliverer that dies mid-POST delivers again.
    app = consumer_app("lcm_webhooks", settings, QUEUE_WEBHOOKS)
    # A retry waits in the deliverer as an ETA message; the broker must not hand it to
    # another deliverer before its countdown ends (at most the backoff cap ahead).
    visibility_timeout_s = max(3600.0, 4 * settings.webhook_backoff_cap_s)
    # The same guard as the render worker's: a malformed item on QUEUE_WEBHOOKS is
    # dead-lettered once, with its reason, and the deliverer keeps delivering.
    guard_app(
        app,
        settings,
        Guard(
            tasks=WEBHOOK_TASKS,
            visibility_timeout_s=visibility_timeout_s,
            max_eta_ahead_s=visibility_timeout_s - settings.webhook_timeout_s,
            consumer_name=deliverer_name(),
        ),
    )
    state: dict[str, Deliverer | None] = {"deliverer": deliverer}

    def get() -> Deliverer:
        found = state["deliverer"]
        if found is None:
            found = state["deliverer"] = Deliverer(settings)
        return found

    @app.task(name=TASK_WEBHOOK, bind=True)
    def deliver_webhook(task: Task, kind: str, record_id: str, event: str) -> dict[str, Any]:
        try:
            the_kind, the_event = WebhookKind(kind), WebhookEvent(event)
        except ValueError:
            logger.error("webhook task with an unknown kind %r or event %r; dropped", kind, event)
            return {"delivered": False, "reason": "bad arguments"}
        number = task.request.retries + 1
        result = get().attempt(the_kind, record_id, the_event, number)
        if result is None:
            return {"delivered": False, "reason": "no webhook"}
        if result.delivered or not result.retryable or number >= settings.webhook_max_attempts:
            return {"delivered": result.delivered, "attempts": number, "status": result.status}
        delay = retry_delay(settings.webhook_backoff, result)
        raise task.retry(countdown=delay, max_retries=settings.webhook_max_attempts - 1)

    return app


def _settings() -> WebhookSettings:
    try:
        return WebhookSettings()  # type: ignore[call-arg]  # the pepper comes from the environment
    except ValidationError as e:
        raise SystemExit(
            f"lcm-webhooks: settings are not valid: {'; '.join(settings_problems(e))}\n"
            "LCM_API_KEY_PEPPER must be set (the API's: webhook secrets derive from it)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """``lcm-webhooks``: deliver webhooks from QUEUE_WEBHOOKS until SIGTERM."""
    parser = argparse.ArgumentParser(prog="lcm-webhooks", description=main.__doc__)
    parser.add_argument("--concurrency", type=int, help="deliveries in flight (threads)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    settings = _settings()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Built before the threads start, so they share one deliverer (clients, connection pool).
    app = make_app(settings, Deliverer(settings))
    concurrency = args.concurrency or settings.webhook_concurrency
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={QUEUE_WEBHOOKS}",
            f"--hostname={deliverer_name()}",
            f"--loglevel={args.log_level.upper()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
