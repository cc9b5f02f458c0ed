"""Keep every malformed queue item from stopping a consumer (``lcm-worker``, ``lcm-webhooks``):
refuse it once, dead-letter it.

Three guards, each where kombu or Celery would otherwise raise in the consumer's main process
(lcm_fleet/consuming/screen.py lists where each kind of item breaks):

1. :class:`Channel`, kombu's Redis channel with one addition: the reply of each ``BRPOP``
   (and ``RPOP``) that takes an item off a queue goes through :func:`screen` first, as a
   redis-py response callback (``Redis.set_response_callback``) on the channel's clients. An
   item over ``LCM_MAX_MESSAGE_BYTES`` is refused before it is decoded; an item refused is
   written to the dead-letter list (lcm_fleet/dead_letter.py) and kombu sees an empty reply,
   so it never enters kombu's unacknowledged set and is never restored at shutdown.
   :class:`Transport` is kombu's Redis transport with this channel; the worker's app names
   it as ``broker_transport`` (lcm_fleet/consuming/config.py, for ``lcm-worker`` and
   ``lcm-webhooks``), so the URL stays ``redis://`` or ``rediss://``. With the option
   ``lcm_interactive_burst`` its queue cycle is the class order of order.py.
   Its :class:`Poller` reads every ``BRPOP`` reply at once, so that no item Redis popped
   waits in the socket, in no unacknowledged set, for a job to finish (see the class).
2. ``Transport._deliver``: what the screen passed and kombu still cannot build into a
   message (it should not happen) is dead-lettered instead of raised.
3. :class:`GuardedConsumer` (Celery's ``worker_consumer``): whatever Celery's task handler
   raises for a message (other than a lost connection) dead-letters and drops that message;
   the messages Celery itself refuses (unknown task, undecodable, invalid) are dead-lettered
   too, so each bad item is in the list exactly once.

Besides, :class:`Channel` keeps its kombu Connection for its whole life, so that Redis lost
at a job's receipt is a lost connection Celery reconnects after, not a crash in kombu (see
the class).

Checked against the pinned kombu 5.7.0 and celery 5.7.0 (tests/unit/test_broker_guard.py
runs the real kombu and Celery code on the screened items; tests/integration/
test_redis_restart.py the lost connection, on a real Redis and a real worker).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from prometheus_client import Counter

from lcm_fleet.consuming.order import ClassOrder
from lcm_fleet.consuming.screen import Refusal, ScreenPolicy, screen, short
from lcm_fleet.dead_letter import DEFAULT_MAX_ENTRIES, DeadLetterKind, DeadLetters, make_entry

logger = logging.getLogger(__name__)

DEAD_LETTERED = Counter(
    "lcm_dead_lettered_total",
    "Queue items refused and kept in the dead-letter list, by kind",
    ["kind"],
)
DEAD_LETTER_LOST = Counter(
    "lcm_dead_letter_write_failures_total",
    "Refused queue items that could not be written to the dead-letter list (logged instead)",
)

#: Transport options (broker_transport_options) the guard reads: plain values, so that
#: Celery can print and serialise its configuration (``celery inspect conf``).
OPTION_MAX_MESSAGE_BYTES = "lcm_max_message_bytes"
OPTION_TASKS = "lcm_tasks"
OPTION_MAX_ETA_AHEAD_S = "lcm_max_eta_ahead_s"
OPTION_MAX_ENTRIES = "lcm_dead_letter_max"
OPTION_WORKER = "lcm_worker_name"
#: With it, interactive queues are fetched first, bulk after that many in a row (order.py).
OPTION_INTERACTIVE_BURST = "lcm_interactive_burst"

_WRITE_ATTEMPTS = 3


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    return repr(value).encode()


class DeadLetterSink:
    """Writes refused items to the dead-letter list (a few attempts), counts and logs them."""

    def __init__(
        self, client: Callable[[], Any], max_entries: int, worker: str | None = None
    ) -> None:
        self.client, self.max_entries, self.worker = client, max_entries, worker

    def __call__(self, raw: Any, refusal: Refusal, queue: str | None = None) -> None:
        data = _bytes(raw)
        entry = make_entry(data, refusal.kind, refusal.reason, queue=queue, worker=self.worker)
        logger.error(
            "refused a queue item from %s (%s, %d bytes, sha256 %s): %s; dead-lettered as %s",
            queue or "a queue",
            refusal.kind.value,
            entry.size,
            entry.sha256[:16],
            refusal.reason,
            entry.id,
        )
        DEAD_LETTERED.labels(kind=refusal.kind.value).inc()
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                DeadLetters(self.client(), self.max_entries).add(entry)
                return
            except Exception as e:
                if attempt + 1 == _WRITE_ATTEMPTS:
                    DEAD_LETTER_LOST.inc()
                    logger.error(
                        "could not write dead-letter entry %s (its first bytes: %s): %s",
                        entry.id,
                        short(entry.prefix, 200),
                        e,
                    )
                    return
                time.sleep(0.2 * (attempt + 1))


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class _KeptTransport:
    """What kombu's ``Channel._connparams`` reads of a channel's transport (its ``client``,
    the kombu Connection, and ``default_port``), kept for after the transport let them go."""

    def __init__(self, client: Any, default_port: int) -> None:
        self.client, self.default_port = client, default_port


class _DetachedChannel:
    """A channel seen through :class:`_KeptTransport`: for kombu's ``_connparams`` only (it
    reads the channel's options and its transport, and assigns nothing)."""

    def __init__(self, channel: Channel, transport: _KeptTransport) -> None:
        self._channel, self.connection = channel, transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; items popped off a queue are screened before kombu decodes them.

    It also keeps its kombu Connection (``conninfo``) for the whole of its life. kombu 5.7.0
    reads it from the transport (``self.connection.client``) whenever the channel builds a
    connection pool, but ``kombu.Connection.collect``/``close`` let the transport drop it
    (``_do_close_transport``) while a channel may still be open: Celery's consumer, on a
    lost connection, runs ``collect()``; there the default channel's close stops at its
    pending BRPOP (ConnectionError) and ``close_connection`` at the pidbox channel's fanout
    delete (ConnectionError), so the default channel is closed only afterwards, by
    ``close()``, with no ``client`` left: its restore of the unacknowledged messages rebuilds
    the pool it had just disconnected, ``_connparams`` raises AttributeError ('NoneType'
    object has no attribute 'hostname', as in celery/kombu#582 and #970), which is not a
    connection error, and Celery stops with "Unrecoverable error". With the kept conninfo
    the restore tries Redis: a ConnectionError while it is away (ignored, and Celery
    reconnects), the messages put back if it is already back. A job still running acks on
    this channel later, through the same rebuilt pool.
    """

    _sink: DeadLetterSink | None = None
    _kept_client: Any = None

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        # Before kombu's __init__, which already creates a client (_create_client).
        self._kept_client = connection.client
        super().__init__(connection, *args, **kwargs)
        burst = self._options().get(OPTION_INTERACTIVE_BURST)
        if burst is not None:
            # In place of kombu's round robin over all queues: the class order (order.py).
            self._queue_cycle = ClassOrder(int(burst))
            self._update_queue_cycle()  # type: ignore[attr-defined]  # (not in kombu's stubs)

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport: Any = self.connection
        if transport is not None and transport.client is not None:
            return super()._connparams(asynchronous)  # type: ignore[misc]  # (not in stubs)
        # The transport let go of its client (or the channel of its transport): kombu's own
        # code, reading the kept conninfo instead; nothing of the transport is changed.
        kept = _KeptTransport(self._kept_client, kombu_redis.Transport.default_port)
        view: Any = _DetachedChannel(self, kept)
        return kombu_redis.Channel._connparams(view, asynchronous)  # type: ignore[attr-defined]

    def _options(self) -> dict[str, Any]:
        return dict(self._kept_client.transport_options or {})

    def _policy(self) -> ScreenPolicy | None:
        """The screen's policy from the transport options; None (no screen) without them."""
        options = self._options()
        if OPTION_MAX_MESSAGE_BYTES not in options:
            return None
        return ScreenPolicy(
            max_message_bytes=int(options[OPTION_MAX_MESSAGE_BYTES]),
            tasks=frozenset(options.get(OPTION_TASKS) or ()),
            max_eta_ahead_s=float(options.get(OPTION_MAX_ETA_AHEAD_S, 0.0)),
        )

    def _dead_letter(self) -> DeadLetterSink:
        if self._sink is None:
            options = self._options()
            self._sink = DeadLetterSink(
                self._create_plain_client,
                int(options.get(OPTION_MAX_ENTRIES, DEFAULT_MAX_ENTRIES)),
                options.get(OPTION_WORKER) or socket.gethostname(),
            )
        return self._sink

    def _create_plain_client(self) -> Any:
        return super()._create_client()  # type: ignore[misc]  # (not in kombu's stubs)

    def _create_client(self, asynchronous: bool = False) -> Any:
        client = super()._create_client(asynchronous)  # type: ignore[misc]
        policy = self._policy()
        if policy is not None:
            for command in ("BRPOP", "RPOP"):
                original = client.response_callbacks.get(command)
                client.set_response_callback(command, self._screened(command, original, policy))
        return client

    def _screened(
        self, command: str, original: Callable[..., Any] | None, policy: ScreenPolicy
    ) -> Callable[..., Any]:
        def callback(response: Any, **options: Any) -> Any:
            if original is not None:
                response = original(response, **options)
            if not response:
                return response
            if command == "BRPOP":
                key, item = response[0], response[1]
                queue: str | None = _text(key).rsplit(self.sep, 1)[0]
            elif isinstance(response, bytes | str):
                key, item, queue = None, response, None
            else:
                return response  # RPOP with a count: not how kombu calls it
            try:
                refusal = screen(_bytes(item), policy)
            except Exception as e:  # the screen itself must never stop the worker
                refusal = Refusal(DeadLetterKind.REFUSED, f"the screen failed on it: {e!r}")
            if refusal is None:
                return response
            self._dead_letter()(item, refusal, queue)
            return None  # kombu: nothing was popped (BRPOP is sent again)

        return callback


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, except that a ``BRPOP`` reply is read as soon as it arrives.

    kombu 5.7 sends a ``BRPOP`` only while the channel has prefetch credit, but when the
    credit drops before the reply is read (Celery takes back the credit an ETA message lent,
    as each of its retries with a countdown does once its time comes), it leaves the reply
    in the socket ("paused") until a job finishes. Redis has already taken that item off its
    queue, and it is in no unacknowledged set yet: a worker killed meanwhile (kill -9, the
    OOM killer, a lost machine) loses it, and its job stays queued with no message anywhere.
    Read at once, the item is in kombu's unacknowledged set and in the worker's held list
    (worker/consumer/reclaim.py) within the same loop turn, so another worker gives it back;
    the worker holds one message over its prefetch until a job finishes. What is left is
    the time a reply takes to be read after Redis sent it (one turn of the event loop).
    """

    def _pause_brpop(self, channel: Any, fileno: int) -> None:
        return None  # never leave a popped item in the socket

    def on_readable(self, fileno: int) -> Any:
        chan_type = self._fd_to_chan.get(fileno)  # type: ignore[attr-defined]  # (not in stubs)
        if chan_type is not None:
            chan, kind = chan_type
            if kind == "BRPOP" and chan._in_poll and not chan.qos.can_consume():
                return chan.handlers[kind]()
        return super().on_readable(fileno)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the screening :class:`Channel` and the :class:`Poller`
    that never leaves a popped item unread."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()

    def _deliver(self, message: Any, queue: str | None) -> None:
        try:
            super()._deliver(message, queue)
        except self.connection_errors:
            raise
        except Exception as e:
            # The screen passed it, and kombu could still not build it into a message.
            for channel in self.channels or ():
                if isinstance(channel, Channel):
                    from kombu.utils.json import dumps

                    refusal = Refusal(DeadLetterKind.REFUSED, f"kombu could not take it: {e!r}")
                    channel._dead_letter()(dumps(message), refusal, queue)
                    return
            raise


def _no_client() -> Any:
    raise RuntimeError(
        "broker_guard.set_client_factory was not called (lcm_fleet/consuming/config.py)"
    )


_client_factory: Callable[[], Any] = _no_client


def set_client_factory(factory: Callable[[], Any]) -> None:
    """How the consumer's dead-letter sink reaches Redis (the worker's settings, TLS included)."""
    global _client_factory
    _client_factory = factory


def _raw_of(message: Any) -> bytes:
    from kombu.utils.json import dumps

    raw = getattr(message, "_raw", None)
    try:
        return _bytes(dumps(raw)) if raw is not None else _bytes(message.body)
    except Exception:
        return repr(raw).encode()


class GuardedConsumer(Consumer):
    """Celery's consumer; a message its task handler cannot take is dead-lettered and dropped."""

    def _sink(self) -> DeadLetterSink:
        sink = getattr(self, "_lcm_sink", None)
        if sink is None:
            app = self.app
            options = app.conf.broker_transport_options or {}

            sink = DeadLetterSink(
                _client_factory,
                int(options.get(OPTION_MAX_ENTRIES, DEFAULT_MAX_ENTRIES)),
                options.get(OPTION_WORKER) or self.hostname,
            )
            self._lcm_sink = sink
        return sink

    def _refuse(self, message: Any, reason: str) -> None:
        queue = None
        with contextlib.suppress(Exception):
            queue = (message.delivery_info or {}).get("routing_key")
        self._sink()(_raw_of(message), Refusal(DeadLetterKind.REFUSED, reason), queue)
        connection_errors: Any = getattr(self, "connection_errors", ())
        if not getattr(message, "acknowledged", True):
            try:
                message.reject(requeue=False)
            except connection_errors:
                raise
            except Exception as e:
                logger.error("could not drop a refused message: %s", e)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors: Any = getattr(self, "connection_errors", ())

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as e:
                self._refuse(message, f"Celery could not take it: {short(e, 300)}")
                return None

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._refuse(message, "not a Celery task message (no task header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._refuse(message, f"unknown task: {short(exc, 200)}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._refuse(message, f"invalid task message: {short(exc, 200)}")

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._refuse(message, f"undecodable: {short(exc, 200)}")
