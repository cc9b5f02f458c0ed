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
from typing import Any

from worker.artifact import ServedModel
from worker.errors import StartupError
from worker.pipeline import GenaiPipeline, ImagePipeline, process_pipeline
from worker.settings import WorkerSettings
from worker.storage import ObjectStore

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: WorkerSettings
    model: ServedModel
    _store: ObjectStore | None = None
    _redis: Any = None
    _uploads: ThreadPoolExecutor | None = None

    @property
    def queues(self) -> list[str]:
        """The default queue, and the size-class queue of this worker's compiled shape."""
        from producer.contract import size_queue

        base = self.settings.queue
        return [base, size_queue(base, self.model.width, self.model.height)]

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def pipeline(self) -> ImagePipeline:
        return process_pipeline(
            lambda: GenaiPipeline(
                self.model,
                self.settings.device,
                self.settings.cache_dir,
                self.settings.inference_precision,
                cpu_threads=self.settings.cpu_threads,
                cpu_pinning=self.settings.cpu_pinning,
                text_encoder_device=self.settings.text_encoder_device,
            )
        )

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
        pipeline = runtime.pipeline()
        from worker import metrics

        metrics.COMPILE_SECONDS.set(getattr(pipeline, "compile_s", 0.0))
    except Exception:
        logger.exception(
            "worker process %d could not load its pipeline; stopping the worker", os.getpid()
        )
        os.kill(os.getppid(), signal.SIGTERM)
        os._exit(3)
