"""The job contract between producers and workers.

Everything both sides must agree on lives here and nowhere else: the job schema and
its limits, the result schema, the Celery task and queue names, the wire settings
(JSON only, never pickle) and the object-key layout in storage. The worker imports
this module; it imports nothing heavy (no OpenVINO, torch or worker code).
"""

from __future__ import annotations

import contextlib
import re
import reprlib
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


class JobClass(TextEnum):
    """Who is waiting for a job. Interactive work (single jobs: ``lcm submit``, POST
    /v1/jobs, the OpenAI endpoint) goes ahead of bulk work (batches, bulk files,
    schedules); each class has its own queues (:func:`class_queue`), and workers take
    from both in the order the worker's consumption policy states."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


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
    # Not extended: the result backend keeps a job's result or its (bounded) failure, never
    # its arguments again, so an oversized message is not kept for LCM_RESULT_EXPIRES_S.
    "result_extended": False,
}

# Limits of the contract. LCM renders in 1 to 8 steps; images are multiples of 8
# because the VAE downsamples by 8.
STEPS_MIN, STEPS_MAX, STEPS_DEFAULT = 1, 8, 4
GUIDANCE_MIN, GUIDANCE_MAX, GUIDANCE_DEFAULT = 1.0, 20.0, 8.0
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
IMAGES_MIN, IMAGES_MAX = 1, 8
SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 2000
#: Characters of a job's ``output_prefix`` (relative to LCM_S3_PREFIX).
OUTPUT_PREFIX_MAX_CHARS = 200
OUTPUT_PREFIX_PATTERN = r"^[A-Za-z0-9._/-]+$"
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: Control characters a prompt may hold: tab and the two line ends (LF, CR). Every other C0
#: control (NUL, BEL, ESC, 0x01 ...), DEL, the C1 controls and lone surrogates are refused.
PROMPT_CONTROLS_ALLOWED = "\t\n\r"
#: Characters of a bad value that an error message quotes; the rest is counted, not repeated.
QUOTE_MAX_CHARS = 60

# What each field allows, spelled out for error messages.
ALLOWED: dict[str, str] = {
    "job_id": "1-128 characters of letters, digits, '.', '_' or '-', starting with a letter "
    "or digit (default: a random id)",
    "prompt": f"a non-empty text of at most {PROMPT_MAX_CHARS} characters, without control "
    "characters (tab and line breaks are allowed)",
    "seed": f"an integer from 0 to {SEED_MAX} (default: random, recorded in the result)",
    "steps": f"an integer from {STEPS_MIN} to {STEPS_MAX} (LCM; default {STEPS_DEFAULT})",
    "guidance_scale": f"a number from {GUIDANCE_MIN} to {GUIDANCE_MAX} (default: the model's, "
    f"{GUIDANCE_DEFAULT} for an LCM, 1.0 for an SD1.5 + LCM-LoRA model)",
    "width": f"a multiple of {SIZE_MULTIPLE} from {SIZE_MIN} to {SIZE_MAX} that the worker's "
    "model serves (default: the model's size)",
    "height": f"a multiple of {SIZE_MULTIPLE} from {SIZE_MIN} to {SIZE_MAX} that the worker's "
    "model serves (default: the model's size)",
    "num_images": f"an integer from {IMAGES_MIN} to {IMAGES_MAX} (default 1)",
    "output_prefix": f"a relative key prefix of at most {OUTPUT_PREFIX_MAX_CHARS} letters, "
    "digits, '.', '_', '-' or '/', not starting with '/' and without '.' or '..' segments, e.g. "
    "'catalogue/2026-12-03' (default: none, the images go under jobs/<job_id>/)",
}


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_MAX_CHARS
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def quote(value: Any, limit: int = QUOTE_MAX_CHARS) -> str:
    """A bad value as an error message shows it: its ``repr``, cut to about ``limit``
    characters, with the length of what was cut (a 10 MB prompt is not repeated)."""
    if isinstance(value, str | bytes):
        if len(value) <= limit:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    text = _REPR.repr(value)  # bounded for containers of any size, without building it all
    return text if len(text) <= 2 * limit else text[: 2 * limit] + "..."


# Cc (C0, DEL, C1) but tab, LF and CR; and lone surrogates (Cs), which no UTF-8 can carry.
_FORBIDDEN_IN_PROMPT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_NAMES = {0x00: " (NUL)", 0x07: " (BEL)", 0x08: " (BS)", 0x1B: " (ESC)", 0x7F: " (DEL)"}


def control_character(text: str) -> tuple[int, str] | None:
    """The position and name of the first character a prompt may not hold, if any."""
    found = _FORBIDDEN_IN_PROMPT.search(text)
    if found is None:
        return None
    code = ord(found.group())
    what = "lone surrogate" if 0xD800 <= code <= 0xDFFF else "control character"
    return found.start(), f"{what} U+{code:04X}{_CONTROL_NAMES.get(code, '')}"


def check_output_prefix(value: str) -> str:
    """An output prefix past its pattern: relative, no '.' or '..' segment, no empty one;
    a trailing '/' is dropped. ValueError says what is wrong."""
    if value.startswith("/"):
        raise ValueError("a prefix is relative to LCM_S3_PREFIX: drop the leading '/'")
    if any(part in ("..", ".") for part in value.split("/")):
        raise ValueError("'.' and '..' segments are not allowed")
    value = value.rstrip("/")
    if not value or "//" in value:
        raise ValueError("empty segments ('//', or only '/') are not allowed")
    return value


def new_job_id() -> str:
    return uuid.uuid4().hex


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


class Job(BaseModel):
    """One render request: a prompt rendered ``num_images`` times.

    Image ``i`` is rendered with seed ``(seed + i) mod 2**32``; the result records each.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict types: a bool is not a seed, "4" is not a step count (JSON numbers are what
    # producers send; text cells are converted by job_fields_from_text first).
    job_id: str = Field(default_factory=new_job_id, pattern=JOB_ID_PATTERN, strict=True)
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS, strict=True)
    seed: int = Field(default_factory=random_seed, ge=0, le=SEED_MAX, strict=True)
    steps: int = Field(default=STEPS_DEFAULT, ge=STEPS_MIN, le=STEPS_MAX, strict=True)
    #: None: the model's own (the worker records the value it used).
    guidance_scale: float | None = Field(
        default=None, ge=GUIDANCE_MIN, le=GUIDANCE_MAX, strict=True
    )
    width: int | None = Field(default=None, ge=SIZE_MIN, le=SIZE_MAX, strict=True)
    height: int | None = Field(default=None, ge=SIZE_MIN, le=SIZE_MAX, strict=True)
    num_images: int = Field(default=1, ge=IMAGES_MIN, le=IMAGES_MAX, strict=True)
    #: Where the job's objects go, below LCM_S3_PREFIX: ``<output_prefix>/<job_id>/NNN.png``
    #: and result.json beside; None: ``jobs/<job_id>/`` (lcm_fleet/keys.py).
    output_prefix: str | None = Field(
        default=None,
        max_length=OUTPUT_PREFIX_MAX_CHARS,
        pattern=OUTPUT_PREFIX_PATTERN,
        strict=True,
        # No prefix: the job serialises as before the field existed (the same message and
        # record bytes, which workers without the field still accept); a field rule, not a
        # model serializer, so the job's JSON schema stays the same in both modes (OpenAPI).
        exclude_if=lambda value: value is None,
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_clean(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is blank")
        found = control_character(value)
        if found is not None:
            index, what = found
            raise ValueError(f"{what} at position {index} is not allowed in a prompt")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % SIZE_MULTIPLE:
            raise ValueError(f"{value} is not a multiple of {SIZE_MULTIPLE}")
        return value

    @field_validator("output_prefix")
    @classmethod
    def _relative_prefix(cls, value: str | None) -> str | None:
        return None if value is None else check_output_prefix(value)

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


#: Suffix of a bulk queue: ``lcm.render.512x512`` -> ``lcm.render.512x512.bulk``.
BULK_SUFFIX = ".bulk"


def class_queue(queue: str, job_class: JobClass) -> str:
    """The queue of ``job_class`` beside an interactive queue (the interactive one itself)."""
    return f"{queue}{BULK_SUFFIX}" if job_class is JobClass.BULK else queue


def interactive_queue(queue: str) -> str:
    """The interactive queue a queue belongs to: ``x.64x64.bulk`` -> ``x.64x64``."""
    return queue.removesuffix(BULK_SUFFIX)


def queue_for(job: Job, base: str, job_class: JobClass = JobClass.INTERACTIVE) -> str:
    """Jobs without a size go to ``base`` (any worker); sized jobs to their size class;
    bulk jobs to the bulk queue beside it."""
    if job.width is None or job.height is None:
        return class_queue(base, job_class)
    return class_queue(size_queue(base, job.width, job.height), job_class)


_INT_FIELDS = ("seed", "steps", "width", "height", "num_images")
_FLOAT_FIELDS = ("guidance_scale",)


def job_fields_from_text(cells: dict[str, str]) -> dict[str, Any]:
    """A job's fields from text cells (a CSV row): numbers written as numbers become numbers;
    anything else is left as text, for the strict contract to refuse naming the field."""
    fields: dict[str, Any] = dict(cells)
    for name, kind in (*((n, int) for n in _INT_FIELDS), *((n, float) for n in _FLOAT_FIELDS)):
        text = cells.get(name)
        if text is None:
            continue
        with contextlib.suppress(ValueError):  # not a number: refused, naming the field
            fields[name] = kind(text)
    return fields


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
        problem = f"got {quote(error.get('input'))}: {msg}"
    allowed = ALLOWED.get(field)
    return f"field '{loc}' {problem}" + (f"; allowed: {allowed}" if allowed else "")


def parse_job(payload: Any) -> Job:
    """Validate a job payload (a mapping); raise :class:`InvalidJob` naming each bad field."""
    if isinstance(payload, Job):
        return payload
    if not isinstance(payload, dict):
        raise InvalidJob(
            f"a job payload must be a JSON object with the fields {', '.join(Job.model_fields)}; "
            f"got {type(payload).__name__}: {quote(payload)}"
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
