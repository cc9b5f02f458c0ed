"""/v1/batches: a list of jobs (JSON) or a JSONL/CSV file, checked whole, then queued."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from lcm_fleet.batch_manifest import write_manifest
from lcm_fleet.contract import ALLOWED, Job, JobClass, parse_job
from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import CancelOutcome
from producer.bulk import FORMATS, MAX_ROWS, read_jobs_file
from producer.errors import SubmitError
from producer.http.auth import ApiKey
from producer.http.deps import KeyDep, ServicesDep, scope_of
from producer.http.errors import ApiError, from_validation, responses
from producer.http.schemas import BatchAccepted, BatchCancelView, BatchRequest, BatchView
from producer.http.services import Services
from producer.http.submitting import (
    check_in_flight,
    check_job_ids,
    check_served_jobs,
    check_webhook,
    submit,
)
from producer.http.views import batch_view

router = APIRouter(prefix="/v1/batches", tags=["batches"])

BatchId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="The batch's id")
]
FILE_ALLOWED = (
    f"a .jsonl or .csv file (or the form field 'format': {', '.join(FORMATS)}) of at most "
    f"{MAX_ROWS} rows, one job per row with the job contract's fields"
)

_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": FILE_ALLOWED},
        "format": {"type": "string", "enum": list(FORMATS)},
        "webhook_url": {"type": "string", "maxLength": 2000},
        "output_prefix": {"type": "string", "maxLength": 200},
    },
}


def _not_found(batch_id: str) -> ApiError:
    return ApiError(
        404,
        f"no batch {batch_id!r} for this key (unknown, expired, or another key's)",
        param="batch_id",
        value=batch_id,
        allowed="the id of a batch this key submitted",
        code="batch_not_found",
    )


def _with_prefix(jobs: list[Job], output_prefix: str | None) -> list[Job]:
    """The batch's output prefix on every job that names none of its own."""
    if output_prefix is None:
        return jobs
    return [
        j if j.output_prefix else j.model_copy(update={"output_prefix": output_prefix})
        for j in jobs
    ]


def _form_prefix(value: object) -> str | None:
    if value is None:
        return None
    try:
        return parse_job({"prompt": "-", "output_prefix": value}).output_prefix
    except InvalidJob as e:
        raise ApiError(
            400,
            str(e).removeprefix("invalid job: "),
            param="output_prefix",
            value=str(value),
            allowed=ALLOWED["output_prefix"],
            code="invalid_output_prefix",
        ) from e


def _json_jobs(raw: bytes) -> tuple[list[Job], str | None, str | None]:
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(
            400,
            f"the request body is not valid JSON ({e})",
            param="body",
            allowed='a JSON object {"jobs": [job, ...], "webhook_url": ...}',
            code="json_invalid",
        ) from e
    try:
        batch = BatchRequest.model_validate(payload)
    except ValidationError as e:
        raise from_validation(list(e.errors())) from e  # type: ignore[arg-type]
    seen: dict[str, int] = {}
    for index, job in enumerate(batch.jobs):
        if job.job_id in seen:
            raise ApiError(
                400,
                f"field 'jobs[{index}].job_id' got {job.job_id!r}, already used by jobs"
                f"[{seen[job.job_id]}]; allowed: ids unique within the batch",
                param=f"jobs[{index}].job_id",
                value=job.job_id,
                allowed="ids unique within the batch",
                code="duplicate_job_id",
            )
        seen[job.job_id] = index
    return (
        _with_prefix(list(batch.jobs), batch.output_prefix),
        batch.webhook_url,
        batch.output_prefix,
    )


