"""Submitting through the API: the checks before a job is queued, and idempotency.

POST /v1/jobs runs on the event loop and makes one Redis round trip for the job: the
submission script (lcm_fleet/records.py) checks that the key is not revoked, answers an
earlier Idempotency-Key, refuses a job id in use, checks and counts the key's jobs in
flight, records the job and pushes its Celery message (producer/queue.py), atomically. The
pre-publish checks of every path are ``producer.api.check_before_publish``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lcm_fleet.contract import Job, JobClass
from lcm_fleet.keys import api_key_key, idempotency_key, job_key
from lcm_fleet.records import Guards, SubmitOutcome, SubmitStatus, submit_outcome
from lcm_fleet.served import UnservedSize
from producer.api import (
    check_before_publish,
    check_served,
    not_queued_reason,
    prepare_submission,
    submit_job,
)
from producer.errors import SubmitError, SubmitRefused
from producer.http.auth import ApiKey
from producer.http.errors import ApiError
from producer.http.services import Services
from producer.http.webhook_urls import check_webhook_url

logger = logging.getLogger(__name__)

_TRANSIENT = (OperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)

IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_ALLOWED = f"1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters"


def check_webhook(services: Services, url: str | None, field: str = "webhook_url") -> None:
    if url is not None:
        check_webhook_url(
            url, allow_private=services.settings.webhook_allow_private_urls, field=field
        )


def _in_flight_error(services: Services, key: ApiKey, now: int) -> ApiError:
    services.metrics.rate_limited.labels("in_flight").inc()
    retry = services.settings.in_flight_retry_after_s
    return ApiError(
        429,
        f"key {key.key_id} has {now} job(s) queued or running and may have at most "
        f"{key.max_in_flight}; retry after {retry} s",
        param="jobs",
        value=now,
        allowed=f"at most {key.max_in_flight} jobs in flight",
        code="too_many_jobs_in_flight",
        headers={"Retry-After": str(retry)},
    )


def _id_in_use_error(name: str, job_id: str, own: bool) -> ApiError:
    return ApiError(
        409,
        f"field '{name}' got {job_id!r}, which names a job that exists"
        + (" and is still in flight" if own else "")
        + "; allowed: an unused id, or none (a random one is given)",
        param=name,
        value=job_id,
        allowed="an unused job id, or none",
        code="job_id_in_use",
    )


def _revoked_error() -> ApiError:
    return ApiError(
        401,
        "the API key is not valid (unknown, malformed or revoked)",
        param="Authorization",
        allowed="Bearer <API key>",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _queue_down(key: ApiKey, job: Job, e: BaseException) -> ApiError:
    logger.error("submit of job %s for key %s failed: %s", job.job_id, key.key_id, e)
    return ApiError(
        503,
        "the queue is unreachable; retry later",
        code="queue_unavailable",
        headers={"Retry-After": "5"},
    )


def check_in_flight(services: Services, key: ApiKey, adding: int) -> None:
    """429 while the key has too many jobs queued or running; 400 if it never could.
    (A read for a whole batch up front; each job's submission script checks again.)"""
    if adding > key.max_in_flight:
        raise ApiError(
            400,
            f"field 'jobs' holds {adding} jobs, more than key {key.key_id} may have in flight; "
            f"allowed: at most {key.max_in_flight} jobs",
            param="jobs",
            value=adding,
            allowed=f"at most {key.max_in_flight} jobs",
            code="too_many_jobs",
        )
    now = services.records.in_flight(key.key_id)
    if now + adding > key.max_in_flight:
        raise _in_flight_error(services, key, now)


def check_job_ids(services: Services, key: ApiKey, jobs: Sequence[Job], field: str) -> None:
    """A job id names one job's record and its objects: it may not be another owner's, nor
    one of the key's own jobs still in flight (a finished one may be run again)."""
    pipe = services.redis.pipeline()

    for job in jobs:
        pipe.hmget(job_key(job.job_id), "owner", "state")
    for index, (job, (owner, state)) in enumerate(zip(jobs, pipe.execute(), strict=True)):
        if owner is None:
            continue
        owner, state = owner.decode(), (state or b"").decode()
        if owner == key.key_id and state not in ("queued", "running"):
            continue
        name = f"{field}[{index}].job_id" if field != "job_id" else "job_id"
        raise _id_in_use_error(name, job.job_id, owner == key.key_id)


def guards_of(key: ApiKey, idem: Idempotency | None = None, job_id: str = "") -> Guards:
    """The checks the submission script makes for ``key``: not revoked, its jobs in flight
    (checked and counted at once), no job id in use, and the Idempotency-Key."""
    return Guards(
        api_key=api_key_key(key.key_id),
        max_in_flight=key.max_in_flight,
        refuse_used_id=True,
        idempotency=idem.claim(job_id) if idem is not None else None,
    )


def refusal(
    services: Services,
    key: ApiKey,
    job: Job,
    outcome: SubmitOutcome,
    idem: Idempotency | None = None,
    field: str = "job_id",
) -> str:
    """The id an EARLIER outcome answers; the ApiError of any other refusal."""
    if outcome.status is SubmitStatus.EARLIER and idem is not None:
        return idem.answer(outcome.detail)
    if outcome.status is SubmitStatus.IN_FLIGHT:
        raise _in_flight_error(services, key, int(outcome.detail or 0))
    if outcome.status is SubmitStatus.ID_IN_USE:
        raise _id_in_use_error(field, job.job_id, outcome.detail == "own")
    if outcome.status is SubmitStatus.REVOKED:
        raise _revoked_error()
    raise ApiError(500, f"the submission script answered {outcome.status.value!r}")


def unserved_error(error: UnservedSize, field: str | None = None) -> ApiError:
    """400 for a job no worker would consume, naming the sizes served. ``field``: how the
    request names the size (``size`` in the OpenAI body, ``jobs[3].width`` in a batch)."""
    return ApiError(
        400,
        str(error),
        param=field or error.field,
        value=error.value,
        allowed=error.allowed,
        code="unserved_size",
    )


def check_served_jobs(
    services: Services,
    jobs: Sequence[Job],
    field: str = "jobs",
    job_class: JobClass = JobClass.BULK,
) -> None:
    """Before a batch (bulk jobs) is queued: 400 naming the first job whose size no worker
    serves."""
    try:
        check_served(jobs, services.settings, job_class=job_class)
    except UnservedSize as e:
        raise unserved_error(e, f"{field}[{e.index}].{e.field}") from e


def submit(
    services: Services,
    key: ApiKey,
    job: Job,
    *,
    batch_id: str | None = None,
    webhook_url: str | None = None,
    field: str = "job_id",
    size_field: str | None = None,
    job_class: JobClass = JobClass.INTERACTIVE,
    served_checked: bool = False,
) -> None:
    """Submit from a worker thread (batches, the OpenAI endpoint): submit_job with the
    key's guards. A batch passes ``job_class`` bulk and ``served_checked`` (it ran
    :func:`check_served_jobs` for all its jobs at once)."""
    try:
        submit_job(
            job,
            services.settings,
            owner=key.key_id,
            batch_id=batch_id,
            webhook_url=webhook_url,
            guards=guards_of(key),
            job_class=job_class,
            served_checked=served_checked,
        )
    except UnservedSize as e:
        raise unserved_error(e, size_field) from e
    except SubmitRefused as e:
        refusal(services, key, job, e.outcome, field=field)
    except SubmitError as e:
        raise _queue_down(key, job, e) from e


async def submit_async(
    services: Services,
    key: ApiKey,
    job: Job,
    *,
    webhook_url: str | None = None,
    idem: Idempotency | None = None,
) -> tuple[str, bool]:
    """POST /v1/jobs on the event loop (an interactive job): (job id, True) once recorded
    and queued in one round trip (the submission script), or (the earlier id, False) for an
    Idempotency-Key answered before. Refusals raise their ApiError; nothing changed then.
    The commands are :func:`producer.api.prepare_submission`'s, as on the sync path."""
    settings = services.settings
    try:
        queue = check_before_publish(job, settings, job_class=JobClass.INTERACTIVE)
    except UnservedSize as e:
        raise unserved_error(e) from e
    submission = prepare_submission(
        job,
        settings,
        services.records,
        queue,
        owner=key.key_id,
        job_class=JobClass.INTERACTIVE,
        webhook_url=webhook_url,
        guards=guards_of(key, idem, job.job_id),
    )
    try:
        outcome = submit_outcome(await services.submit_script(submission.keys, submission.argv))
    except _TRANSIENT as e:
        raise _queue_down(key, job, e) from e
    if outcome.status is not SubmitStatus.QUEUED:
        return refusal(services, key, job, outcome, idem), False
    if submission.push_after:
        try:
            await submission.push(services.abroker.pipeline(transaction=False)).execute()
        except _TRANSIENT as e:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(
                    services.records.fail, job.job_id, not_queued_reason(e)
                )
            raise _queue_down(key, job, e) from e
    return job.job_id, True


def body_digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class Idempotency:
    """What one key's Idempotency-Key answered: the same body gets the same job id."""

    def __init__(self, services: Services, key: ApiKey, header: str, body: Any) -> None:
        if not (1 <= len(header) <= IDEMPOTENCY_KEY_MAX) or not all(
            32 < ord(c) < 127 for c in header
        ):
            raise ApiError(
                400,
                f"header 'Idempotency-Key' got {header[:60]!r}; allowed: {IDEMPOTENCY_ALLOWED}",
                param="Idempotency-Key",
                value=header,
                allowed=IDEMPOTENCY_ALLOWED,
                code="invalid_idempotency_key",
            )
        self.ttl_s = services.settings.idempotency_ttl_s
        self.rkey = idempotency_key(key.key_id, hashlib.sha256(header.encode()).hexdigest())
        self.header = header
        self.digest = body_digest(body)

    def answer(self, raw: str) -> str:
        """The job id stored with the key; 409 if it was stored for another body."""
        stored = json.loads(raw)
        if stored["body"] != self.digest:
            raise ApiError(
                409,
                f"header 'Idempotency-Key' {self.header!r} was used with another body "
                f"(job {stored['id']}); allowed: the same body, or a new key",
                param="Idempotency-Key",
                value=self.header,
                allowed="the body first sent with this key, or a new key",
                code="idempotency_key_reused",
            )
        return str(stored["id"])

    def claim(self, job_id: str) -> tuple[str, str, int]:
        """What the submission script stores for ``job_id`` unless it finds an earlier one."""
        return self.rkey, json.dumps({"body": self.digest, "id": job_id}), self.ttl_s
