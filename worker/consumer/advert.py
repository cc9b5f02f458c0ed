"""This worker's advert: the queues, size classes and model it serves (lcm_fleet/served.py).

Written on each heartbeat (worker/consumer/reclaim.py beats it) with the heartbeat's TTL, so
producers stop sending sizes that nobody serves within LCM_HEARTBEAT_TTL_S of the last worker
of that size stopping; deleted at a clean stop. On each beat the worker also looks at every
lcm queue it knows (its own, the advertised ones, those producers published to) and logs a
warning, at most every ``warn_every_s`` per queue, for one that holds jobs and that no
advertising worker consumes; and it prunes from the known-queue set (``QUEUES_KEY``) a queue
that it has seen empty and unadvertised on every beat for ``prune_after_s``
(LCM_QUEUE_PRUNE_AFTER_S), so the set (hence the queue-depth gauge and the warnings) does not
grow for ever with queues nobody uses any more. A producer notes a queue once per process
(lcm_fleet/served.py), so a pruned queue is noted again by the next producer process that
publishes to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lcm_fleet.keys import ADVERTS_KEY, QUEUES_KEY, advert_key
from lcm_fleet.served import Advert, family_of, known_queues, read_adverts

logger = logging.getLogger(__name__)

#: At most this often the same unconsumed queue is warned about.
WARN_EVERY_S = 300.0
#: LCM_QUEUE_PRUNE_AFTER_S's default: a day.
PRUNE_AFTER_S = 86400.0


class Advertiser:
    def __init__(
        self,
        redis: Any,
        advert: Advert,
        ttl_s: float,
        *,
        warn_every_s: float = WARN_EVERY_S,
        prune_after_s: float = PRUNE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.advert = advert
        self.ttl_s = ttl_s
        self.warn_every_s = warn_every_s
        #: 0: never prune.
        self.prune_after_s = prune_after_s
        self.clock = clock
        self._warned: dict[str, float] = {}
        #: Known queues seen empty and unadvertised, since when (``clock``), in a row.
        self._idle_since: dict[str, float] = {}

    def beat(self) -> None:
        advert = self.advert.model_copy(update={"at": time.time()})
        pipe = self.redis.pipeline()
        pipe.set(
            advert_key(advert.incarnation), advert.model_dump_json(), px=int(self.ttl_s * 1000)
        )
        pipe.sadd(ADVERTS_KEY, advert.incarnation)
        pipe.execute()
        try:
            self.check_queues()
        except Exception as e:  # only the warning is lost; the next beat looks again
            logger.warning("could not look for queues nobody consumes: %s", e)

    def check_queues(self) -> list[str]:
        """Warn about queues holding jobs that no advertising worker consumes; return them."""
        served, expired = read_adverts(self.redis)
        if expired:
            self.redis.srem(ADVERTS_KEY, *expired)
        consumed = served.queues()
        known = known_queues(self.redis)
        candidates = sorted((known | set(self.advert.queues)) - consumed)
        if not candidates:
            self._idle_since.clear()
            return []
        pipe = self.redis.pipeline()
        for queue in candidates:
            pipe.llen(queue)
        depths = dict(zip(candidates, (int(n) for n in pipe.execute()), strict=True))
        stranded = [(q, n) for q, n in depths.items() if n]
        now = self.clock()
        self._prune({q for q, n in depths.items() if not n and q in known}, now)
        for queue, depth in stranded:
            if now - self._warned.get(queue, float("-inf")) < self.warn_every_s:
                continue
            self._warned[queue] = now
            base = family_of(queue)
            sizes = served.sizes(base)
            logger.warning(
                "queue %s holds %d job(s) and no worker advertises consuming it (%s); start a "
                "worker serving it, or cancel the jobs",
                queue,
                depth,
                f"workers on {base} serve {', '.join(sizes)}" if sizes else f"none on {base}",
            )
        return [q for q, _ in stranded]

    def _prune(self, idle: set[str], now: float) -> None:
        """Forget queues idle (empty, unadvertised) on every look for ``prune_after_s``."""
        self._idle_since = {q: self._idle_since.get(q, now) for q in idle}
        if not self.prune_after_s:
            return
        old = sorted(
            q for q, since in self._idle_since.items() if now - since >= self.prune_after_s
        )
        if not old:
            return
        self.redis.srem(QUEUES_KEY, *old)
        for queue in old:
            del self._idle_since[queue]
        logger.info(
            "forgot %d queue(s) empty and consumed by no worker for %.0f s: %s",
            len(old),
            self.prune_after_s,
            ", ".join(old),
        )

    def close(self) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(advert_key(self.advert.incarnation))
        pipe.srem(ADVERTS_KEY, self.advert.incarnation)
        pipe.execute()


def for_runtime(rt: Any, redis: Any, incarnation: str, name: str) -> Advertiser:
    """The advertiser of a worker runtime (worker/runtime.py), under its heartbeat's id."""
    from worker.render.sizes import format_size

    settings = rt.settings
    advert = Advert(
        worker=name,
        incarnation=incarnation,
        queue=settings.queue,
        # Interactive queues, then their bulk queues (worker/render/sizes.py queues_for).
        queues=tuple(rt.queues),
        sizes=tuple(format_size(s) for s in rt.sizes),
        model=settings.model or str(settings.model_dir or rt.model.path),
        model_manifest_sha256=rt.model.manifest.sha256,
        at=time.time(),
    )
    return Advertiser(
        redis, advert, settings.heartbeat_ttl_s, prune_after_s=settings.queue_prune_after_s
    )
