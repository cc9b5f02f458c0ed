"""Install the guard (broker_guard.py) in a consumer's Celery app: one place for every role.

``lcm-worker`` (worker/consumer/app.py), ``lcm-webhooks`` (producer/http/webhooks.py) and
``lcm-scheduler`` (producer/schedules/service.py) each call :func:`guard_app` with the task
names their queues carry; the app then takes items through the screening transport,
dead-letters what Celery cannot take, and (with an ``interactive_burst``) fetches interactive
queues ahead of bulk ones (order.py). The two small roles build their app with
:func:`consumer_app`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from celery import Celery

from lcm_fleet.consuming import broker_guard
from lcm_fleet.consuming.settings import ConsumerSettings
from lcm_fleet.contract import WIRE_CONFIG

logger = logging.getLogger(__name__)

GUARDED_TRANSPORT = "lcm_fleet.consuming.broker_guard:Transport"
GUARDED_CONSUMER = "lcm_fleet.consuming.broker_guard:GuardedConsumer"
#: URL schemes of kombu's plain Redis transport, which the guarded transport extends.
GUARDED_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class Guard:
    """What one consumer role's queues carry, and how its guard treats the rest."""

    #: Task names its queues carry; anything else on them is dead-lettered.
    tasks: Collection[str]
    #: Redis delivers an unacknowledged message again after this long.
    visibility_timeout_s: float
    #: An ETA further ahead is refused (it would be delivered twice).
    max_eta_ahead_s: float
    #: Who refused an item, in its dead-letter entry (None: the host name).
    consumer_name: str | None = None
    #: Fetch interactive queues first, bulk after this many in a row (None: kombu's round
    #: robin over all queues).
    interactive_burst: int | None = None


def is_guarded(redis_url: str) -> bool:
    return redis_url.split("://", 1)[0] in GUARDED_SCHEMES


def transport_options(settings: ConsumerSettings, guard: Guard) -> dict[str, Any]:
    """The guard's broker transport options (plain values, so Celery can print them)."""
    options: dict[str, Any] = {
        "visibility_timeout": guard.visibility_timeout_s,
        broker_guard.OPTION_MAX_MESSAGE_BYTES: settings.max_message_bytes,
        broker_guard.OPTION_TASKS: sorted(guard.tasks),
        broker_guard.OPTION_MAX_ETA_AHEAD_S: float(guard.max_eta_ahead_s),
        broker_guard.OPTION_MAX_ENTRIES: settings.dead_letter_max,
        broker_guard.OPTION_WORKER: guard.consumer_name,
    }
    if guard.interactive_burst is not None:
        options[broker_guard.OPTION_INTERACTIVE_BURST] = int(guard.interactive_burst)
    return options


def consumer_app(name: str, settings: ConsumerSettings, queue: str) -> Celery:
    """A Celery app of a consumer role other than the render worker (``lcm-webhooks``,
    ``lcm-scheduler``) on its own queue: JSON only, no results, each task acknowledged after
    it ran (one that dies mid-task runs again), one message per thread. The role adds its
    tasks and calls :func:`guard_app`."""
    app = Celery(name, broker=settings.redis_url)
    app.conf.update(WIRE_CONFIG)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def guard_app(
    app: Celery,
    settings: ConsumerSettings,
    guard: Guard,
    client_factory: Callable[[], Any] | None = None,
) -> bool:
    """Configure ``app`` to consume through the guard; False (and a warning) when the broker
    URL is not one the guarded transport extends (e.g. ``sentinel://``)."""
    guarded = is_guarded(settings.redis_url)
    if not guarded:
        logger.warning(
            "LCM_REDIS_URL is not a redis:// or rediss:// URL: malformed queue items "
            "are not screened (lcm_fleet/consuming/broker_guard.py)"
        )
    app.conf.update(
        # kombu's Redis transport, with the screen of queue items; GuardedConsumer
        # dead-letters what Celery still cannot take.
        broker_transport=GUARDED_TRANSPORT if guarded else None,
        broker_transport_options=transport_options(settings, guard),
        worker_consumer=GUARDED_CONSUMER,
    )
    # kombu turns TLS on for a rediss:// URL only when it picks the transport from the URL;
    # the guarded transport is named, so LCM_REDIS_TLS_* (certificates checked by default)
    # are always passed.
    app.conf.update(settings.celery_tls_config())
    broker_guard.set_client_factory(
        client_factory or (lambda: settings.redis_client(socket_timeout=5))
    )
    return guarded
