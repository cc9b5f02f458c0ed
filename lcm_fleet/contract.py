"""The job contract between producers and workers.

Everything both sides must agree on lives here and nowhere else: the job schema and
its limits, the result schema, the Celery task and queue names, the wire settings
(JSON only, never pickle) and the object-key layout in storage. The worker imports
this module; it imports nothing heavy (no OpenVINO, torch or worker code).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lcm_fleet.enums import TextEnum
from lcm_fleet.errors import InvalidJob


class JobState(TextEnum):
    """Where a job is in its life. A worker's result is always ``succeeded``; the other
    states are what a job record may say before it (queued, running) or instead (failed,
    canceled)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class WebhookKind(TextEnum):
    """What a webhook delivery is about."""

    JOB = "job"
    BATCH = "batch"


class WebhookEvent(TextEnum):
    """The event a webhook reports (the body's ``event``)."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELED = "job.canceled"
    BATCH_FINISHED = "batch.finished"


#: Celery task name of a render job. Producers send by name; they never import the worker.
TASK_RENDER = "lcm_fleet.render"
#: Default queue of render jobs. Jobs that name a size go to that size's queue,
#: ``lcm.render.512x512``, which only workers compiled for that size consume.
QUEUE_RENDER = "lcm.render"
#: Celery task name of a webhook delivery (producer/http/webhooks.py, the lcm-webhooks role):
#: ``send_task(TASK_WEBHOOK, args=[kind, id, event], queue=QUEUE_WEBHOOKS)`` when a job or
#: batch ends; ``kind`` is a :class:`WebhookKind`, ``event`` a :class:`WebhookEvent`.
TASK_WEBHOOK = "lcm_fleet.webhook"
#: Queue of webhook deliveries, consumed only by lcm-webhooks (never by render workers).
QUEUE_WEBHOOKS = "lcm.webhooks"
#: Message header with the submit time (Unix seconds), for the queue-wait measurement.
HEADER_SUBMITTED_AT = "lcm_submitted_at"


#: Celery settings that producers and workers must share.
WIRE_CONFIG: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_default_queue": QUEUE_RENDER,
    "result_extended": True,
}

# Limits of the contract. LCM renders in 1 to 8 steps; images are multiples of 8
# because the VAE downsamples by 8.
STEPS_MIN, STEPS_MAX, STEPS_DEFAULT = 1, 8, 4
GUIDANCE_MIN, GUIDANCE_MAX, GUIDANCE_DEFAULT = 1.0, 20.0, 8.0
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
IMAGES_MIN, IMAGES_MAX = 1, 8
SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 2000
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# What each field allows, spelled out for error messages.
ALLOWED: dict[str, str] = {
    "job_id": "1-128 characters of letters, digits, '.', '_' or '-', starting with a letter "
    "or digit (default: a random id)",
    "prompt": f"a non-empty text of at most {PROMPT_MAX_CHARS} characters",
    "seed": f"an integer from 0 to {SEED_MAX} (default: random, recorded in the result)",
    "steps": f"an integer from {STEPS_MIN} to {STEPS_MAX} (LCM; default {STEPS_DEFAULT})",
    "guidance_scale": f"a number from {GUIDANCE_MIN} to {GUIDANCE_MAX} (default: the model's, "
    f"{GUIDANCE_DEFAULT} for an LCM, 1.0 for an SD1.5 + LCM-LoRA model)",
    "width": f"a multiple of {SIZE_MULTIPLE} from {SIZE_MIN} to {SIZE_MAX} that the worker's "
    "model serves (default: the model's size)",
    "height": f"a multiple of {SIZE_MULTIPLE} from {SIZE_MIN} to {SIZE_MAX} that the worker's "
    "model serves (default: the model's size)",
    "num_images": f"an integer from {IMAGES_MIN} to {IMAGES_MAX} (default 1)",
}


def new_job_id() -> str:
    return uuid.uuid4().hex


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


class Job(BaseModel):
    """One render request: a prompt rendered ``num_images`` times.

    Image ``i`` is rendered with seed ``(seed + i) mod 2**32``; the result records each.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(default_factory=new_job_id, pattern=JOB_ID_PATTERN)
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    seed: int = Field(default_factory=random_seed, ge=0, le=SEED_MAX)
    steps: int = Field(default=STEPS_DEFAULT, ge=STEPS_MIN, le=STEPS_MAX)
    #: None: the model's own (the worker records the value it used).
    guidance_scale: float | None = Field(default=None, ge=GUIDANCE_MIN, le=GUIDANCE_MAX)
    width: int | None = Field(default=None, ge=SIZE_MIN, le=SIZE_MAX)
    height: int | None = Field(default=None, ge=SIZE_MIN, le=SIZE_MAX)
    num_images: int = Field(default=1, ge=IMAGES_MIN, le=IMAGES_MAX)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is blank")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % SIZE_MULTIPLE:
            raise ValueError(f"{value} is not a multiple of {SIZE_MULTIPLE}")
        return value

    @model_validator(mode="after")
    def _size_pair(self) -> Job:
        if (self.width is None) != (self.height is None):
            raise ValueError(
                "field 'width'/'height': give both or neither (neither: the model's size)"
            )
        return self

    def image_seed(self, index: int) -> int:
        return (self.seed + index) % (SEED_MAX + 1)


def size_queue(base: str, width: int, height: int) -> str:
    """The queue of one size class, served only by workers compiled for that size."""
    return f"{base}.{width}x{height}"


def queue_for(job: Job, base: str) -> str:
    """Jobs without a size go to ``base`` (any worker); sized jobs to their size class."""
    if job.width is None or job.height is None:
        return base
    return size_queue(base, job.width, job.height)


def _describe(error: dict[str, Any]) -> str:
    if not error.get("loc"):  # a rule across fields; its message names them
        return str(error.get("msg", "invalid job")).removeprefix("Value error, ")
    loc = ".".join(str(part) for part in error.get("loc", ())) or "job"
    field = str(error["loc"][0]) if error.get("loc") else ""
    if error.get("type") == "missing":
        problem = "is required"
    elif error.get("type") == "extra_forbidden":
        return f"field '{loc}' is not part of a job; known fields: {', '.join(Job.model_fields)}"
    else:
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problem = f"got {error.get('input')!r}: {msg}"
    allowed = ALLOWED.get(field)
    return f"field '{loc}' {problem}" + (f"; allowed: {allowed}" if allowed else "")


def parse_job(payload: Any) -> Job:
    """Validate a job payload (a mapping); raise :class:`InvalidJob` naming each bad field."""
    if isinstance(payload, Job):
        return payload
    if not isinstance(payload, dict):
        raise InvalidJob(
            f"a job payload must be a JSON object with the fields {', '.join(Job.model_fields)}; "
            f"got {type(payload).__name__}: {str(payload)[:200]!r}"
        )
    try:
        return Job.model_validate(payload)
    except ValidationError as e:
        details = "; ".join(_describe(err) for err in e.errors())  # type: ignore[arg-type]
        raise InvalidJob(f"invalid job: {details}") from e


class ImageRecord(BaseModel):
    """One rendered image as stored."""

    index: int
    seed: int
    key: str
    uri: str
    sha256: str
    bytes: int


class JobResult(BaseModel):
    """What a worker returns for a finished job (also stored beside the images)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    #: Always succeeded: a job that fails has no result, its task fails instead.
    status: Literal[JobState.SUCCEEDED] = JobState.SUCCEEDED
    prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    images: list[ImageRecord]
    model_manifest_sha256: str
    #: Seconds per stage: text_encoder, unet, vae, encode, upload, render, total.
    durations_s: dict[str, float]
    worker: str
