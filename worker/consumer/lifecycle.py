"""A job's record as the worker moves it (lcm_fleet/records.py): start, steps, end, webhooks.

The render task starts a job only through its record, so a job cancelled while queued
never renders; while it renders, each denoising step the render process reports is written
to the record (at most every ``progress_interval_s``, so a 5 ms step is not 200 writes a
second) and the record's cancel flag is read (at most every ``cancel_check_s``); a cancel
stops the render at its next step. When the job ends, its record says how, with the keys of
any images it had stored, and its webhook (and its batch's, when that was the last job) is
queued by task name for ``lcm-webhooks``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lcm_fleet.contract import (
    QUEUE_WEBHOOKS,
    TASK_WEBHOOK,
    Job,
    JobClass,
    JobResult,
    JobState,
    WebhookEvent,
    WebhookKind,
)
from lcm_fleet.records import RecordStore, StartOutcome, Transition
from worker.consumer.policy import Action, Decision, Outcome
from worker.errors import JobCanceled, WorkerError

logger = logging.getLogger(__name__)

#: At most this often a running job's step is written to its record.
PROGRESS_INTERVAL_S = 0.25
#: At most this often a running job's cancel flag is read.
CANCEL_CHECK_S = 0.1
#: How much of a failure's reason a record keeps.
REASON_MAX_CHARS = 500


class AlreadySucceeded(WorkerError):
    """A delivery of a job whose record already says succeeded (its first delivery's
    acknowledgement was lost): nothing to render, its result is the record's."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(f"job {result.job_id} already succeeded")
        self.result = result


class JobLifecycle:
    """One delivery of one job, as its record sees it."""

    def __init__(
        self,
        records: RecordStore,
        job_id: str,
        worker: str,
        send_task: Callable[..., Any] | None = None,
        *,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        cancel_check_s: float = CANCEL_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
        on_batch_finished: Callable[[str], None] | None = None,
    ) -> None:
        self.records, self.job_id, self.worker = records, job_id, worker
        #: Called with the batch id when this job's end finished its batch (its manifest).
        self.on_batch_finished = on_batch_finished
        self.send_task = send_task
        self.progress_interval_s, self.cancel_check_s = progress_interval_s, cancel_check_s
        self.clock = clock
        self._written = self._checked = float("-inf")
        self._cancel = False
        #: Keys of the images stored before the job failed or was cancelled (run_job's).
        self.kept: list[str] = []

    def start(self, job: Job, job_class: JobClass | None = None) -> None:
        """Raise JobCanceled when the job was cancelled before it started, AlreadySucceeded
        when its record says it succeeded. ``job_class``: of a job without a record (sent
        straight to the queue), the class of the queue it came from."""
        if self.records.start(job, self.worker, job_class=job_class) is StartOutcome.SKIP:
            record = self.records.get_job(job.job_id)
            if record is not None and record.state is JobState.SUCCEEDED and record.result:
                raise AlreadySucceeded(record.result)
            state = record.state.value if record is not None else "gone"
            raise JobCanceled(f"job {job.job_id} is {state} in its record: not rendered")

    def on_step(self, image: int, images: int, step: int, steps: int) -> bool:
        """A denoising step ended; True when the job was cancelled (stop the render)."""
        now = self.clock()
        try:
            if now - self._written >= self.progress_interval_s or step >= steps:
                self._written = now
                self.records.progress(self.job_id, image, images, step, steps)
            if not self._cancel and now - self._checked >= self.cancel_check_s:
                self._checked = now
                self._cancel = self.records.cancel_requested(self.job_id)
        except Exception as e:  # a record we cannot write must not fail the render
            logger.warning("job %s: could not update its record: %s", self.job_id, e)
        return self._cancel

    def cancelled(self) -> bool:
        """The record's cancel flag (read at most every ``cancel_check_s``; Redis away: no)."""
        now = self.clock()
        if not self._cancel and now - self._checked >= self.cancel_check_s:
            self._checked = now
            try:
                self._cancel = self.records.cancel_requested(self.job_id)
            except Exception as e:
                logger.warning("job %s: could not read its cancel flag: %s", self.job_id, e)
        return self._cancel

    def succeeded(self, result: JobResult) -> None:
        self._ended(self.records.succeed(self.job_id, result), WebhookEvent.JOB_SUCCEEDED)

    def failed(
        self, decision: Decision, error: BaseException, left: list[str] | None = None
    ) -> None:
        """Move the record as the policy decided: back to queued, or ended with the reason.

        ``left``: the keys of the images still stored after the job's cleanup (default: all
        it had stored, ``kept``); the record lists them and its reason names how many.
        """
        reason = f"{type(error).__name__}: {error}"
        if len(reason) > REASON_MAX_CHARS:
            reason = reason[:REASON_MAX_CHARS] + "..."
        partial = self.kept if left is None else left
        if partial and decision.action is Action.FAIL:
            reason += f" ({len(partial)} image(s) left in storage, listed in partial_keys)"
        try:
            if decision.action in (Action.RETRY, Action.REQUEUE):
                self.records.requeue(self.job_id, reason)
                return
            canceled = decision.outcome is Outcome.CANCELED
            move = self.records.fail(self.job_id, reason, canceled=canceled, partial_keys=partial)
        except Exception as e:
            logger.error("job %s: could not record its end (%s): %s", self.job_id, reason, e)
            return
        event = WebhookEvent.JOB_CANCELED if canceled else WebhookEvent.JOB_FAILED
        self._ended(move, event)

    def _ended(self, move: Transition, event: WebhookEvent) -> None:
        if not move.done or (self.send_task is None and self.on_batch_finished is None):
            return
        record = self.records.get_job(self.job_id)
        if record is None:
            return
        # The manifest first, so that the batch's webhook finds it.
        if move.batch_finished and record.batch_id and self.on_batch_finished is not None:
            self.on_batch_finished(record.batch_id)
        if self.send_task is None:
            return
        if record.webhook_url:
            self._webhook(WebhookKind.JOB, self.job_id, event)
        if move.batch_finished and record.batch_id:
            batch = self.records.get_batch(record.batch_id)
            if batch is not None and batch.webhook_url:
                self._webhook(WebhookKind.BATCH, batch.batch_id, WebhookEvent.BATCH_FINISHED)

    def _webhook(self, kind: WebhookKind, ident: str, event: WebhookEvent) -> None:
        assert self.send_task is not None
        try:
            self.send_task(
                TASK_WEBHOOK, args=[kind.value, ident, event.value], queue=QUEUE_WEBHOOKS
            )
        except Exception as e:
            logger.error("could not queue the %s webhook of %s %s: %s", event.value, kind, ident, e)
