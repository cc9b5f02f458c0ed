"""Capped exponential backoff with full jitter, for transient faults (Redis, S3).

Shared by the producer (publishing) and the worker (uploads, task retries). Every
loop here is bounded: nothing is retried forever.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (0-based): uniform in [0, min(cap_s, base_s * 2**n)]."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempts: int = 5

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got {self.base_s}, {self.cap_s}")
        if self.attempts < 1:
            raise ValueError(f"backoff needs attempts >= 1, got {self.attempts}")

    def ceiling(self, retry: int) -> float:
        return min(self.cap_s, self.base_s * (2 ** min(retry, 62)))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, self.ceiling(retry))


def call_with_backoff(
    fn: Callable[[], T],
    *,
    transient: tuple[type[BaseException], ...],
    backoff: Backoff,
    what: str,
    sleep: Callable[[float], object] = time.sleep,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    give_up: Callable[[], bool] | None = None,
    on_retry: Callable[[BaseException], object] | None = None,
) -> T:
    """Call ``fn``; on a ``transient`` error wait and try again.

    Without ``budget_s``: ``backoff.attempts`` calls in all. With ``budget_s``: as many calls
    as fit in that many seconds from the first (the attempts do not count; a 30 s outage
    does not use up a 300 s budget), each wait capped by what is left of it. ``give_up()``
    true (e.g. the job was abandoned) ends the retries at once. ``on_retry(error)`` is told of
    each transient error that is retried, before the wait.

    The last transient error propagates unchanged; any other error propagates at once.
    """
    started = clock()
    attempt = 0
    while True:
        try:
            return fn()
        except transient as e:
            wait = backoff.delay(attempt)
            if give_up is not None and give_up():
                raise
            if budget_s is None:
                if attempt + 1 >= backoff.attempts:
                    raise
                tried = f"attempt {attempt + 1} of {backoff.attempts}"
            else:
                left = budget_s - (clock() - started)
                if left <= 0:
                    raise
                wait = min(wait, left)
                tried = f"attempt {attempt + 1}, {left:.0f}s of its {budget_s:.0f}s budget left"
            if budget_s is None or attempt & (attempt + 1) == 0:  # budget: 1st, 2nd, 4th, 8th...
                logger.warning("%s failed (%s): %s; retrying in %.2fs", what, tried, e, wait)
            if on_retry is not None:
                on_retry(e)
            sleep(wait)
            attempt += 1
