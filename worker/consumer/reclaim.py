"""A dead worker's jobs go back to their queue when its heartbeat stops, not an hour later.

Jobs are acknowledged late (worker/consumer/app.py): kombu's Redis transport keeps each
delivered message in its ``unacked`` hash until the worker acknowledges it, and when the
worker dies it puts the message back only after the visibility timeout
(LCM_VISIBILITY_TIMEOUT_S, an hour by default). So each worker process records, under an id
of its own (its incarnation), the delivery tags of the messages it holds, and keeps a
heartbeat key that expires LCM_HEARTBEAT_TTL_S after its last beat. At start and on every
beat, a worker gives back the messages of incarnations whose heartbeat expired, with kombu's
own ``restore_by_tag``: one Redis transaction per message that does nothing if the message
is no longer unacknowledged, so two workers giving back the same message put it back once.

A job given back is delivered again and counted by the delivery counter
(worker/consumer/deliveries.py): a job that keeps killing its workers still fails after
LCM_MAX_DELIVERIES. A worker cut off from Redis for longer than the TTL is taken for dead:
its running jobs are delivered again elsewhere, and their second run overwrites the same
objects (at-least-once, as with the visibility timeout).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celery.worker.request import Request

from lcm_fleet.keys import INCARNATIONS_KEY, alive_key, held_key
from worker import metrics

if TYPE_CHECKING:
    from worker.consumer.advert import Advertiser

logger = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Holdings:
    """The messages this worker process holds, and its heartbeat, in Redis."""

    def __init__(self, redis: Any, name: str, ttl_s: float, incarnation: str | None = None) -> None:
        self.redis = redis
        self.name = name
        self.ttl_s = ttl_s
        self.incarnation = incarnation or uuid.uuid4().hex

    def beat(self) -> None:
        pipe = self.redis.pipeline()
        pipe.set(alive_key(self.incarnation), self.name, px=int(self.ttl_s * 1000))
        pipe.hset(INCARNATIONS_KEY, self.incarnation, self.name)
        pipe.execute()

    def hold(self, tag: str, job_id: str) -> None:
        self.redis.hset(held_key(self.incarnation), tag, job_id)

    def release(self, tag: str) -> None:
        self.redis.hdel(held_key(self.incarnation), tag)

    def close(self) -> int:
        """A clean stop: forget the heartbeat; forget the held list only when it is empty.

        Celery has put back what it had not started and acknowledged what finished; a
        message still held here was never acknowledged (Redis was away when its job ended),
        so the list stays, under an incarnation with no heartbeat: the next worker gives
        those messages back at its start. Returns how many were left that way.
        """
        held = int(self.redis.hlen(held_key(self.incarnation)))
        pipe = self.redis.pipeline()
        pipe.delete(alive_key(self.incarnation))
        if held:
            logger.warning(
                "stopping with %d message(s) never acknowledged; left for the next worker to "
                "give back: %s",
                held,
                ", ".join(sorted(_text(j) for j in self.redis.hvals(held_key(self.incarnation)))),
            )
        else:
            pipe.delete(held_key(self.incarnation))
            pipe.hdel(INCARNATIONS_KEY, self.incarnation)
        pipe.execute()
        return held


def reclaim_dead(
    redis: Any, restore: Callable[[Iterable[str]], None], own: str
) -> dict[str, list[str]]:
    """Give back the messages of every incarnation whose heartbeat expired.

    Returns ``{"<worker name> (<incarnation>)": [job ids]}`` of those that held any.
    """
    given_back: dict[str, list[str]] = {}
    others = {
        _text(i): _text(n) for i, n in redis.hgetall(INCARNATIONS_KEY).items() if _text(i) != own
    }
    # Every worker runs this on every beat: one round trip for all heartbeats.
    pipe = redis.pipeline()
    for incarnation in others:
        pipe.exists(alive_key(incarnation))
    dead = [i for i, alive in zip(others, pipe.execute(), strict=True) if not alive]
    for incarnation in dead:
        held = {_text(t): _text(j) for t, j in redis.hgetall(held_key(incarnation)).items()}
        if held:
            restore(sorted(held))
            given_back[f"{others[incarnation]} ({incarnation})"] = sorted(held.values())
        pipe = redis.pipeline()
        pipe.delete(held_key(incarnation))
        pipe.hdel(INCARNATIONS_KEY, incarnation)
        pipe.execute()
    return given_back


def kombu_restore(app: Any) -> Callable[[Iterable[str]], None]:
    """Put unacknowledged messages back on their queues, as kombu's visibility timeout does."""

    def restore(tags: Iterable[str]) -> None:
        with app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag)

    return restore


