"""What the fleet serves: the workers' adverts (queues, size classes, model), read by producers.

Every worker process, on each heartbeat (worker/consumer/advert.py), writes an
:class:`Advert` to ``advert_key(incarnation)`` with a TTL of LCM_HEARTBEAT_TTL_S and adds its
incarnation to ``ADVERTS_KEY``; a worker that stops beating stops advertising within the TTL.
Producers read the adverts through a :class:`ServedReader` (cached for LCM_SERVED_CACHE_S,
so a submit costs no Redis round trip in steady state) and, with :func:`require_served`,
refuse a job whose queue no advertising worker consumes, naming the sizes that are served.

Queues come in families: ``lcm.render`` (jobs without a size) and its size classes
``lcm.render.512x512``; a worker consumes its family's base queue and the queue of each size
it serves. Each of these queues has a bulk queue beside it (``lcm.render.512x512.bulk``,
lcm_fleet.contract.class_queue) that the same workers consume: a bulk queue is served when
its interactive queue is (an advert may list the bulk queues or not). The check
(``LCM_SERVED_SIZE_CHECK``):

- ``auto`` (default): refuse a job when workers advertise on its queue's family but none
  consumes its queue (a size nobody serves); when no worker of the family advertises at all,
  the fleet may be starting (or stopped): the job is queued and a warning logged.
- ``strict``: refuse also when no worker of the family advertises.
- ``off``: never refuse (queue ahead of a worker that is still starting).

Producers also add each queue they publish to to ``QUEUES_KEY``, so that workers export the
depth of queues that nothing consumes and warn about them (worker/metrics.py, advert.py).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lcm_fleet.contract import Job, interactive_queue
from lcm_fleet.enums import TextEnum
from lcm_fleet.errors import InvalidJob
from lcm_fleet.keys import ADVERTS_KEY, QUEUES_KEY, advert_key
from lcm_fleet.settings import ConnectionSettings

logger = logging.getLogger(__name__)

#: Seconds a producer reuses what it read of the adverts (LCM_SERVED_CACHE_S).
CACHE_S_DEFAULT = 1.5
#: At most this often a producer logs that no worker advertises on a queue family.
WARN_EVERY_S = 60.0
_SIZE_SUFFIX = re.compile(r"\.(\d+)x(\d+)$")


class ServedSizeCheck(TextEnum):
    """LCM_SERVED_SIZE_CHECK: when a producer refuses a job no worker would consume."""

    AUTO = "auto"
    STRICT = "strict"
    OFF = "off"


class Advert(BaseModel):
    """What one worker process serves, as it advertises it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker: str
    incarnation: str
    #: The family's base queue (the worker's LCM_QUEUE).
    queue: str
    #: Every queue it consumes: the base queue, then one per size class.
    queues: tuple[str, ...]
    #: Its size classes as ``WxH``, the default (for jobs without a size) first.
    sizes: tuple[str, ...]
    #: What LCM_MODEL or LCM_MODEL_DIR named (``name@version``, or a folder).
    model: str
    model_manifest_sha256: str
    #: Unix time of the beat that wrote it.
    at: float


def family_of(queue: str) -> str:
    """The base queue of a queue: ``lcm.render.512x512`` (or its bulk queue
    ``lcm.render.512x512.bulk``) -> ``lcm.render``."""
    return _SIZE_SUFFIX.sub("", interactive_queue(queue))


@dataclass(frozen=True)
class ServedSet:
    """The adverts alive at one read."""

    adverts: tuple[Advert, ...] = ()

    def consumers(self, queue: str) -> list[Advert]:
        """The adverts that consume ``queue``; a bulk queue's are its interactive queue's."""
        plain = interactive_queue(queue)
        return [a for a in self.adverts if queue in a.queues or plain in a.queues]

    def family(self, base: str) -> list[Advert]:
        return [a for a in self.adverts if a.queue == base]

    def sizes(self, base: str) -> list[str]:
        """The sizes served on a family, each once, in the order the adverts list them."""
        return list(dict.fromkeys(s for a in self.family(base) for s in a.sizes))

    def queues(self) -> set[str]:
        return {q for a in self.adverts for q in a.queues}


