"""Who renders next in a worker: interactive jobs before bulk ones, at the render slot too.

The worker fetches interactive queues before bulk ones (lcm_fleet/consuming/order.py), but
under a bulk backlog each of its threads already holds a job when an interactive one is
queued: one renders, the other waits for the render slot with a bulk job it fetched
earlier. Without more, that held bulk job takes the slot when the render ends, and the
interactive job, fetched only once the finishing job's images are stored, waits for a whole
bulk render more.

So the pool hands a free slot to an interactive job first, and a bulk job that waits for
a slot while interactive work waits in Redis for this worker (``interactive_waiting``)
gives its message back to its queue (:class:`~worker.errors.GaveBackToInteractive`; the
task requeues it without counting a delivery, worker/consumer/tasks.py): its thread is then
free, and the worker's next fetch takes the interactive job, which gets the slot as soon as
the running render ends, not after that job's images are stored. Only a bulk job fetched
while no interactive work waited is given back: one fetched while it waited was fetched on
bulk's turn (LCM_INTERACTIVE_BURST, lcm_fleet/consuming/order.py) and keeps it, so bulk keeps
the share that the fetch order gives it. A job is given back at most once per worker process
(``give_back``; the second time it waits as below).

Without give-back (LCM_BULK_GIVE_BACK=false, or a job given back already), a bulk job
yields a free slot while interactive work waits in Redis: the thread that is storing the
last job's images is about to fetch it. It yields once: until one interactive job has taken
a slot after it began to wait, or for at most ``bulk_yield_max_s`` (then it takes the
slot). With nothing interactive queued, a bulk job takes a free slot at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from lcm_fleet.contract import JobClass
from worker.errors import GaveBackToInteractive

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a yielding bulk job looks at Redis again.
YIELD_POLL_S = 0.02
#: How often a bulk job waiting for a busy slot looks for interactive work in Redis.
GIVE_BACK_POLL_S = 0.05
#: Job ids given back that a pool remembers (each is given back once per process).
GIVEN_BACK_REMEMBERED = 10_000


class SlotTimeout(Exception):
    """No slot within the caller's timeout."""


class SlotPool(Generic[T]):
    """Free render processes, handed out interactive first (see the module's docstring)."""

    def __init__(
        self,
        interactive_waiting: Callable[[], bool] | None = None,
        bulk_yield_max_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        give_back: bool = False,
    ) -> None:
        self.interactive_waiting = interactive_waiting
        self.bulk_yield_max_s = bulk_yield_max_s
        self.clock = clock
        self.give_back = give_back
        self._given_back: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._idle: list[T] = []
        self._interactive_waiters = 0
        #: Slots handed to interactive jobs so far (a yielding bulk job stops at the next).
        self._interactive_grants = 0
        #: Bulk jobs that yielded a free slot, and that gave their message back (figures
        #: for tests and logs).
        self.yields = 0
        self.gave_back = 0

    def put(self, item: T) -> None:
        with self._cond:
            self._idle.append(item)
            self._cond.notify_all()

    def get(
        self, job_class: JobClass, timeout_s: float | None = None, job_id: str | None = None
    ) -> T:
        """A free slot for a job of ``job_class``; SlotTimeout after ``timeout_s``;
        GaveBackToInteractive for a bulk job ``job_id`` that should go back to its queue."""
        deadline = None if timeout_s is None else self.clock() + max(0.0, timeout_s)
        if job_class is JobClass.INTERACTIVE:
            return self._get_interactive(deadline)
        return self._get_bulk(deadline, job_id)

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

    def _may_give_back(self, job_id: str | None) -> bool:
        if not self.give_back or self.interactive_waiting is None or job_id is None:
            return False
        with self._cond:
            return job_id not in self._given_back

    def _giving_back(self, job_id: str) -> GaveBackToInteractive:
        with self._cond:
            self._given_back[job_id] = None
            while len(self._given_back) > GIVEN_BACK_REMEMBERED:
                self._given_back.popitem(last=False)
            self.gave_back += 1
        return GaveBackToInteractive(
            f"bulk job {job_id} went back to its queue: interactive work is queued for this "
            "worker while its render slot is busy"
        )

    def _get_bulk(self, deadline: float | None, job_id: str | None = None) -> T:
        # Fetched while interactive work waited: bulk's turn in the fetch order; it stays.
        give_back = self._may_give_back(job_id) and not self._probe()
        yield_until = self.clock() + self.bulk_yield_max_s
        with self._cond:
            grants_at_start = self._interactive_grants
        yielded = False
        while True:
            with self._cond:
                free = bool(self._idle) and not self._interactive_waiters
                if not free:
                    if not give_back or self._interactive_waiters:
                        self._wait(deadline)  # an interactive job here goes first anyway
                        continue
                    self._wait(deadline, cap_s=GIVE_BACK_POLL_S)
                    free = bool(self._idle) and not self._interactive_waiters
                if free and not give_back:  # (give_back implies interactive_waiting)
                    done_yielding = (
                        self.interactive_waiting is None
                        or self._interactive_grants > grants_at_start
                        or self.clock() >= yield_until
                    )
                    if done_yielding:
                        return self._idle.pop()
            # Is an interactive job queued for this worker (asked outside the lock)?
            queued = self._probe()
            if queued and give_back:
                assert job_id is not None
                raise self._giving_back(job_id)
            if not queued:
                if free:
                    with self._cond:
                        if self._idle and not self._interactive_waiters:
                            return self._idle.pop()
                continue
            # A free slot held for the interactive job that the storing thread fetches next.
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
