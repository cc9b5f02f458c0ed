"""What a queue family really holds: the jobs waiting and the jobs workers hold, for autoscaling.

Celery on Redis (kombu's Redis transport) keeps one queue in several lists, one per priority
step (``Channel.priority_steps``, 0 3 6 9): ``name`` itself for step 0 and
``name + Channel.sep + step`` (``\\x06\\x16``) for the others, so LLEN of ``name`` misses every
job sent with a priority. A message a worker has taken (prefetched or running) leaves the
lists for the ``unacked`` hash (delivery tag -> [message, exchange, routing key]) until it is
acknowledged: invisible to LLEN, yet work the fleet still has to do (and, if its worker dies,
work that comes back). :func:`family_depths` counts both, per family: an interactive queue
and the bulk queue beside it (lcm_fleet.contract.class_queue).

lcm-api serves the counts (``GET /v1/queues``, producer/http/routes/queues.py) for KEDA's
``metrics-api`` trigger (deploy/k8s/keda.yaml): the API is up when no worker is, which is
exactly when a worker's own gauges are missing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kombu.transport.redis import Channel

from lcm_fleet.contract import JobClass, class_queue, interactive_queue

#: HSCAN page size over the unacked hash (messages held by the whole fleet).
_SCAN_COUNT = 500


@dataclass(frozen=True)
class FamilyDepth:
    """One queue family at one read."""

    #: The interactive queue (its bulk queue is ``queue + ".bulk"``).
    queue: str
    interactive_waiting: int
    bulk_waiting: int
    #: Taken by a worker and not yet acknowledged (both classes).
    held: int

    @property
    def waiting(self) -> int:
        return self.interactive_waiting + self.bulk_waiting

    @property
    def total(self) -> int:
        return self.waiting + self.held


def priority_lists(queue: str) -> list[str]:
    """Every Redis list kombu keeps ``queue`` in, one per priority step."""
    sep = Channel.sep
    return [f"{queue}{sep}{step}" if step else queue for step in Channel.priority_steps]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _routing_key(raw: Any) -> str | None:
    """The queue an unacked entry came from (its routing key: producers publish to the
    anonymous exchange with the queue's name), or None for an entry that does not parse."""
    try:
        entry = json.loads(raw)
        return str(entry[2])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def held_by_queue(redis: Any, queues: Iterable[str] | None = None) -> Counter[str]:
    """How many messages of each queue sit in the unacked hash (``queues``: only those)."""
    wanted = None if queues is None else set(queues)
    counts: Counter[str] = Counter()
    for _tag, raw in redis.hscan_iter(Channel.unacked_key, count=_SCAN_COUNT):
        queue = _routing_key(raw)
        if queue is not None and (wanted is None or queue in wanted):
            counts[queue] += 1
    return counts


def waiting_in(redis: Any, queues: Sequence[str]) -> list[int]:
    """The messages waiting in each queue, every priority list counted (one pipeline)."""
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        for name in priority_lists(queue):
            pipe.llen(name)
    lengths = iter(int(n) for n in pipe.execute())
    return [sum(next(lengths) for _ in priority_lists(queue)) for queue in queues]


def family_depths(redis: Any, queues: Sequence[str]) -> list[FamilyDepth]:
    """The depth of each queue's family (a bulk queue given stands for its family), in the
    order given, each once: one pipeline of LLENs and one scan of the unacked hash."""
    families = list(dict.fromkeys(interactive_queue(q) for q in queues))
    members = [
        (family, job_class, class_queue(family, job_class))
        for family in families
        for job_class in JobClass
    ]
    counts = waiting_in(redis, [queue for _family, _class, queue in members])
    waiting = {
        (family, job_class): n
        for (family, job_class, _queue), n in zip(members, counts, strict=True)
    }
    held = held_by_queue(redis, (queue for _f, _c, queue in members))
    return [
        FamilyDepth(
            queue=family,
            interactive_waiting=waiting[family, JobClass.INTERACTIVE],
            bulk_waiting=waiting[family, JobClass.BULK],
            held=sum(held[class_queue(family, c)] for c in JobClass),
        )
        for family in families
    ]


__all__ = ["FamilyDepth", "family_depths", "held_by_queue", "priority_lists", "waiting_in"]