class Heartbeat:
    """Beats every third of the TTL and gives back what dead workers held."""

    def __init__(
        self,
        holdings: Holdings,
        restore: Callable[[Iterable[str]], None],
        advert: Advertiser | None = None,
    ) -> None:
        self.holdings = holdings
        self.restore = restore
        self.advert = advert  # what this worker serves (worker/consumer/advert.py)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lcm-heartbeat", daemon=True)

    def tick(self) -> dict[str, list[str]]:
        self.holdings.beat()
        settle_missed(self.holdings, self.restore)
        if self.advert is not None:
            self.advert.beat()
        given_back = reclaim_dead(self.holdings.redis, self.restore, self.holdings.incarnation)
        for worker, jobs in given_back.items():
            metrics.GIVEN_BACK.inc(len(jobs))
            logger.warning(
                "worker %s stopped beating while it held %d job(s); put back on their queues: %s",
                worker,
                len(jobs),
                ", ".join(jobs),
            )
        return given_back

    def _run(self) -> None:
        while not self._stopped.wait(self.holdings.ttl_s / 3):
            try:
                self.tick()
            except Exception as e:  # Redis away: the next beat tries again
                logger.warning(
                    "heartbeat failed: %s; retrying in %.1fs", e, self.holdings.ttl_s / 3
                )

    def start(self) -> None:
        """One beat (and give-back) now, before consuming; then in the background."""
        try:
            self.tick()
        except Exception as e:
            logger.warning("first heartbeat failed: %s; retrying in the background", e)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        try:
            self.holdings.close()
            if self.advert is not None:
                self.advert.close()
        except Exception as e:
            logger.warning("could not clear this worker's heartbeat at exit: %s", e)


_holdings: Holdings | None = None
#: Messages whose end (ack or reject) could not be recorded: Redis was away, so the ack itself
#: most likely failed too. The next beat with Redis back gives them back (``restore_by_tag``
#: does nothing for a message that was acknowledged after all); a job given back that had
#: stored its result is recorded from it, not rendered again (worker/consumer/tasks.py).
_missed: set[str] = set()
_missed_lock = threading.Lock()


def install(holdings: Holdings | None) -> None:
    global _holdings
    _holdings = holdings


def _record(action: str, call: Callable[[Holdings], None]) -> bool:
    if _holdings is None:
        return True
    try:
        call(_holdings)
    except Exception as e:
        logger.warning("could not record that this worker %s a message: %s", action, e)
        return False
    return True


def _ended(tag: str) -> None:
    if not _record("released", lambda h: h.release(tag)):
        with _missed_lock:
            _missed.add(tag)


def settle_missed(holdings: Holdings, restore: Callable[[Iterable[str]], None]) -> list[str]:
    """Give back the messages whose end Redis missed; the tags given back."""
    with _missed_lock:
        tags = sorted(_missed)
        _missed.clear()
    if not tags:
        return []
    try:
        restore(tags)
        for tag in tags:
            holdings.release(tag)
    except Exception:
        with _missed_lock:
            _missed.update(tags)
        raise
    logger.warning("gave back %d message(s) whose acknowledgement Redis may have missed", len(tags))
    return tags


class HeldRequest(Request):
    """A task request that records its message as held until it is acknowledged or rejected."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tag, job_id = str(self.message.delivery_tag), str(self.id)
        _record("holds", lambda h: h.hold(tag, job_id))

    def acknowledge(self) -> None:
        super().acknowledge()
        _ended(str(self.message.delivery_tag))

    def reject(self, requeue: bool = False) -> None:
        super().reject(requeue=requeue)
        _ended(str(self.message.delivery_tag))
