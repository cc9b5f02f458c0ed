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
from lcm_fleet.contract import JobClass, interactive_queue
from lcm_fleet.records import RecordStore, open_records
from lcm_fleet.storage import ObjectStore
from worker.errors import StartupError
from worker.fleet.layout import split_cpus
from worker.model.artifact import ServedModel
from worker.render.blobs import blob_root
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
    _uploads: dict[JobClass, ThreadPoolExecutor] = field(default_factory=dict)
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

    def render_cpu_sets(self) -> tuple[tuple[int, ...], ...] | None:
        """Each render process's own cores: with LCM_CPU_PINNING=true, LCM_CPU_THREADS set
        and LCM_CONCURRENCY > 1, runs of LCM_CPU_THREADS of the cores this worker may use
        (lcm-fleet's unit), so that OpenVINO's pinning in one does not land on another's
        cores; None (every process on all of them) otherwise, or when they do not fit."""
        s = self.settings
        if (
            not s.device.startswith("CPU")
            or s.cpu_pinning is not True
            or s.cpu_threads is None
            or s.concurrency == 1
        ):
            return None
        cpus = sorted(os.sched_getaffinity(0))
        if s.concurrency * s.cpu_threads > len(cpus):
            logger.warning(
                "LCM_CONCURRENCY=%d x LCM_CPU_THREADS=%d is more than the %d cores this worker "
                "may use: the render processes share them",
                s.concurrency,
                s.cpu_threads,
                len(cpus),
            )
            return None
        return split_cpus(cpus, s.concurrency, s.cpu_threads)

    def describe_rendering(self) -> str:
        """The worker's start line: its render processes, threads and cores."""
        s, sets = self.settings, self.render_cpu_sets()
        threads = "all cores" if s.cpu_threads is None else f"{s.cpu_threads} thread(s)"
        pinned = {True: "pinned", False: "not pinned", None: "OpenVINO's pinning"}[s.cpu_pinning]
        if sets is not None:
            where = "cpus " + " | ".join(",".join(map(str, c)) for c in sets)
        else:
            where = "cpus " + ",".join(map(str, sorted(os.sched_getaffinity(0)))) + " shared"
        return f"{s.concurrency} render process(es) x {threads} on {s.device} ({where}, {pinned})"

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
            blob_dir=blob_root(settings.cache_dir, settings.blob_cache),
            blob_verify=settings.artifact_verify,
            budget_gib=budget,
            budget_name=name,
            estimate_gib=self._estimate_gib(),
            warmup=settings.warms_up(),
            log_level=settings.log_level,
            cpu_sets=self.render_cpu_sets(),
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
            bulk_give_back=self.settings.bulk_give_back,
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

    def uploads(self, job_class: JobClass = JobClass.INTERACTIVE) -> ThreadPoolExecutor:
        """Threads that encode and upload finished images, one per job in flight. Bulk jobs'
        threads run at a lower CPU priority (LCM_BULK_ENCODE_NICE), so that a bulk job's PNG
        encoding does not slow the interactive render beside it."""
        with self._lock:
            pool = self._uploads.get(job_class)
            if pool is None:
                nice = self.settings.bulk_encode_nice if job_class is JobClass.BULK else 0
                pool = self._uploads[job_class] = ThreadPoolExecutor(
                    max_workers=self.threads,
                    thread_name_prefix=f"lcm-upload-{job_class.value}",
                    initializer=(lambda: lower_thread_priority(nice)) if nice else None,
                )
            return pool

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
        for pool in list(self._uploads.values()):
            pool.shutdown(wait=True)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value to ``nice`` (Linux keeps one per thread; an
    unprivileged process can raise it but not lower it back, hence a pool per class)."""
    try:
        thread = threading.get_native_id()
        if nice > os.getpriority(os.PRIO_PROCESS, thread):  # never raise its priority
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    except (AttributeError, OSError) as e:  # not Linux, or not allowed: run at the default
        logger.debug("could not lower the priority of an upload thread: %s", e)


_runtime: Runtime | None = None


def install(settings: WorkerSettings, model: ServedModel) -> Runtime:
    global _runtime
    _runtime = Runtime(settings=settings, model=model)
    return _runtime


def current() -> Runtime:
    if _runtime is None:
        raise StartupError("the worker runtime is not installed: start workers with `lcm-worker`")
    return _runtime
