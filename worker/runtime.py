"""What a worker holds: its settings, the verified model, its render processes, the store.

``lcm-worker`` verifies the model, installs the runtime, starts the render processes
(which compile the pipelines, worker/render/process.py) and only then lets Celery's threads
consume jobs. The S3 client, the Redis client and the upload threads are shared by the
job threads (boto3 clients and redis-py clients are thread-safe).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lcm_fleet.consuming.depth import waiting_in
from lcm_fleet.contract import interactive_queue
from lcm_fleet.records import RecordStore, open_records
from lcm_fleet.storage import ObjectStore
from worker.errors import StartupError
from worker.model.artifact import ServedModel
from worker.render.memory import check_estimate, estimate_gib
from worker.render.messages import LoadReport
from worker.render.process import RenderSlots, RenderSpec
from worker.render.sizes import Size, queues_for
from worker.results.storage import result_store
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

#: Jobs in flight per render process: one rendering, one storing its images.
JOBS_PER_RENDER_PROCESS = 2


@dataclass
class Runtime:
    settings: WorkerSettings
    model: ServedModel
    slots: RenderSlots | None = None
    #: Why the worker stopped itself (a render process that cannot be started again).
    fatal: str | None = None
    _store: ObjectStore | None = None
    _redis: Any = None
    _records: RecordStore | None = None
    _uploads: ThreadPoolExecutor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sizes(self) -> list[Size]:
        """The size classes this worker serves, its default first."""
        return self.settings.size_classes() or [(self.model.width, self.model.height)]

    @property
    def queues(self) -> list[str]:
        """The default queue and the size-class queue of every size this worker serves, each
        with its bulk queue (worker/render/sizes.py queues_for)."""
        return queues_for(self.settings.queue, self.sizes)

    @property
    def threads(self) -> int:
        """Celery threads: jobs in flight at once."""
        return JOBS_PER_RENDER_PROCESS * self.settings.concurrency

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def _budget(self) -> tuple[float | None, str]:
        """Memory budget of one render process's pipelines, and how to name it."""
        settings = self.settings
        if settings.memory_budget_gib is None or settings.concurrency == 1:
            return settings.memory_budget_gib, "LCM_MEMORY_BUDGET_GIB"
        # Every render process holds its own pipelines.
        return (
            settings.memory_budget_gib / settings.concurrency,
            f"LCM_MEMORY_BUDGET_GIB/LCM_CONCURRENCY ({settings.concurrency})",
        )

    def _estimate_gib(self) -> float:
        """Lower bound per pipeline; 0 off the CPU (the weights live in device memory)."""
        if not self.settings.device.startswith("CPU"):
            return 0.0
        return estimate_gib(self.model.path)

    def check_estimate(self) -> None:
        """Before any compile: refuse size classes a token-merging UNet cannot serve, and
        refuse when even the artifact's weights exceed the budget."""
        tome = self.model.manifest.tome
        refusal = tome.size_refusal(self.sizes, self.model.path) if tome is not None else None
        if refusal is not None:
            raise StartupError(refusal)
        budget, name = self._budget()
        check_estimate(self.sizes, self._estimate_gib(), budget, name)

    def render_spec(self) -> RenderSpec:
        settings = self.settings
        budget, name = self._budget()
        return RenderSpec(
            model=self.model,
            sizes=tuple(self.sizes),
            device=settings.device,
            cache_dir=settings.cache_dir,
            precision=settings.inference_precision,
            cpu_threads=settings.cpu_threads,
            cpu_pinning=settings.cpu_pinning,
            text_encoder_device=settings.text_encoder_device,
            budget_gib=budget,
            budget_name=name,
            estimate_gib=self._estimate_gib(),
            warmup=settings.warms_up(),
            log_level=settings.log_level,
        )

    def start_rendering(self, on_fatal: Any = None) -> list[LoadReport]:
        """Start the render processes; raise StartupError/ModelLoadError if they cannot load."""
        self.launch_rendering(on_fatal)
        return self.render_slots().wait_ready()

    def launch_rendering(self, on_fatal: Any = None) -> None:
        """Start compiling in the first render process; :meth:`render_slots` ``.wait_ready()``
        waits for it (and starts the others)."""
        self.slots = RenderSlots(
            self.render_spec(),
            processes=self.settings.concurrency,
            startup_timeout_s=self.settings.startup_timeout_s,
            on_fatal=on_fatal,
            interactive_waiting=self.interactive_waiting,
            bulk_yield_max_s=self.settings.bulk_yield_max_s,
        )
        self.slots.launch()

    def interactive_waiting(self) -> bool:
        """True while an interactive queue this worker consumes holds a job (every priority
        list of each, one pipeline)."""
        queues = [q for q in self.queues if interactive_queue(q) == q]
        return any(waiting_in(self.redis(), queues))

    def render_slots(self) -> RenderSlots:
        if self.slots is None:
            raise StartupError("the render processes are not started: start with `lcm-worker`")
        return self.slots

    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = result_store(self.settings)
            return self._store

    def uploads(self) -> ThreadPoolExecutor:
        """Threads that encode and upload finished images, one per job in flight."""
        with self._lock:
            if self._uploads is None:
                self._uploads = ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="lcm-upload"
                )
            return self._uploads

    def records(self) -> RecordStore:
        """The job and batch records (LCM_RECORDS_REDIS_URL, or the broker's Redis)."""
        with self._lock:
            if self._records is None:
                self._records = open_records(self.settings)
            return self._records

    def redis(self) -> Any:
        with self._lock:
            if self._redis is None:
                self._redis = self.settings.redis_client(socket_timeout=10)
            return self._redis

    def abort(self) -> None:
        """Refusing to start: kill the render processes now (they have served nothing)."""
        if self.slots is not None:
            self.slots.kill()

    def stop(self) -> None:
        if self.slots is not None:
            self.slots.stop()
        if self._uploads is not None:
            self._uploads.shutdown(wait=True)


_runtime: Runtime | None = None


def install(settings: WorkerSettings, model: ServedModel) -> Runtime:
    global _runtime
    _runtime = Runtime(settings=settings, model=model)
    return _runtime


def current() -> Runtime:
    if _runtime is None:
        raise StartupError("the worker runtime is not installed: start workers with `lcm-worker`")
    return _runtime
