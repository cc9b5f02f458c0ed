"""Who renders next in a worker: interactive jobs before bulk ones, at the render slot too.

The worker fetches interactive queues before bulk ones (lcm_fleet/consuming/order.py), but
under a bulk backlog each of its threads already holds a job when an interactive one is
queued: one renders, the other waits for the render slot with a bulk job it fetched
earlier. Without more, that held bulk job takes the slot when the render ends, and the
interactive job, fetched only once the finishing job's images are stored, waits for a whole
bulk render more.

So the pool hands a free slot to an interactive job first, and a bulk job yields a free
slot while interactive work waits in Redis for this worker (``interactive_waiting``): the
thread that is storing the last job's images is about to fetch it. A bulk job yields
once: until one interactive job has taken a slot after it began to wait, or for at most
``bulk_yield_max_s`` (then it takes the slot), so bulk keeps the share that the fetch
order gives it. With nothing interactive queued, a bulk job takes a free slot at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from lcm_fleet.contract import JobClass

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a yielding bulk job looks at Redis again.
YIELD_POLL_S = 0.02


class SlotTimeout(Exception):
    """No slot within the caller's timeout."""


class SlotPool(Generic[T]):
    """Free render processes, handed out interactive first (see the module's docstring)."""

    def __init__(
        self,
        interactive_waiting: Callable[[], bool] | None = None,
        bulk_yield_max_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interactive_waiting = interactive_waiting
        self.bulk_yield_max_s = bulk_yield_max_s
        self.clock = clock
        self._cond = threading.Condition()
        self._idle: list[T] = []
        self._interactive_waiters = 0
        #: Slots handed to interactive jobs so far (a yielding bulk job stops at the next).
        self._interactive_grants = 0
        #: Bulk jobs that yielded a free slot (a figure for tests and logs).
        self.yields = 0

    def put(self, item: T) -> None:
        with self._cond:
            self._idle.append(item)
            self._cond.notify_all()

    def get(self, job_class: JobClass, timeout_s: float | None = None) -> T:
        """A free slot for a job of ``job_class``; SlotTimeout after ``timeout_s``."""
        deadline = None if timeout_s is None else self.clock() + max(0.0, timeout_s)
        if job_class is JobClass.INTERACTIVE:
            return self._get_interactive(deadline)
        return self._get_bulk(deadline)

    def _wait(self, deadline: float | None, cap_s: float | None = None) -> None:
        """Wait on the condition (held) until notified, the deadline, or ``cap_s``."""
        left = None if deadline is None else deadline - self.clock()
        if left is not None and left <= 0:
            raise SlotTimeout
        wait_s = left if cap_s is None else (cap_s if left is None else min(left, cap_s))
        self._cond.wait(timeout=wait_s)

    def _get_interactive(self, deadline: float | None) -> T:
        with self._cond:
            self._interactive_waiters += 1
            try:
                while not self._idle:
                    self._wait(deadline)
                self._interactive_grants += 1
                return self._idle.pop()
            finally:
                self._interactive_waiters -= 1

    def _get_bulk(self, deadline: float | None) -> T:
        yield_until = self.clock() + self.bulk_yield_max_s
        with self._cond:
            grants_at_start = self._interactive_grants
        yielded = False
        while True:
            with self._cond:
                while not self._idle or self._interactive_waiters:
                    self._wait(deadline)
                done_yielding = (
                    self.interactive_waiting is None
                    or self._interactive_grants > grants_at_start
                    or self.clock() >= yield_until
                )
                if done_yielding:
                    return self._idle.pop()
            # A free slot, no interactive job here: is one queued for this worker?
            if not self._probe():
                with self._cond:
                    if self._idle and not self._interactive_waiters:
                        return self._idle.pop()
                continue
            if not yielded:
                yielded = True
                with self._cond:
                    self.yields += 1
            with self._cond:
                self._wait(deadline, cap_s=YIELD_POLL_S)

    def _probe(self) -> bool:
        assert self.interactive_waiting is not None
        try:
            return bool(self.interactive_waiting())
        except Exception as e:  # Redis away: do not hold a free slot for it
            logger.debug("could not look for queued interactive jobs: %s", e)
            return False
