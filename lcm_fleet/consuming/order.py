"""The order a worker takes jobs in: interactive queues first, with a guaranteed bulk share.

kombu's Redis channel (kombu 5.7, ``kombu/transport/redis.py``) fetches with one ``BRPOP``
over all the queues it consumes; Redis answers from the first non-empty key in the order
given. The channel builds that order from its ``_queue_cycle``: ``consume(n)`` gives the
queues for the next ``BRPOP``, and ``rotate(queue)`` is called with the queue each delivery
came from (its default, ``round_robin``, moves that queue to the end, so that every queue is
equally likely to be served). :class:`ClassOrder` takes the cycle's place
(lcm_fleet/consuming/broker_guard.py) with this policy:

- Interactive queues (``q``) come before bulk queues (``q + ".bulk"``, lcm_fleet.contract
  BULK_SUFFIX): while an interactive job waits, it is fetched before any bulk one.
- The bulk share: after ``burst`` interactive deliveries in a row, the next fetch puts the
  bulk queues first. If that fetch still takes an interactive job, no bulk job was waiting
  at that moment, and the count starts again; a bulk delivery starts it again too. So
  while both classes wait, at least 1 fetch in ``burst + 1`` takes a bulk job, and a bulk
  job that arrives behind a stream of interactive ones waits for at most ``burst`` of them.
- Within a class the queues (the base queue and each size class) keep kombu's round robin.

The policy orders fetches, not renders: a worker holds at most one prefetched job per
Celery thread (``worker_prefetch_multiplier=1``, worker/consumer/app.py), so a job fetched
first starts first. (One more, for a while, when the credit of an ETA retry was taken back
while its fetch was out: broker_guard.Poller reads that reply rather than leave it unread.)
"""

from __future__ import annotations

from collections.abc import Iterable

from lcm_fleet.contract import BULK_SUFFIX

#: LCM_INTERACTIVE_BURST's default.
DEFAULT_BURST = 8


def is_bulk(queue: str) -> bool:
    return queue.endswith(BULK_SUFFIX)


class ClassOrder:
    """A kombu queue cycle (``update``, ``consume``, ``rotate``) that orders by job class."""

    def __init__(self, burst: int = DEFAULT_BURST) -> None:
        if burst < 1:
            raise ValueError(f"burst is {burst}; it must be at least 1")
        self.burst = burst
        #: Interactive deliveries since the last bulk one (or since bulk was seen empty).
        self.streak = 0
        self._interactive: list[str] = []
        self._bulk: list[str] = []
        #: Whether the last order handed out put the bulk queues first.
        self._bulk_first = False

    # kombu's round_robin_cycle keeps its list in ``items``; the channel only calls
    # update/consume/rotate, and so does this class.
    @property
    def items(self) -> list[str]:
        return [*self._interactive, *self._bulk]

    def update(self, queues: Iterable[str]) -> None:
        """The queues being consumed (kombu calls it on each consume and cancel)."""
        queues = list(dict.fromkeys(queues))
        keep = {q: i for i, q in enumerate(queues)}

        def merged(current: list[str], wanted: list[str]) -> list[str]:
            # Keep the round-robin position of the queues still consumed; new ones at the end.
            kept = [q for q in current if q in keep]
            return kept + [q for q in wanted if q not in kept]

        self._interactive = merged(self._interactive, [q for q in queues if not is_bulk(q)])
        self._bulk = merged(self._bulk, [q for q in queues if is_bulk(q)])

    def bulk_due(self) -> bool:
        return bool(self._bulk) and self.streak >= self.burst

    def consume(self, n: int) -> list[str]:
        """The queues of the next fetch, in the order Redis should try them."""
        self._bulk_first = self.bulk_due()
        ordered = (
            [*self._bulk, *self._interactive]
            if self._bulk_first
            else [*self._interactive, *self._bulk]
        )
        return ordered[:n]

    def rotate(self, last_used: str) -> str:
        """A job came from ``last_used``: count it, and move that queue to its class's end."""
        own = self._bulk if is_bulk(last_used) else self._interactive
        if last_used in own:
            own.append(own.pop(own.index(last_used)))
        if is_bulk(last_used) or self._bulk_first:
            self.streak = 0
        else:
            self.streak += 1
        return last_used

    def close(self) -> None:
        """kombu's cycles have it; nothing to release."""