async def _file_jobs(
    request: Request, batch_id: str
) -> tuple[list[Job], str | None, str, str | None]:
    limit = request.app.state.services.settings.max_upload_bytes
    try:
        form = await request.form(max_files=1, max_fields=10, max_part_size=limit)
    except Exception as e:  # the multipart parser's refusals
        raise ApiError(
            400,
            f"the multipart body is not valid: {e}",
            param="body",
            allowed="multipart/form-data with a 'file' part",
            code="multipart_invalid",
        ) from e
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                400,
                "field 'file' is required: the JSONL or CSV file of jobs",
                param="file",
                allowed=FILE_ALLOWED,
                code="missing",
            )
        fmt = form.get("format")
        webhook = form.get("webhook_url")
        output_prefix = _form_prefix(form.get("output_prefix"))
        if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
            raise ApiError(
                400,
                f"field 'format' got {fmt!r}; allowed: one of {', '.join(FORMATS)}",
                param="format",
                value=str(fmt),
                allowed=", ".join(FORMATS),
                code="enum",
            )
        name = FilePath(upload.filename or "jobs").name
        suffix = FilePath(name).suffix.lower() if fmt is None else f".{fmt}"
        data = await upload.read()
    finally:
        await form.close()
    with tempfile.TemporaryDirectory(prefix="lcm-api-upload-") as tmp:
        path = FilePath(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            bulk = read_jobs_file(path, fmt=fmt, batch_id=batch_id, output_prefix=output_prefix)
        except InvalidJob as e:
            message = str(e).replace(str(path), name)
            raise ApiError(
                400, message, param="file", value=name, allowed=FILE_ALLOWED, code="invalid_file"
            ) from e
    jobs = [row.job for row in bulk.rows]
    return jobs, webhook if isinstance(webhook, str) else None, name, output_prefix


def _submit_batch(
    services: Services,
    key: ApiKey,
    batch_id: str,
    jobs: list[Job],
    webhook_url: str | None,
    source: str,
    output_prefix: str | None = None,
) -> None:
    check_webhook(services, webhook_url)
    check_in_flight(services, key, len(jobs))
    check_job_ids(services, key, jobs, "jobs")
    check_served_jobs(services, jobs)
    records = services.records
    records.create_batch(
        batch_id, key.key_id, webhook_url=webhook_url, source=source, output_prefix=output_prefix
    )
    try:
        for index, job in enumerate(jobs):
            submit(
                services,
                key,
                job,
                batch_id=batch_id,
                field=f"jobs[{index}].job_id",
                job_class=JobClass.BULK,
                served_checked=True,
            )
    except (ApiError, SubmitError):
        # Part of it is queued: cancel that part so that the batch is all or nothing.
        records.seal_batch(batch_id)
        records.cancel_batch(batch_id)
        raise
    if records.seal_batch(batch_id):  # every job ended before the seal: the manifest is ours
        write_manifest(records, services.store, services.settings.s3_prefix, batch_id)
    services.metrics.submits.labels("batches").inc(len(jobs))


@router.post(
    "",
    status_code=202,
    response_model=BatchAccepted,
    responses=responses(400, 401, 409, 413, 415, 429, 503),
    summary="Submit a batch: JSON {jobs: [...]} or a multipart JSONL/CSV upload",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": BatchRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                },
                "multipart/form-data": {"schema": _UPLOAD_SCHEMA},
            },
        }
    },
)
async def create_batch(request: Request, services: ServicesDep, key: KeyDep) -> BatchAccepted:
    batch_id = "b" + uuid.uuid4().hex
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        jobs, webhook_url, source, output_prefix = await _file_jobs(request, batch_id)
    elif content_type in ("application/json", ""):
        jobs, webhook_url, output_prefix = _json_jobs(await request.body())
        source = "json"
    else:
        raise ApiError(
            415,
            f"content type {content_type!r} is not accepted",
            param="Content-Type",
            value=content_type,
            allowed="application/json or multipart/form-data",
            code="unsupported_media_type",
        )
    await anyio.to_thread.run_sync(
        _submit_batch, services, key, batch_id, jobs, webhook_url, source, output_prefix
    )
    return BatchAccepted(
        id=batch_id,
        status_url=str(request.url_for("get_batch", batch_id=batch_id)),
        jobs=len(jobs),
    )


@router.get(
    "/{batch_id}",
    response_model=BatchView,
    responses=responses(400, 401, 404, 429),
    summary="A batch: counts, progress, its job ids (paged)",
)
def get_batch(
    batch_id: BatchId,
    services: ServicesDep,
    key: KeyDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BatchView:
    record = services.records.get_batch(batch_id, scope_of(key))
    if record is None:
        raise _not_found(batch_id)
    ids = services.records.batch_job_ids(batch_id, offset, limit)
    return batch_view(record, ids, offset, limit)


@router.delete(
    "/{batch_id}",
    response_model=BatchCancelView,
    responses=responses(400, 401, 404, 429),
    summary="Cancel every job of a batch not yet finished",
)
def cancel_batch(batch_id: BatchId, services: ServicesDep, key: KeyDep) -> Any:
    if services.records.get_batch(batch_id, scope_of(key)) is None:
        raise _not_found(batch_id)
    counts = services.records.cancel_batch(batch_id, scope_of(key))
    record = services.records.get_batch(batch_id)
    if record is not None and record.finished and record.summary is None:  # nothing ran on
        write_manifest(services.records, services.store, services.settings.s3_prefix, batch_id)
    return BatchCancelView(
        id=batch_id,
        canceled=counts[CancelOutcome.CANCELED],
        requested=counts[CancelOutcome.REQUESTED],
        finished=counts[CancelOutcome.FINISHED],
    )
