"""What one worker process holds: its settings, the verified model, the store, the pipeline.

The parent process installs settings and the verified model before it forks; each
child builds its own pipeline (a pipeline compiled before fork leaves each child's
OpenVINO on one core) and its own S3 and Redis clients.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.artifact import ServedModel
from worker.errors import StartupError
from worker.memory import LoadedSizes, check_estimate, estimate_gib, load_size_classes
from worker.pipeline import GenaiPipeline, ImagePipeline, process_pipelines
from worker.settings import WorkerSettings
from worker.sizes import PipelineSet, Size, queues_for
from worker.storage import ObjectStore

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: WorkerSettings
    model: ServedModel
    _store: ObjectStore | None = None
    _redis: Any = None
    _uploads: ThreadPoolExecutor | None = None
    #: Where a worker process that refuses to start writes why (read by lcm-worker).
    refusal_file: Path | None = None

    @property
    def sizes(self) -> list[Size]:
        """The size classes this worker serves, its default first."""
        return self.settings.size_classes() or [(self.model.width, self.model.height)]

    @property
    def queues(self) -> list[str]:
        """The default queue, and the size-class queue of every size this worker serves."""
        return queues_for(self.settings.queue, self.sizes)

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def _compile(self, size: Size) -> ImagePipeline:
        return GenaiPipeline(
            self.model,
            self.settings.device,
            self.settings.cache_dir,
            self.settings.inference_precision,
            cpu_threads=self.settings.cpu_threads,
            cpu_pinning=self.settings.cpu_pinning,
            text_encoder_device=self.settings.text_encoder_device,
            width=size[0],
            height=size[1],
        )

    def _budget(self) -> tuple[float | None, str]:
        """Memory budget of one worker process's pipelines, and how to name it."""
        settings = self.settings
        if settings.memory_budget_gib is None or settings.concurrency == 1:
            return settings.memory_budget_gib, "LCM_MEMORY_BUDGET_GIB"
        # Every worker process holds its own pipelines.
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
        """Before any compile: refuse when even the artifact's weights exceed the budget."""
        budget, name = self._budget()
        check_estimate(self.sizes, self._estimate_gib(), budget, name)

    def _load(self) -> LoadedSizes:
        budget, name = self._budget()
        return load_size_classes(
            self.sizes,
            self._compile,
            estimate_gib=self._estimate_gib(),
            budget_gib=budget,
            budget_name=name,
            warmup=self.settings.warmup,
        )

    def loaded(self) -> LoadedSizes:
        """This process's pipelines, one per size class, compiled on first use."""
        return process_pipelines(self._load)

    def pipelines(self) -> PipelineSet:
        return self.loaded().pipelines

    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = ObjectStore(self.settings)
        return self._store

    def uploads(self) -> ThreadPoolExecutor:
        """One background thread per process that encodes and uploads finished images."""
        if self._uploads is None:
            self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcm-upload")
        return self._uploads

    def redis(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10)
        return self._redis


_runtime: Runtime | None = None


def install(settings: WorkerSettings, model: ServedModel) -> Runtime:
    global _runtime
    _runtime = Runtime(settings=settings, model=model)
    return _runtime


def current() -> Runtime:
    if _runtime is None:
        raise StartupError("the worker runtime is not installed: start workers with `lcm-worker`")
    return _runtime


def load_in_child() -> None:
    """worker_process_init: compile this child's pipeline; on failure stop the whole worker.

    Celery logs and ignores exceptions from signal handlers, and would keep replacing a
    child that cannot load: so a load failure shuts the parent down instead.
    """
    runtime = current()
    runtime._store = None
    runtime._redis = None
    runtime._uploads = None
    try:
        loaded = runtime.loaded()
        from worker import metrics

        metrics.observe_load(loaded)
    except StartupError as e:
        logger.error("worker process %d refuses to start: %s", os.getpid(), e)
        if runtime.refusal_file is not None:
            runtime.refusal_file.write_text(str(e))
        os.kill(os.getppid(), signal.SIGTERM)
        os._exit(3)
    except Exception:
        logger.exception(
            "worker process %d could not load its pipeline; stopping the worker", os.getpid()
        )
        os.kill(os.getppid(), signal.SIGTERM)
        os._exit(3)
