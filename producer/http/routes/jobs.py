"""/v1/jobs: submit one job, read it, cancel it, follow it, fetch its images."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from lcm_fleet.contract import JOB_ID_PATTERN
from lcm_fleet.records import CancelOutcome, JobRecord
from lcm_fleet.storage import is_not_found
from producer.http.deps import KeyDep, ServicesDep, scope_of
from producer.http.errors import ApiError, responses
from producer.http.schemas import CancelView, JobAccepted, JobRequest, JobView
from producer.http.services import Services
from producer.http.submitting import Idempotency, check_webhook, submit_async
from producer.http.views import job_view

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id")]


def _not_found(job_id: str) -> ApiError:
    return ApiError(
        404,
        f"no job {job_id!r} for this key (unknown, expired, or another key's)",
        param="job_id",
        value=job_id,
        allowed="the id of a job this key submitted",
        code="job_not_found",
    )


def _record(services: Services, key: KeyDep, job_id: str) -> JobRecord:
    record = services.records.get_job(job_id, scope_of(key))
    if record is None:
        raise _not_found(job_id)
    return record


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses=responses(400, 401, 409, 413, 429, 503),
    summary="Submit one job",
)
async def create_job(
    body: JobRequest,
    request: Request,
    services: ServicesDep,
    key: KeyDep,
    idempotency_key: Annotated[
        str | None,
        Header(description="The same key and body return the same job; another body is 409"),
    ] = None,
) -> Any:
    job = body.job()
    check_webhook(services, body.webhook_url)
    idem = None
    if idempotency_key is not None:
        idem = Idempotency(services, key, idempotency_key, body.model_dump(exclude_unset=True))
    job_id, queued = await submit_async(services, key, job, webhook_url=body.webhook_url, idem=idem)
    if queued:
        services.metrics.submits.labels("jobs").inc()
    accepted = JobAccepted(id=job_id, status_url=str(request.url_for("get_job", job_id=job_id)))
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


@router.get(
    "/{job_id}", response_model=JobView, responses=responses(400, 401, 404, 429), summary="A job"
)
def get_job(job_id: JobId, request: Request, services: ServicesDep, key: KeyDep) -> JobView:
    return job_view(services, request, _record(services, key, job_id))


@router.delete(
    "/{job_id}",
    response_model=CancelView,
    responses={
        **responses(400, 401, 404, 429),
        202: {"model": CancelView, "description": "Running: it stops at its next step"},
        409: {"model": responses(409)[409]["model"], "description": "The job already finished"},
    },
    summary="Cancel a job",
)
def cancel_job(job_id: JobId, services: ServicesDep, key: KeyDep) -> Any:
    outcome = services.records.cancel_job(job_id, scope_of(key))
    if outcome is CancelOutcome.NOT_FOUND:
        raise _not_found(job_id)
    record = _record(services, key, job_id)
    if outcome is CancelOutcome.FINISHED:
        raise ApiError(
            409,
            f"job {job_id!r} already finished: it is {record.state.value}; nothing changed",
            param="job_id",
            value=job_id,
            allowed="a queued or running job",
            code=f"job_{record.state.value}",
        )
    view = CancelView(id=job_id, state=record.state, cancel_requested=record.cancel_requested)
    if outcome is CancelOutcome.REQUESTED:
        return JSONResponse(view.model_dump(mode="json"), status_code=202)
    return view


# One event of the stream; ``data`` is JSON: {id, state, reason, cancel_requested} for
# ``state``, {id, image, images, step, steps, at} for ``progress``.
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["state", "progress"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def _snapshot(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.job_id,
        "state": record.state.value,
        "reason": record.reason,
        "cancel_requested": record.cancel_requested,
    }


@router.get(
    "/{job_id}/events",
    responses={
        **responses(400, 401, 404, 429),
        200: {
            "description": "Server-Sent Events: `state` on each state change, `progress` on "
            "each step; the stream ends when the job does",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        },
    },
    response_class=EventSourceResponse,
    summary="Follow a job (Server-Sent Events)",
)
def job_events(job_id: JobId, services: ServicesDep, key: KeyDep) -> EventSourceResponse:
    owner = scope_of(key)
    first = _record(services, key, job_id)
    settings = services.settings

    async def events() -> AsyncIterator[ServerSentEvent]:
        record: JobRecord | None = first
        last_state: dict[str, Any] | None = None
        last_progress: Any = None
        deadline = time.monotonic() + settings.events_max_s
        while record is not None:
            state = _snapshot(record)
            if state != last_state:
                yield ServerSentEvent(json.dumps(state), event="state")
                last_state = state
            progress = record.progress.model_dump() if record.progress else None
            if progress is not None and progress != last_progress:
                yield ServerSentEvent(json.dumps({"id": job_id, **progress}), event="progress")
            last_progress = progress
            if record.finished or time.monotonic() > deadline:
                return
            await anyio.sleep(settings.events_poll_s)
            record = await anyio.to_thread.run_sync(services.records.get_job, job_id, owner)

    return EventSourceResponse(events(), ping=15)


@router.get(
    "/{job_id}/images/{index}",
    responses={
        **responses(400, 401, 404, 409, 429),
        200: {"content": {"image/png": {}}, "description": "The PNG, streamed from S3"},
    },
    response_class=StreamingResponse,
    summary="One image of a job, streamed from S3",
)
def get_job_image(
    job_id: JobId,
    index: Annotated[int, Path(ge=0, le=1000, description="The image's index, from 0")],
    services: ServicesDep,
    key: KeyDep,
) -> StreamingResponse:
    record = _record(services, key, job_id)
    keys = (
        [image.key for image in record.result.images]
        if record.result is not None
        else list(record.partial_keys)
    )
    if not keys:
        raise ApiError(
            409,
            f"job {job_id!r} is {record.state.value} and has no images yet",
            param="job_id",
            value=job_id,
            allowed="a job that succeeded (or stored images before it was cancelled)",
            code="no_images",
        )
    if index >= len(keys):
        raise ApiError(
            404,
            f"field 'index' got {index}: job {job_id!r} has {len(keys)} image(s); "
            f"allowed: 0 to {len(keys) - 1}",
            param="index",
            value=index,
            allowed=f"0 to {len(keys) - 1}",
            code="image_not_found",
        )
    try:
        obj = services.store.client.get_object(Bucket=services.store.bucket, Key=keys[index])
    except Exception as e:
        if is_not_found(e):
            raise ApiError(
                404,
                f"image {index} of job {job_id!r} is no longer stored",
                param="index",
                value=index,
                code="image_not_found",
            ) from e
        raise ApiError(
            503,
            "the object store did not answer; retry later",
            code="storage_unavailable",
            headers={"Retry-After": "5"},
        ) from e
    body = obj["Body"]

    def chunks() -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(64 * 1024)
        finally:
            body.close()

    headers = {"Content-Length": str(obj["ContentLength"])} if "ContentLength" in obj else {}
    return StreamingResponse(chunks(), media_type="image/png", headers=headers)
