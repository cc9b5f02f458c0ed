"""Python API: ``submit(...) -> JobHandle``; the handle's record, progress, cancel and wait.

Every submitted job gets a record (lcm_fleet/records.py) before it is published, so its
state, progress and result read the same here, in the CLI and in the HTTP API.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.broker import OUTAGE_BACKOFF, BrokerUnavailable, masked_url, unreachable
from lcm_fleet.contract import (
    HEADER_SUBMITTED_AT,
    TASK_RENDER,
    Job,
    JobResult,
    JobState,
    parse_job,
    queue_for,
)
from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import (
    ANY_OWNER,
    LOCAL_OWNER,
    CancelOutcome,
    JobRecord,
    Progress,
    RecordStore,
)
from producer.errors import JobCanceled, JobFailed, JobTimeout, SubmitError
from producer.queue import cached_client, cached_records
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


def submit_job(
    job: Job,
    settings: ProducerSettings | None = None,
    queue: str | None = None,
    *,
    owner: str = LOCAL_OWNER,
    batch_id: str | None = None,
    webhook_url: str | None = None,
) -> JobHandle:
    """Record an already validated job as queued, then publish it.

    ``owner``: an API key id, or ``local`` for the CLI and this API; ``batch_id``: the
    batch record it counts in (created with ``RecordStore.create_batch``).
    """
    settings = settings or ProducerSettings()
    client = cached_client(settings)
    records = cached_records(settings)
    backoff = Backoff(
        base_s=settings.publish_backoff_base_s,
        cap_s=max(settings.publish_backoff_cap_s, settings.publish_backoff_base_s),
        attempts=settings.publish_attempts,
    )

    target = queue or queue_for(job, settings.queue)

    def publish() -> None:
        records.create_job(job, owner, batch_id=batch_id, webhook_url=webhook_url)
        # A job id used before (a resubmitted job or bulk file) still has its old result in
        # the backend; drop it so that waiting on this submission sees this run's result.
        AsyncResult(job.job_id, app=client).forget()
        client.send_task(
            TASK_RENDER,
            args=[job.model_dump(mode="json")],
            task_id=job.job_id,
            queue=target,
            headers={HEADER_SUBMITTED_AT: time.time()},
            retry=False,
        )

    try:
        call_with_backoff(
            publish, transient=_TRANSIENT, backoff=backoff, what=f"publish job {job.job_id}"
        )
    except _TRANSIENT as e:
        with contextlib.suppress(Exception):  # the broker's Redis may hold the records too
            records.fail(job.job_id, f"not queued: the broker was unreachable ({e})")
        raise SubmitError(
            f"could not reach the broker at {masked_url(settings.redis_url)} "
            f"after {backoff.attempts} attempts: {e}; "
            "check LCM_REDIS_URL and that Redis is running"
        ) from e
    logger.info(
        "submitted job %s to %s (%d image(s), seed %d)",
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


__all__ = ["InvalidJob", "JobHandle", "handle", "submit", "submit_job"]
