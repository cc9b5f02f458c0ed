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
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on a ``transient`` error wait and try again, ``backoff.attempts`` times in all.

    The last transient error propagates unchanged; any other error propagates at once.
    """
    for attempt in range(backoff.attempts):
        try:
            return fn()
        except transient as e:
            if attempt + 1 >= backoff.attempts:
                raise
            wait = backoff.delay(attempt)
            logger.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.2fs",
                what,
                attempt + 1,
                backoff.attempts,
                e,
                wait,
            )
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
