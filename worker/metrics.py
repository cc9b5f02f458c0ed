"""Prometheus metrics of one worker: stage histograms, jobs by outcome, queue depth.

The job threads of the worker process record them; the same process serves
``/metrics``, with the queue depths it reads from Redis at each scrape. (The render
processes only render; they report their compile time and memory once, at start.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from lcm_fleet.contract import Job
from worker.consumer.policy import Outcome
from worker.durations import JobDurations
from worker.render.sizes import PipelineSet, format_size

logger = logging.getLogger(__name__)

STAGES = (
    "queue_wait",
    "text_encoder",
    "unet",
    "vae",
    "render",
    "slot_wait",
    "encode",
    "upload",
    "store_wait",
    "total",
)
#: ``outcome`` label values: worker.consumer.policy.Outcome.
OUTCOMES = tuple(o.value for o in Outcome)

#: ``size`` label of jobs whose size this worker does not serve, and of undecodable ones.
SIZE_OTHER, SIZE_UNKNOWN = "other", "unknown"

STAGE_SECONDS = Histogram(
    "lcm_job_stage_seconds",
    "Seconds per job stage",
    ["stage", "size"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
)
JOBS = Counter("lcm_jobs_total", "Jobs finished, by outcome and size class", ["outcome", "size"])
IMAGES = Counter("lcm_images_total", "Images rendered and stored", ["size"])
GIVEN_BACK = Counter(
    "lcm_jobs_given_back_total",
    "Jobs that workers which stopped beating held, put back on their queues by this worker",
)
COMPILE_SECONDS = Gauge(
    "lcm_pipeline_compile_seconds",
    "Seconds to load and compile the pipeline of a size class",
    ["size"],
)
PIPELINE_MEMORY = Gauge(
    "lcm_pipeline_memory_gib",
    "Resident memory growth (GiB) while the pipeline of a size class loaded and warmed up",
    ["size"],
)


#: Wall time over which ``lcm_images_per_core_hour`` counts the images stored.
RATE_WINDOW_S = 600.0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; lcm-fleet pins one per socket)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CoreHourRate:
    """Images stored per core-hour over the last ``window_s`` of wall time, idle time included:
    what an operator pays per image. At full load it is bench/pipeline's figure."""

    def __init__(
        self,
        cores: int,
        window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores, self.window_s, self.clock = max(1, cores), window_s, clock
        self.started = clock()
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, images: int) -> None:
        with self._lock:
            self._events.append((self.clock(), images))

    def value(self) -> float:
        now = self.clock()
        with self._lock:
            while self._events and self._events[0][0] < now - self.window_s:
                self._events.popleft()
            images = sum(n for _, n in self._events)
        span_s = min(self.window_s, now - self.started)
        return 3600.0 * images / (self.cores * span_s) if span_s > 0 else 0.0


RATE = CoreHourRate(usable_cores())


def size_label(job: Job | None, classes: PipelineSet[Any] | None) -> str:
    """The ``size`` label of a job: its size class, ``other`` for a size this worker does not
    serve, ``unknown`` before the job is decoded."""
    if job is None or classes is None:
        return SIZE_UNKNOWN
    size = classes.size_of(job)
    return format_size(size) if size in classes.sizes else SIZE_OTHER


def observe_job(durations: JobDurations, images: int, size: str) -> None:
    """A succeeded job: its stage seconds (as its result reports them), images and outcome."""
    for stage, seconds in durations.as_dict().items():
        if stage in STAGES:
            STAGE_SECONDS.labels(stage=stage, size=size).observe(seconds)
    count_outcome(Outcome.SUCCEEDED, size)
    IMAGES.labels(size=size).inc(images)
    RATE.add(images)


def count_outcome(outcome: Outcome, size: str = SIZE_UNKNOWN) -> None:
    JOBS.labels(outcome=outcome.value, size=size).inc()


def observe_load(loaded: Any) -> None:
    """Compile seconds and memory of each size class (a worker.render.memory.LoadedSizes)."""
    for load in loaded.loads:
        size = f"{load.size[0]}x{load.size[1]}"
        COMPILE_SECONDS.labels(size=size).set(load.compile_s)
        PIPELINE_MEMORY.labels(size=size).set(load.rss_growth_gib)


class QueueDepthCollector:
    """``lcm_queue_depth{queue}``: messages waiting in every lcm queue, consumed or not, and
    ``lcm_queue_consumers{queue}``: the advertising workers that consume it.

    The queues: this worker's own, every advertised one, the webhook queue, and every queue
    producers have published to (lcm_fleet/served.py), so that a size nobody serves shows
    its depth with 0 consumers.
    """

    def __init__(self, redis_url: str, queues: Iterable[str], **ssl_kwargs: Any) -> None:
        self.redis_url = redis_url
        self.ssl_kwargs = ssl_kwargs
        self.queues = list(queues)
        self._client: Any = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from lcm_fleet.consuming.depth import waiting_in
        from lcm_fleet.contract import QUEUE_WEBHOOKS
        from lcm_fleet.served import known_queues, read_adverts

        depth = GaugeMetricFamily(
            "lcm_queue_depth", "Messages waiting in the queue", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "lcm_queue_consumers",
            "Live workers advertising that they consume the render queue",
            labels=["queue"],
        )
        try:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self.redis_url, socket_timeout=2, **self.ssl_kwargs
                )
            served, _ = read_adverts(self._client)
            render = sorted(
                (set(self.queues) | served.queues() | known_queues(self._client)) - {QUEUE_WEBHOOKS}
            )
            counts = waiting_in(self._client, [*render, QUEUE_WEBHOOKS])
            for queue, count in zip([*render, QUEUE_WEBHOOKS], counts, strict=True):
                depth.add_metric([queue], float(count))
            for queue in render:
                consumers.add_metric([queue], float(len(served.consumers(queue))))
        except Exception as e:  # a scrape must not fail because Redis is briefly away
            logger.warning("queue depth unavailable: %s", e)
        yield depth
        yield consumers


def serve(
    port: int,
    addr: str,
    redis_url: str,
    queues: list[str],
    info: dict[str, str],
    ssl_kwargs: dict[str, Any] | None = None,
) -> None:
    """Serve /metrics from this process (a background thread)."""
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.core import GaugeMetricFamily

    registry = REGISTRY
    registry.register(QueueDepthCollector(redis_url, queues, **(ssl_kwargs or {})))

    class Info:
        def collect(self) -> Iterator[Any]:
            family = GaugeMetricFamily(
                "lcm_worker_info", "What this worker serves", labels=list(info)
            )
            family.add_metric(list(info.values()), 1.0)
            yield family

    registry.register(Info())

    class Cost:
        def collect(self) -> Iterator[Any]:
            cores = GaugeMetricFamily(
                "lcm_worker_cores", "CPU cores this worker may run on (its affinity)"
            )
            cores.add_metric([], float(RATE.cores))
            rate = GaugeMetricFamily(
                "lcm_images_per_core_hour",
                f"Images stored per core-hour over the last {RATE_WINDOW_S:.0f} s, idle included",
            )
            rate.add_metric([], RATE.value())
            yield cores
            yield rate

    registry.register(Cost())
    start_http_server(port, addr=addr, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", addr, port)