class UnservedSize(InvalidJob):
    """No advertising worker consumes the job's queue: it would wait for ever."""

    def __init__(
        self,
        message: str,
        *,
        field: str,
        value: str,
        served: list[str],
        queue: str,
        index: int = 0,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.served = served
        self.queue = queue
        #: Position of the refused job among those checked together.
        self.index = index

    @property
    def allowed(self) -> str:
        if not self.served:
            return f"a size some running worker serves on {family_of(self.queue)} (none runs)"
        return f"one of {', '.join(self.served)}, or no width and height (the workers' default)"


def _size_of(job: Job) -> str | None:
    return None if job.width is None or job.height is None else f"{job.width}x{job.height}"


_warned: dict[str, float] = {}


def _warn_unadvertised(base: str, clock: Callable[[], float] = time.monotonic) -> None:
    now = clock()
    if now - _warned.get(base, float("-inf")) < WARN_EVERY_S:
        return
    _warned[base] = now
    logger.warning(
        "no worker advertises on queue %s (none is up, or none has finished starting): jobs "
        "are queued and wait for one; LCM_SERVED_SIZE_CHECK=strict refuses them instead",
        base,
    )


def unserved(served: ServedSet | None, mode: ServedSizeCheck, job: Job, queue: str) -> str | None:
    """Why ``job`` on ``queue`` would never be consumed, or None when it may be queued."""
    if mode == ServedSizeCheck.OFF or served is None or served.consumers(queue):
        return None
    base = family_of(queue)
    sizes = served.sizes(base)
    size = _size_of(job)
    if not sizes:
        if mode == ServedSizeCheck.AUTO:
            _warn_unadvertised(base)
            return None
        return (
            f"no worker consumes queue {queue}: none advertises on {base} (none is up, or none "
            "has finished starting); start one, or set LCM_SERVED_SIZE_CHECK=auto (or off) "
            "to queue jobs ahead of the workers"
        )
    got = f"field 'width'/'height' got {size}" if size else f"queue {queue!r}"
    return (
        f"{got}: no worker serves it on {base}; the workers there serve {', '.join(sizes)}. "
        f"allowed: one of {', '.join(sizes)}, or no width and height (the workers' default "
        f"{sizes[0]}); to queue it for a worker still starting, set LCM_SERVED_SIZE_CHECK=off"
    )


def require_served(
    served: ServedSet | None, mode: ServedSizeCheck, targets: Iterable[tuple[Job, str]]
) -> None:
    """Raise :class:`UnservedSize` for the first job (with its queue) no worker would consume.

    ``served`` None (the adverts could not be read) refuses nothing: publishing then meets
    the same outage and reports it.
    """
    for index, (job, queue) in enumerate(targets):
        reason = unserved(served, mode, job, queue)
        if reason is not None:
            size = _size_of(job)
            raise UnservedSize(
                reason,
                field="width" if size else "queue",
                value=size or queue,
                served=served.sizes(family_of(queue)) if served is not None else [],
                queue=queue,
                index=index,
            )


def read_adverts(redis: Any) -> tuple[ServedSet, list[str]]:
    """The adverts alive now, and the incarnations listed whose advert has expired."""
    ids = sorted(
        i.decode() if isinstance(i, bytes) else str(i) for i in redis.smembers(ADVERTS_KEY)
    )
    if not ids:
        return ServedSet(), []
    adverts: list[Advert] = []
    expired: list[str] = []
    for incarnation, raw in zip(ids, redis.mget([advert_key(i) for i in ids]), strict=True):
        if raw is None:
            expired.append(incarnation)
            continue
        try:
            adverts.append(Advert.model_validate_json(raw))
        except ValidationError as e:
            logger.warning("ignoring a malformed advert of %s: %s", incarnation, e)
    return ServedSet(tuple(adverts)), expired


def known_queues(redis: Any) -> set[str]:
    """Every queue producers have published to."""
    return {q.decode() if isinstance(q, bytes) else str(q) for q in redis.smembers(QUEUES_KEY)}


class ServedReader:
    """A producer's view of the adverts, read at most every ``cache_s`` seconds.

    Thread-safe (the HTTP API submits from several threads). When Redis does not answer,
    the last set read is used if there is one, else None (nothing refused).
    """

    def __init__(
        self,
        redis: Any,
        cache_s: float = CACHE_S_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._served: ServedSet | None = None
        self._read_at = float("-inf")
        self._noted: set[str] = set()

    def read(self) -> ServedSet | None:
        now = self.clock()
        if now - self._read_at < self.cache_s:
            return self._served
        with self._lock:
            if now - self._read_at < self.cache_s:  # another thread read meanwhile
                return self._served
            try:
                self._served, _ = read_adverts(self.redis)
            except Exception as e:  # redis errors, OSError: publishing will report it
                logger.warning("could not read the workers' adverts: %s", e)
            self._read_at = self.clock()
            return self._served

    def note_queue(self, queue: str) -> None:
        """Record (once per process) that jobs are published to ``queue``."""
        if queue in self._noted:
            return
        try:
            self.redis.sadd(QUEUES_KEY, queue)
        except (
            Exception
        ) as e:  # Redis away: the publish that follows reports it; try again next time
            logger.debug("could not note queue %s: %s", queue, e)
            return
        self._noted.add(queue)


@lru_cache(maxsize=8)
def reader_for(settings: ConnectionSettings, cache_s: float = CACHE_S_DEFAULT) -> ServedReader:
    """One reader per broker (LCM_REDIS_URL, TLS settings applied) and cache time, per process."""
    client = settings.redis_client(socket_connect_timeout=2, socket_timeout=5)
    return ServedReader(client, cache_s)
