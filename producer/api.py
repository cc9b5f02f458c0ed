"""Python API: ``submit(...) -> JobHandle``; the handle's record, progress, cancel and wait.

Every submitted job gets a record (lcm_fleet/records.py) before it is published, so its
state, progress and result read the same here, in the CLI and in the HTTP API.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lcm_fleet.backoff import Backoff
from lcm_fleet.broker import OUTAGE_BACKOFF, BrokerUnavailable, ride_out, unreachable
from lcm_fleet.contract import (
    HEADER_SUBMITTED_AT,
    TASK_RENDER,
    Job,
    JobClass,
    JobResult,
    JobState,
    class_queue,
    interactive_queue,
    parse_job,
    queue_for,
)
from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import (
    ANY_OWNER,
    LOCAL_OWNER,
    CancelOutcome,
    Enqueue,
    Guards,
    JobRecord,
    Progress,
    RecordStore,
    SubmitStatus,
)
from lcm_fleet.served import ServedSizeCheck, reader_for, require_served
from producer.errors import JobCanceled, JobFailed, JobTimeout, SubmitError, SubmitRefused
from producer.queue import (
    broker_is_records,
    cached_broker,
    cached_client,
    cached_records,
    queue_push,
    task_message,
)
from producer.settings import ProducerSettings

logger = logging.getLogger(__name__)

_TRANSIENT = (OperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)


class JobHandle:
    """A submitted job: its id, its record (state, progress), and its result once done."""

    def __init__(
        self,
        job: Job | None,
        job_id: str,
        client: Celery,
        records: RecordStore | None = None,
        owner: str = ANY_OWNER,
    ) -> None:
        self.job = job
        self.job_id = job_id
        self._client = client
        self._records = records
        self._owner = owner

    def record(self) -> JobRecord | None:
        """The job's record; None for an unknown id (or one submitted without records)."""
        if self._records is None:
            return None
        return self._records.get_job(self.job_id, self._owner)

    def progress(self) -> Progress | None:
        record = self.record()
        return None if record is None else record.progress

    def cancel(self) -> CancelOutcome:
        """Cancel: a queued job never renders; a running one stops at its next step."""
        if self._records is None:
            return CancelOutcome.NOT_FOUND
        return self._records.cancel_job(self.job_id, self._owner)

    @property
    def _async(self) -> AsyncResult:
        return AsyncResult(self.job_id, app=self._client)

    @property
    def state(self) -> str:
        """Celery state: PENDING (queued or unknown), STARTED, RETRY, SUCCESS or FAILURE."""
        return str(self._async.state)

    def wait(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> JobResult:
        """Block until the job finishes; return its result or raise JobFailed / JobTimeout.

        A cancelled job raises :class:`JobCanceled` (a JobFailed).
        """
        result = self._async
        deadline = time.monotonic() + timeout_s
        outage: BaseException | None = None
        attempt = 0
        while True:
            try:
                done = self._poll(result)
            except _TRANSIENT as e:  # Redis away: ride it out until the deadline
                if outage is None:
                    logger.warning(
                        "job %s: Redis away while waiting (%s); retrying", self.job_id, e
                    )
                outage, attempt = e, attempt + 1
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(
                        f"job {self.job_id}: {unreachable(self._url, e, timeout_s)}; the job "
                        f"stays queued or running: wait again with `lcm wait {self.job_id}`"
                    ) from e
                time.sleep(
                    min(OUTAGE_BACKOFF.delay(attempt), max(0.0, deadline - time.monotonic()))
                )
                continue
            outage, attempt = None, 0
            if done is not None:
                return done
            if time.monotonic() >= deadline:
                raise JobTimeout(
                    f"job {self.job_id} not finished after {timeout_s:.0f}s (state "
                    f"{result.state}); it may still be queued or running: wait again with its id"
                )
            time.sleep(poll_s)

    def _poll(self, result: AsyncResult) -> JobResult | None:
        """The result once the job finished; JobFailed / JobCanceled; None while it runs."""
        record = self.record()
        if record is not None and record.finished:
            if record.result is not None:
                return record.result
            if record.state is JobState.CANCELED:
                raise JobCanceled(self.job_id, record.reason or "canceled")
            if record.state is JobState.FAILED and record.reason:
                raise JobFailed(self.job_id, record.reason)
        state = result.state
        if state == "SUCCESS":
            return JobResult.model_validate(result.result)
        if state == "FAILURE":
            info = result.info
            reason = (
                f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
            )
            raise JobFailed(self.job_id, reason)
        return None

    @property
    def _url(self) -> str:
        return str(self._client.conf.broker_url or "")

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r})"


