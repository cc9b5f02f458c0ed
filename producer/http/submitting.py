"""Submitting through the API: the checks before a job is queued, and idempotency."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from lcm_fleet.contract import Job
from lcm_fleet.keys import idempotency_key, job_key
from lcm_fleet.served import UnservedSize
from producer.api import check_served, submit_job
from producer.errors import SubmitError
from producer.http.auth import ApiKey
from producer.http.errors import ApiError
from producer.http.services import Services
from producer.http.webhook_urls import check_webhook_url

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_ALLOWED = f"1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters"


def check_webhook(services: Services, url: str | None, field: str = "webhook_url") -> None:
    if url is not None:
        check_webhook_url(
            url, allow_private=services.settings.webhook_allow_private_urls, field=field
        )


def check_in_flight(services: Services, key: ApiKey, adding: int) -> None:
    """429 while the key has too many jobs queued or running; 400 if it never could."""
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
        services.metrics.rate_limited.labels("in_flight").inc()
        retry = services.settings.in_flight_retry_after_s
        raise ApiError(
            429,
            f"key {key.key_id} has {now} job(s) queued or running and may have at most "
            f"{key.max_in_flight}; retry after {retry} s",
            param="jobs",
            value=now,
            allowed=f"at most {key.max_in_flight} jobs in flight",
            code="too_many_jobs_in_flight",
            headers={"Retry-After": str(retry)},
        )


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
        raise ApiError(
            409,
            f"field '{name}' got {job.job_id!r}, which names a job that exists"
            + (" and is still in flight" if owner == key.key_id else "")
            + "; allowed: an unused id, or none (a random one is given)",
            param=name,
            value=job.job_id,
            allowed="an unused job id, or none",
            code="job_id_in_use",
        )


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


def check_served_jobs(services: Services, jobs: Sequence[Job], field: str = "jobs") -> None:
    """Before a batch is queued: 400 naming the first job whose size no worker serves."""
    try:
        check_served(jobs, services.settings)
    except UnservedSize as e:
        raise unserved_error(e, f"{field}[{e.index}].{e.field}") from e


def submit(
    services: Services,
    key: ApiKey,
    job: Job,
    *,
    batch_id: str | None = None,
    webhook_url: str | None = None,
    size_field: str | None = None,
) -> None:
    try:
        submit_job(
            job,
            services.settings,
            owner=key.key_id,
            batch_id=batch_id,
            webhook_url=webhook_url,
        )
    except UnservedSize as e:
        raise unserved_error(e, size_field) from e
    except SubmitError as e:
        logger.error("submit of job %s for key %s failed: %s", job.job_id, key.key_id, e)
        raise ApiError(
            503,
            "the queue is unreachable; retry later",
            code="queue_unavailable",
            headers={"Retry-After": "5"},
        ) from e


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
        self.redis = services.redis
        self.ttl_s = services.settings.idempotency_ttl_s
        self.rkey = idempotency_key(key.key_id, hashlib.sha256(header.encode()).hexdigest())
        self.header = header
        self.digest = body_digest(body)

    def _answer(self, raw: bytes) -> str:
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

    def earlier(self) -> str | None:
        """The id answered before for this key and body (409 for another body)."""
        raw = self.redis.get(self.rkey)
        return None if raw is None else self._answer(raw)

    def reserve(self, job_id: str) -> str | None:
        """Claim the key for ``job_id``; the id another request claimed it for, if one did."""
        value = json.dumps({"body": self.digest, "id": job_id})
        if self.redis.set(self.rkey, value, nx=True, ex=self.ttl_s):
            return None
        return self.earlier()

    def release(self) -> None:
        self.redis.delete(self.rkey)
