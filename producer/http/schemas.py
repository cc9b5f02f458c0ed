"""Request and response bodies of the HTTP API (the OpenAPI document is built from them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lcm_fleet.contract import (
    IMAGES_MAX,
    IMAGES_MIN,
    OUTPUT_PREFIX_MAX_CHARS,
    OUTPUT_PREFIX_PATTERN,
    PROMPT_MAX_CHARS,
    Job,
    JobClass,
    JobState,
    check_output_prefix,
)
from lcm_fleet.records import BatchCounts, BatchSummary, Progress, Waiting
from producer.http.webhook_urls import MAX_URL_CHARS


class JobRequest(Job):
    """A job (the contract's fields) and an optional completion callback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: POSTed when the job succeeds, fails or is cancelled.
    webhook_url: str | None = Field(default=None, max_length=MAX_URL_CHARS)

    def job(self) -> Job:
        return Job.model_validate(self.model_dump(exclude={"webhook_url"}))


class JobAccepted(BaseModel):
    id: str
    status_url: str
    state: JobState = JobState.QUEUED


class ImageView(BaseModel):
    index: int
    seed: int
    sha256: str
    bytes: int
    #: Presigned GET URL of the PNG in S3 (expires after LCM_PRESIGN_EXPIRES_S).
    url: str
    #: The PNG through the API, for clients that cannot reach S3.
    image_url: str


class ResultView(BaseModel):
    prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    images: list[ImageView]
    durations_s: dict[str, float]
    model_manifest_sha256: str
    worker: str


class JobView(BaseModel):
    id: str
    state: JobState
    batch_id: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    progress: Progress | None = None
    #: Set while the running job waits, e.g. for storage (its writes retrying S3).
    waiting: Waiting | None = None
    cancel_requested: bool = False
    #: Why it failed or was cancelled.
    reason: str | None = None
    job: Job | None = None
    result: ResultView | None = None
    #: Images stored before a job ended without a result (cancelled mid-job).
    partial_images: list[str] = Field(default_factory=list)
    webhook_url: str | None = None
    #: ``interactive`` (a single job) or ``bulk`` (a batch's job); null for a job recorded
    #: without one (sent straight to its queue).
    job_class: JobClass | None = None


class CancelView(BaseModel):
    id: str
    state: JobState
    #: True when the job was running: it stops at its next denoising step.
    cancel_requested: bool


class BatchRequest(BaseModel):
    """A batch as JSON: the jobs, checked whole before any is queued."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[Job] = Field(min_length=1)
    #: POSTed when the batch finishes.
    webhook_url: str | None = Field(default=None, max_length=MAX_URL_CHARS)
    #: Where every job's objects (those not naming their own) and the batch's manifest go,
    #: below LCM_S3_PREFIX (the job field's rules); None: jobs/<job_id>/, batches/<id>/.
    output_prefix: str | None = Field(
        default=None, max_length=OUTPUT_PREFIX_MAX_CHARS, pattern=OUTPUT_PREFIX_PATTERN
    )

    @field_validator("output_prefix")
    @classmethod
    def _relative_prefix(cls, value: str | None) -> str | None:
        return None if value is None else check_output_prefix(value)


class BatchAccepted(BaseModel):
    id: str
    status_url: str
    jobs: int


class BatchView(BaseModel):
    id: str
    created_at: float
    finished_at: float | None = None
    total: int
    sealed: bool
    counts: BatchCounts
    #: Finished jobs / total.
    progress: float
    job_ids: list[str]
    offset: int
    limit: int
    webhook_url: str | None = None
    source: str | None = None
    output_prefix: str | None = None
    #: Once the batch ended: counts, wall time, images/s and its manifest's key.
    summary: BatchSummary | None = None


class BatchCancelView(BaseModel):
    id: str
    canceled: int
    requested: int
    finished: int


class ImagesRequest(BaseModel):
    """OpenAI's ``images.generate`` body (the fields lcm-fleet serves)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    n: int = Field(default=1, ge=IMAGES_MIN, le=IMAGES_MAX, strict=True)
    #: WIDTHxHEIGHT; None: the model's size.
    size: str | None = Field(default=None, max_length=20)
    response_format: Literal["url", "b64_json"] = "url"
    #: Accepted for compatibility; the fleet serves the model its workers hold.
    model: str | None = Field(default=None, max_length=200)
    #: Accepted for compatibility, unused.
    user: str | None = Field(default=None, max_length=200)


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
    detail: dict[str, str]


class QueueDepthView(BaseModel):
    """One queue family: an interactive queue and the bulk queue beside it."""

    #: The interactive queue (``lcm.render.512x512``); its bulk queue is ``<queue>.bulk``.
    queue: str
    #: Jobs in its lists, every priority level counted.
    interactive_waiting: int
    bulk_waiting: int
    waiting: int
    #: Jobs a worker has taken (prefetched or rendering) and not yet acknowledged.
    held: int
    #: waiting + held: what KEDA scales on (deploy/k8s/keda.yaml).
    total: int


class QueuesView(BaseModel):
    """The families asked for, and their sums."""

    queues: list[QueueDepthView]
    waiting: int
    held: int
    total: int