def handle(job_id: str, settings: ProducerSettings | None = None) -> JobHandle:
    """A handle for a job submitted earlier, by its id."""
    settings = settings or ProducerSettings()
    return JobHandle(None, job_id, cached_client(settings), cached_records(settings))


def target_queue(
    job: Job,
    settings: ProducerSettings,
    queue: str | None = None,
    job_class: JobClass = JobClass.INTERACTIVE,
) -> str:
    """The queue a job is published to: its size class's queue of LCM_QUEUE
    (:func:`queue_for`), or an explicit ``queue`` (``--queue``); either way the class's
    queue of that family member: a bulk job goes to ``<queue>.bulk``. An explicit queue
    names the interactive queue (a ``.bulk`` suffix given with it is dropped, then the
    job's class puts it back or not), so the record's class and the queue always agree."""
    if queue:
        return class_queue(interactive_queue(queue), job_class)
    return queue_for(job, settings.queue, job_class)


def check_served(
    jobs: Sequence[Job],
    settings: ProducerSettings,
    queue: str | None = None,
    job_class: JobClass = JobClass.INTERACTIVE,
) -> None:
    """Refuse, before anything is queued, jobs whose queue no worker advertises consuming:
    :class:`lcm_fleet.served.UnservedSize` (an InvalidJob) names the sizes served. One cached
    read of the adverts for all of them (LCM_SERVED_SIZE_CHECK, LCM_SERVED_CACHE_S)."""
    if settings.served_size_check == ServedSizeCheck.OFF or not jobs:
        return
    served = reader_for(settings, settings.served_cache_s).read()
    targets = ((job, target_queue(job, settings, queue, job_class)) for job in jobs)
    require_served(served, settings.served_size_check, targets)


def check_before_publish(
    job: Job,
    settings: ProducerSettings,
    queue: str | None = None,
    job_class: JobClass = JobClass.INTERACTIVE,
    *,
    served_checked: bool = False,
) -> str:
    """The one place for checks a validated job must pass before it is recorded and
    published, on every path: :func:`submit_job` (this API, the CLI, bulk files) and the
    HTTP API (producer/http/submitting.py calls it too, on its event loop: keep it quick).
    Raise :class:`InvalidJob` (naming the field, the value and the fix) to refuse: today
    a size no worker serves (:func:`check_served`, a cached read; ``served_checked``: the
    caller checked a whole batch at once already). It also notes the queue in the set of
    queues producers publish to (once per process), which the workers' queue depth gauge
    reads. Returns the job's queue (:func:`target_queue`)."""
    if not served_checked:
        check_served([job], settings, queue, job_class)
    target = target_queue(job, settings, queue, job_class)
    reader_for(settings, settings.served_cache_s).note_queue(target)
    return target


def publish_message(
    job: Job, settings: ProducerSettings, queue: str, client: Celery | None = None
) -> Enqueue:
    """The job's Celery message for ``queue`` (sent by task name, ``TASK_RENDER``)."""
    return task_message(
        client or cached_client(settings),
        TASK_RENDER,
        [job.model_dump(mode="json")],
        job.job_id,
        queue,
        {HEADER_SUBMITTED_AT: time.time()},
    )


@dataclass(frozen=True)
class Submission:
    """What publishing one job runs, for the sync path (:func:`submit_job`) and the HTTP
    API's event loop (producer/http/submitting.py) alike: the submission script's KEYS and
    ARGV (the record, the guards and, with the broker in the records' Redis, the push), and,
    with the broker elsewhere, the push that follows it (:meth:`push`)."""

    message: Enqueue
    keys: list[str]
    argv: list[Any]
    #: The broker is another Redis than the records': push the message after the script.
    push_after: bool

    def push(self, pipe: Any) -> Any:
        """``pipe`` (a sync or asyncio pipeline of the broker) with the push queued on it."""
        return queue_push(pipe, self.message)


def prepare_submission(
    job: Job,
    settings: ProducerSettings,
    records: RecordStore,
    queue: str,
    *,
    owner: str,
    job_class: JobClass,
    batch_id: str | None = None,
    webhook_url: str | None = None,
    guards: Guards | None = None,
    client: Celery | None = None,
    row: int | None = None,
) -> Submission:
    """The one builder of a job's submission (see :class:`Submission`); ``queue`` from
    :func:`check_before_publish`. The message deletes the id's old result (a resubmitted
    job or bulk file), so that waiting on this submission sees this run's result."""
    message = publish_message(job, settings, queue, client)
    push_after = not broker_is_records(settings)
    keys, argv = records.submission(
        job,
        owner,
        batch_id=batch_id,
        webhook_url=webhook_url,
        guards=guards,
        enqueue=None if push_after else message,
        job_class=job_class,
        row=row,
    )
    return Submission(message, keys, argv, push_after)


