"""POST /v1/images/generations: OpenAI's Images API on the fleet, waiting for the render.

The official ``openai`` client works against it unchanged; its errors come back as the
client's exceptions (a bad field: ``BadRequestError`` with ``param`` naming it).
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request

from lcm_fleet.contract import JobState, parse_job
from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import FINAL_STATES, JobRecord
from producer.http.deps import KeyDep, ServicesDep
from producer.http.errors import ApiError, from_invalid_job, responses
from producer.http.schemas import ImageData, ImagesRequest, ImagesResponse
from producer.http.services import Services
from producer.http.settings import parse_size
from producer.http.submitting import submit

router = APIRouter(prefix="/v1/images", tags=["openai"])

#: Seconds between reads of the record while waiting.
_POLL_S = 0.1


def _size(services: Services, size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    served = services.settings.served_size_list
    allowed = (
        "one of " + ", ".join(f"{w}x{h}" for w, h in served)
        if served
        else "WIDTHxHEIGHT, each a multiple of 8 from 64 to 2048"
    )
    try:
        width, height = parse_size(size)
    except ValueError as e:
        raise ApiError(
            400,
            f"field 'size' got {size!r}: {e}; allowed: {allowed}",
            param="size",
            value=size,
            allowed=allowed,
            code="invalid_size",
        ) from e
    if served and (width, height) not in served:
        raise ApiError(
            400,
            f"field 'size' got {size!r}: no worker serves it; allowed: {allowed}",
            param="size",
            value=size,
            allowed=allowed,
            code="unserved_size",
        )
    return width, height


def _wait(services: Services, job_id: str, owner: str, timeout_s: float) -> JobRecord | None:
    deadline = time.monotonic() + timeout_s
    while True:
        record = services.records.get_job(job_id, owner)
        if record is None or record.state in FINAL_STATES or time.monotonic() >= deadline:
            return record
        time.sleep(_POLL_S)


@router.post(
    "/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=responses(400, 401, 409, 413, 429, 500, 503, 504),
    summary="Generate images (OpenAI Images API)",
)
def generate_images(
    body: ImagesRequest, request: Request, services: ServicesDep, key: KeyDep
) -> ImagesResponse:
    width, height = _size(services, body.size)
    fields: dict[str, object] = {"prompt": body.prompt, "num_images": body.n}
    if width is not None:
        fields.update(width=width, height=height)
    try:
        job = parse_job(fields)
    except InvalidJob as e:
        error = from_invalid_job(e)
        # Name the field as the OpenAI body calls it.
        if error.param in ("width", "height"):
            error.param, error.value = "size", body.size
        elif error.param == "num_images":
            error.param = "n"
        raise error from e
    submit(services, key, job, size_field="size")
    services.metrics.submits.labels("images").inc()
    record = _wait(services, job.job_id, key.key_id, services.settings.openai_wait_timeout_s)
    if record is None or record.state is not JobState.SUCCEEDED:
        if record is not None and record.state in FINAL_STATES:
            raise ApiError(
                500 if record.state is JobState.FAILED else 409,
                f"job {job.job_id} {record.state.value}: {record.reason or 'no reason given'}",
                value=job.job_id,
                code=f"job_{record.state.value}",
            )
        raise ApiError(
            504,
            f"job {job.job_id} did not finish within {services.settings.openai_wait_timeout_s:g} "
            f"s; it goes on: follow it at /v1/jobs/{job.job_id}",
            value=job.job_id,
            code="timeout",
        )
    assert record.result is not None
    data = []
    for image in record.result.images:
        if body.response_format == "b64_json":
            got = services.store.get(image.key)
            if got is None:
                raise ApiError(503, f"image {image.index} of job {job.job_id} is not stored")
            data.append(
                ImageData(b64_json=base64.b64encode(got[0]).decode(), revised_prompt=body.prompt)
            )
        else:
            data.append(ImageData(url=services.presign(image.key), revised_prompt=body.prompt))
    return ImagesResponse(created=int(record.created_at), data=data)
