"""What becomes of a job that raised: its outcome and what the task does about it.

One function, :func:`decide`, maps the exception (and the retries so far) to a
:class:`Decision`; the task applies it (worker/consumer/tasks.py) and
worker/consumer/report.py records it. The task body never chooses.

=====================================  ==========  ===============================================
raised                                 outcome     action
=====================================  ==========  ===============================================
InvalidJob, JobAbandoned (NEVER_RETRY) invalid,    fail once with the reason; never retried
                                       abandoned
TransientStorageError                  retried     retry after a capped, jittered backoff ...
  ... after ``max_retries`` retries    failed      fail
RendererLost                           requeued    back on the queue at once (the delivery
                                                   counter fails it after LCM_MAX_DELIVERIES)
GaveBackToInteractive                  given_back  back on the queue at once, its delivery not
                                                   counted (a bulk job making way, once per
                                                   worker process: worker/render/slot_pool.py)
Soft/TimeLimitExceeded                 timed_out   fail (acknowledged, not retried, as Celery's
                                                   own time limits do)
anything else                          failed      fail, with its traceback
=====================================  ==========  ===============================================
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from lcm_fleet.backoff import Backoff
from lcm_fleet.enums import TextEnum
from lcm_fleet.errors import InvalidJob, TransientStorageError
from worker.consumer.deliveries import JobAbandoned
from worker.errors import GaveBackToInteractive, JobCanceled, RendererLost
from worker.settings import WorkerSettings

#: Failures that no retry can fix: the job fails once, with its reason recorded. The task
#: declares them to Celery (``throws``), which then logs them without a traceback.
NEVER_RETRY: tuple[type[Exception], ...] = (InvalidJob, JobAbandoned)
#: Worth another try later: the job's uploads kept failing.
RETRY_ON: tuple[type[Exception], ...] = (TransientStorageError,)
#: The render process died under the job: the job itself may be fine.
REQUEUE_ON: tuple[type[Exception], ...] = (RendererLost,)
#: A bulk job made way for interactive work before it rendered: nothing went wrong.
GIVE_BACK_ON: tuple[type[Exception], ...] = (GaveBackToInteractive,)
TIME_LIMITS: tuple[type[Exception], ...] = (SoftTimeLimitExceeded, TimeLimitExceeded)
#: Cancelled through its record (lcm_fleet/records.py): before it started, or at a step.
CANCELED_BY: tuple[type[Exception], ...] = (JobCanceled,)


class Outcome(TextEnum):
    """How a job ended on this worker: the ``outcome`` label of ``lcm_jobs_total``."""

    SUCCEEDED = "succeeded"
    INVALID = "invalid"
    FAILED = "failed"
    RETRIED = "retried"
    ABANDONED = "abandoned"
    REQUEUED = "requeued"
    GIVEN_BACK = "given_back"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"


class Action(TextEnum):
    """What the task does with the exception."""

    #: ``Task.retry(countdown=...)``: the same job again later, one retry more.
    RETRY = "retry"
    #: ``Reject(requeue=True)``: back on its queue now.
    REQUEUE = "requeue"
    #: Re-raise: the task fails and its message is acknowledged.
    FAIL = "fail"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff: Backoff

    @classmethod
    def of(cls, settings: WorkerSettings) -> RetryPolicy:
        """LCM_TASK_MAX_RETRIES, LCM_RETRY_BACKOFF_BASE_S and _CAP_S (a cap below the base
        is taken as the base)."""
        base = settings.retry_backoff_base_s
        return cls(
            settings.task_max_retries, Backoff(base, max(settings.retry_backoff_cap_s, base))
        )


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    action: Action
    #: Retries before this attempt (Celery's ``request.retries``).
    retries: int
    #: Seconds until the retry (RETRY only).
    countdown_s: float | None = None
    #: A retryable failure after the last retry.
    exhausted: bool = False


def decide(
    error: BaseException, retries: int, policy: RetryPolicy, rng: random.Random | None = None
) -> Decision:
    """The outcome of a job that raised ``error`` after ``retries`` retries, and its action."""
    if isinstance(error, NEVER_RETRY):
        outcome = Outcome.ABANDONED if isinstance(error, JobAbandoned) else Outcome.INVALID
        return Decision(outcome, Action.FAIL, retries)
    if isinstance(error, RETRY_ON):
        if retries >= policy.max_retries:
            return Decision(Outcome.FAILED, Action.FAIL, retries, exhausted=True)
        return Decision(Outcome.RETRIED, Action.RETRY, retries, policy.backoff.delay(retries, rng))
    if isinstance(error, REQUEUE_ON):
        return Decision(Outcome.REQUEUED, Action.REQUEUE, retries)
    if isinstance(error, GIVE_BACK_ON):
        return Decision(Outcome.GIVEN_BACK, Action.REQUEUE, retries)
    if isinstance(error, TIME_LIMITS):
        return Decision(Outcome.TIMED_OUT, Action.FAIL, retries)
    if isinstance(error, CANCELED_BY):
        return Decision(Outcome.CANCELED, Action.FAIL, retries)
    return Decision(Outcome.FAILED, Action.FAIL, retries)
