"""The worker's settings: one object per process, from ``LCM_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from lcm_fleet.artifact.kinds import InferencePrecision
from lcm_fleet.artifact.registry import parse_ref
from lcm_fleet.consuming.settings import ConsumerSettings
from lcm_fleet.errors import RegistryInputError
from worker.model.verified import VerifyMode
from worker.render.sizes import parse_sizes


class WorkerSettings(ConsumerSettings):
    """The connection settings and queue screen limits (LCM_MAX_MESSAGE_BYTES,
    LCM_DEAD_LETTER_MAX: lcm_fleet/consuming/settings.py), and the worker's own."""

    #: What this worker serves: NAME@VERSION or NAME@latest (published with `lcm-build
    #: publish`, pulled from S3 into model_cache_dir) or an artifact folder. Exactly one of
    #: model and model_dir is set.
    model: str | None = None
    #: The artifact folder (built by lcm-build) this worker serves.
    model_dir: Path | None = None
    #: Where published models are downloaded to, as <name>/<version>/.
    model_cache_dir: Path = Path.home() / ".cache" / "lcm-fleet" / "models"
    #: How the artifact's files are checked at start: "marker" hashes them unless a verified
    #: marker (written under model_cache_dir after the last full check) matches every file's
    #: size, mtime, ctime and inode; "full" hashes at every start (worker/model/verified.py).
    artifact_verify: VerifyMode = VerifyMode.MARKER
    #: OpenVINO device: CPU, GPU, GPU.1, ...
    device: str = "CPU"
    #: OpenVINO compile cache; makes later start-ups fast. Empty string disables it.
    cache_dir: str = str(Path.home() / ".cache" / "lcm-fleet" / "openvino")
    #: Export each compiled model under LCM_CACHE_DIR/blobs/ and import it at the next start
    #: instead of compiling (faster than the compile cache; never for an encrypted artifact;
    #: worker/render/blobs.py). Off, or LCM_CACHE_DIR empty: compile at every start.
    blob_cache: bool = True
    #: OpenVINO inference precision: "default" lets the device choose (bf16 where the CPU has it).
    inference_precision: InferencePrecision = InferencePrecision.DEFAULT
    #: Static shape to compile; None takes the artifact's shape from its manifest.
    width: int | None = Field(default=None, ge=64, le=2048, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=2048, multiple_of=8)
    #: Size classes to serve, e.g. "512x512,768x512": one compiled pipeline per size, all in
    #: this worker's memory; the first is used for jobs that name no size. Empty: LCM_WIDTH x
    #: LCM_HEIGHT, or the artifact's shape.
    sizes: Annotated[tuple[tuple[int, int], ...], NoDecode] = ()
    #: Memory (GiB) this worker's pipelines may take together, measured as resident memory
    #: growth while each loads and warms up; required when LCM_SIZES lists more than one size.
    memory_budget_gib: float | None = Field(default=None, gt=0)
    #: Render one 1-step image per size class at start, so that the memory budget counts the
    #: first inference's memory. Unset: only when LCM_MEMORY_BUDGET_GIB is set: it did not make
    #: the first job faster and it delays the first image (measured:
    #: docs/performance.md#cold-start-benchcoldstart).
    warmup: bool | None = None

    #: Required: no defaults for secrets.
    s3_access_key_id: SecretStr
    s3_secret_access_key: SecretStr
    #: The AES-256 key (base64 of 32 bytes) of an encrypted artifact (`lcm-build encrypt`);
    #: no default. Unset: only plaintext artifacts are served.
    model_key: SecretStr | None = None

    #: Render processes, each with its own compiled pipelines (lcm-fleet runs one worker per
    #: socket or GPU instead); the worker keeps two jobs in flight per render process.
    concurrency: int = Field(default=1, ge=1, le=64)
    task_soft_time_limit_s: int = Field(default=600, ge=1)
    task_time_limit_s: int = Field(default=660, ge=1)
    #: Redis re-delivers an unacknowledged job after this long; must exceed the hard limit.
    visibility_timeout_s: int = Field(default=3600, ge=60)
    #: A worker whose heartbeat is this old is taken for dead, and the jobs it held go back
    #: to their queue at once instead of after the visibility timeout (worker/consumer/reclaim.py).
    heartbeat_ttl_s: float = Field(default=30.0, ge=3, le=3600)
    #: Seconds a new render process may take to load, compile and warm up its pipelines.
    startup_timeout_s: float = Field(default=600.0, gt=0)
    #: Deliveries of one job (crashes included) before it is failed for good.
    max_deliveries: int = Field(default=3, ge=1, le=20)

    #: Seconds one S3 call of a job (an image, result.json) retries transient faults in place
    #: (capped, jittered LCM_UPLOAD_BACKOFF_*) before the job is retried from its queue; 0:
    #: LCM_UPLOAD_ATTEMPTS attempts instead. Counted in the job's soft time limit.
    storage_retry_budget_s: float = Field(default=300.0, ge=0)
    #: Seconds the worker retries a job's record updates (Redis away) after its objects are
    #: stored, before it leaves the message unacknowledged for redelivery.
    bookkeeping_budget_s: float = Field(default=60.0, ge=0)
    upload_attempts: int = Field(default=4, ge=1, le=20)
    upload_backoff_base_s: float = Field(default=0.5, gt=0)
    upload_backoff_cap_s: float = Field(default=8.0, gt=0)
    #: Task-level retries after a job's uploads kept failing.
    task_max_retries: int = Field(default=3, ge=0, le=20)
    retry_backoff_base_s: float = Field(default=5.0, gt=0)
    retry_backoff_cap_s: float = Field(default=120.0, gt=0)

    #: Seconds a known queue (one producers published to) must be empty and consumed by no
    #: advertising worker, on every heartbeat, before a worker forgets it (stops exporting
    #: its depth and warning about it); 0: never.
    queue_prune_after_s: float = Field(default=86400.0, ge=0)
    #: Interactive deliveries in a row, while a bulk queue holds jobs, before the next fetch
    #: takes bulk first (lcm_fleet/consuming/order.py): bulk gets at least 1 job start in
    #: LCM_INTERACTIVE_BURST + 1 while both classes wait.
    interactive_burst: int = Field(default=8, ge=1, le=1000)
    #: A bulk job holding a free render process yields it to interactive jobs queued for this
    #: worker for at most this long, until one of them has taken it (worker/render/
    #: slot_pool.py); 0: bulk jobs never yield.
    bulk_yield_max_s: float = Field(default=5.0, ge=0, le=600)
    #: A bulk job waiting for a busy render process while interactive jobs wait in Redis for
    #: this worker goes back to its queue (once per job and worker process, without counting
    #: a delivery), so that its thread fetches the interactive job at once
    #: (worker/render/slot_pool.py); false: it only yields free slots (above).
    bulk_give_back: bool = True
    #: Nice value of the threads that encode and upload bulk jobs' images (0: as the rest of
    #: the worker), so that they take CPU left over by the render of an interactive job.
    bulk_encode_nice: int = Field(default=10, ge=0, le=19)
    #: Seconds the worker tries to reach Redis at start before it exits (code 4), before it
    #: compiles anything or opens its metrics port.
    broker_connect_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: Times Celery tries again to reach Redis once lost while serving (waits 2, 4, ... 30 s
    #: between: about 6.5 min for 20) before it stops with exit code 1.
    broker_reconnect_retries: int = Field(default=20, ge=1, le=1000)
    #: Celery task events (task-received/started/succeeded...), so that Flower and other
    #: monitors see tasks without switching events on remotely.
    task_events: bool = True

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    #: Prometheus /metrics port of this worker (0: off); lcm-fleet gives each unit its own.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: Address the metrics server binds; 0.0.0.0 where Prometheus scrapes from elsewhere.
    metrics_addr: str = "127.0.0.1"
    #: Device of the text encoder when it differs from LCM_DEVICE (e.g. CPU beside a GPU).
    text_encoder_device: str | None = None
    #: OpenVINO CPU threads (INFERENCE_NUM_THREADS); None: all cores this process may use.
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)
    #: OpenVINO CPU thread pinning (ENABLE_CPU_PINNING); None: OpenVINO's default.
    cpu_pinning: bool | None = None
    #: A name for this worker (lcm-fleet sets one per unit, e.g. cpu0 or gpu1).
    unit: str = "main"

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> tuple[tuple[int, int], ...]:
        return parse_sizes(value)

    def size_classes(self) -> list[tuple[int, int]] | None:
        """The sizes to compile, the default first; None: the artifact's own shape."""
        if self.sizes:
            return list(self.sizes)
        if self.width is not None and self.height is not None:
            return [(self.width, self.height)]
        return None

    def warms_up(self) -> bool:
        """LCM_WARMUP if set; otherwise warm up only to measure for LCM_MEMORY_BUDGET_GIB."""
        return self.warmup if self.warmup is not None else self.memory_budget_gib is not None

    @field_validator("model", mode="before")
    @classmethod
    def _empty_model(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _model_source(self) -> WorkerSettings:
        if (self.model is None) == (self.model_dir is None):
            got = "both are set" if self.model is not None else "neither is set"
            raise ValueError(
                "set exactly one of LCM_MODEL (NAME@VERSION or NAME@latest from S3, or an "
                f"artifact folder) and LCM_MODEL_DIR (an artifact folder); {got}"
            )
        if (
            self.model is not None
            and "@" in self.model
            and not Path(self.model).expanduser().is_dir()
        ):
            try:
                parse_ref(self.model)
            except RegistryInputError as e:
                raise ValueError(
                    f"LCM_MODEL={self.model!r} is neither an artifact folder nor a "
                    f"published model: {e}"
                ) from e
        return self

    @model_validator(mode="after")
    def _limits(self) -> WorkerSettings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError(
                f"task_soft_time_limit_s={self.task_soft_time_limit_s} must be below "
                f"task_time_limit_s={self.task_time_limit_s}"
            )
        if self.visibility_timeout_s <= self.task_time_limit_s + self.retry_backoff_cap_s:
            raise ValueError(
                f"visibility_timeout_s={self.visibility_timeout_s} must exceed task_time_limit_s + "
                f"retry_backoff_cap_s ({self.task_time_limit_s + self.retry_backoff_cap_s:.0f}), "
                "or Redis re-delivers jobs that are still running"
            )
        if (self.width is None) != (self.height is None):
            raise ValueError("set both LCM_WIDTH and LCM_HEIGHT, or neither (the artifact's shape)")
        if self.sizes and self.width is not None:
            raise ValueError(
                "set LCM_SIZES or LCM_WIDTH/LCM_HEIGHT, not both: list every size in LCM_SIZES"
            )
        if len(self.sizes) > 1 and self.memory_budget_gib is None:
            listed = ",".join(f"{w}x{h}" for w, h in self.sizes)
            raise ValueError(
                f"LCM_SIZES={listed} keeps {len(self.sizes)} compiled pipelines in memory: set "
                "LCM_MEMORY_BUDGET_GIB to the memory they may take (the worker measures each "
                "one while it loads and refuses to start above it)"
            )
        return self