def not_queued_reason(error: BaseException) -> str:
    """The reason recorded for a job whose message could not be published."""
    return f"not queued: the broker was unreachable ({error})"


def submit_job(
    job: Job,
    settings: ProducerSettings | None = None,
    queue: str | None = None,
    *,
    owner: str = LOCAL_OWNER,
    batch_id: str | None = None,
    webhook_url: str | None = None,
    guards: Guards | None = None,
    job_class: JobClass = JobClass.INTERACTIVE,
    served_checked: bool = False,
    row: int | None = None,
) -> JobHandle:
    """Record an already validated job as queued, then publish it.

    ``owner``: an API key id, or ``local`` for the CLI and this API; ``batch_id``: the
    batch record it counts in (created with ``RecordStore.create_batch``); ``job_class``:
    interactive (single jobs) or bulk (batches, bulk files, schedules), recorded and
    routed to its class's queue (:func:`target_queue`); ``served_checked``: the caller
    checked the served sizes of a whole batch already. With the records in the broker's
    Redis (the default) the record and the message go in one script
    (lcm_fleet/records.py), so a job is never queued without its record. ``guards``: the
    HTTP API's checks (see :class:`Guards`); a refusal raises :class:`SubmitRefused`.

    Redis away: publishing is retried with capped, jittered backoff for
    LCM_PUBLISH_BUDGET_S seconds, then :class:`SubmitError` in one line.
    ``row``: the job's line in its bulk file, kept in its record (the batch manifest's row).
    """
    settings = settings or ProducerSettings()
    target = check_before_publish(job, settings, queue, job_class, served_checked=served_checked)
    client = cached_client(settings)
    records = cached_records(settings)
    backoff = Backoff(
        base_s=settings.publish_backoff_base_s,
        cap_s=max(settings.publish_backoff_cap_s, settings.publish_backoff_base_s),
    )

    def publish() -> None:
        submission = prepare_submission(
            job,
            settings,
            records,
            target,
            owner=owner,
            job_class=job_class,
            batch_id=batch_id,
            webhook_url=webhook_url,
            guards=guards,
            client=client,
            row=row,
        )
        outcome = records.run_submission(submission.keys, submission.argv)
        if outcome.status is not SubmitStatus.QUEUED:
            raise SubmitRefused(outcome)
        if submission.push_after:
            submission.push(cached_broker(settings).pipeline(transaction=False)).execute()

    try:
        ride_out(
            publish,
            url=settings.redis_url,
            what=f"publish job {job.job_id}",
            budget_s=settings.publish_budget_s,
            transient=_TRANSIENT,
            backoff=backoff,
        )
    except BrokerUnavailable as e:
        with contextlib.suppress(Exception):  # the broker's Redis may hold the records too
            records.fail(job.job_id, not_queued_reason(e.__cause__ or e))
        raise SubmitError(
            f"job {job.job_id} not queued: {e} (retried for LCM_PUBLISH_BUDGET_S="
            f"{settings.publish_budget_s:g}s)"
        ) from e
    logger.info(
        "submitted %s job %s to %s (%d image(s), seed %d)",
        job_class.value,
        job.job_id,
        target,
        job.num_images,
        job.seed,
    )
    return JobHandle(job, job.job_id, client, records, owner)


def submit(
    prompt: str,
    *,
    settings: ProducerSettings | None = None,
    queue: str | None = None,
    **fields: Any,
) -> JobHandle:
    """Validate and enqueue one job; return its handle.

    ``fields`` are the other job fields (seed, steps, guidance_scale, width, height,
    num_images, job_id). Invalid input raises :class:`InvalidJob` naming the field,
    the value and the allowed range, before anything is queued.
    """
    job = parse_job({"prompt": prompt, **fields})
    return submit_job(job, settings=settings, queue=queue)


__all__ = [
    "InvalidJob",
    "JobClass",
    "JobHandle",
    "Submission",
    "check_before_publish",
    "check_served",
    "handle",
    "prepare_submission",
    "submit",
    "submit_job",
    "target_queue",
]
