"""A job's soft and hard time limits, enforced by the worker itself.

The worker runs Celery's threads pool (see worker/render/process.py for why), which has no
time limits of its own. Each job gets two deadlines on the monotonic clock (system-wide
on Linux, so the render process can compare against them too):

- soft (``LCM_TASK_SOFT_TIME_LIMIT_S``): the render process stops the UNet loop at the
  next step, waits for the render slot or the uploads stop, and the job fails with
  Celery's ``SoftTimeLimitExceeded``, as the prefork pool's soft limit did;
- hard (``LCM_TASK_TIME_LIMIT_S``): a render that is still running is killed with its
  process (which is started again), and the job fails with ``TimeLimitExceeded``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded


@dataclass(frozen=True)
class Deadlines:
    soft_s: float
    hard_s: float
    #: time.monotonic() values.
    soft: float
    hard: float

    @classmethod
    def start(cls, soft_s: float, hard_s: float, now: float | None = None) -> Deadlines:
        now = time.monotonic() if now is None else now
        return cls(soft_s=soft_s, hard_s=hard_s, soft=now + soft_s, hard=now + hard_s)

    @classmethod
    def none(cls) -> Deadlines:
        """No limits (benchmarks, tools)."""
        return cls(soft_s=float("inf"), hard_s=float("inf"), soft=float("inf"), hard=float("inf"))

    def soft_left(self) -> float:
        return self.soft - time.monotonic()

    def hard_left(self) -> float:
        return self.hard - time.monotonic()

    def soft_exceeded(self, stage: str) -> SoftTimeLimitExceeded:
        return SoftTimeLimitExceeded(f"soft time limit ({self.soft_s:g}s) exceeded {stage}")

    def hard_exceeded(self, stage: str) -> TimeLimitExceeded:
        return TimeLimitExceeded(f"hard time limit ({self.hard_s:g}s) exceeded {stage}")

    def check_soft(self, stage: str) -> None:
        if self.soft_left() <= 0:
            raise self.soft_exceeded(stage)
