"""``lcm-worker``: verify the artifact and storage, then run a Celery worker.

All settings come from ``LCM_*`` environment variables (see worker/settings.py).
Required: LCM_S3_ACCESS_KEY_ID, LCM_S3_SECRET_ACCESS_KEY, and one of LCM_MODEL_DIR (a folder)
or LCM_MODEL (NAME@VERSION / NAME@latest published with `lcm-build publish`, or a folder).

    lcm-worker            verify, then serve until SIGTERM (the running job finishes first)
    lcm-worker --check    verify the artifact, storage and broker, then exit
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lcm_fleet.broker import warn_if_not_persistent
from lcm_fleet.settings import ENV_PREFIX
from worker.errors import StartupError, WorkerError

if TYPE_CHECKING:
    from worker.consumer.reclaim import Heartbeat
    from worker.render.messages import LoadReport
    from worker.runtime import Runtime
    from worker.settings import WorkerSettings

logger = logging.getLogger("worker")

# Heavy modules (Celery, boto3, the render process) are imported in the stage that needs
# them, so that a settings mistake is reported at once.


def settings_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"])
        env = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        value = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {env}: {msg}{value}")
    return "invalid worker settings:\n" + "\n".join(lines)


@dataclass(frozen=True)
class Invocation:
    #: ``--check``: verify, then exit without serving.
    check: bool


@dataclass(frozen=True)
class Consumer:
    """What stage 7 starts beside Celery: this worker's name and the heartbeat of its holdings."""

    name: str
    heartbeat: Heartbeat


def parse_args(argv: list[str] | None) -> Invocation:
    parser = argparse.ArgumentParser(
        prog="lcm-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="verify and exit")
    return Invocation(check=parser.parse_args(argv).check)


def read_settings() -> WorkerSettings:
    from worker.settings import WorkerSettings

    try:
        settings = WorkerSettings()  # type: ignore[call-arg]
    except ValidationError as e:
        raise StartupError(settings_error(e)) from e
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


def open_model(settings: WorkerSettings) -> Runtime:
    """The model (pulled if needed; manifest, versions, gate, shape), installed as the runtime."""
    from worker import runtime
    from worker.model import source

    return runtime.install(settings, source.open_model(settings))


def stop_serving(rt: Runtime) -> Callable[[str], None]:
    """What a render process that cannot be started again does: stop serving (running jobs
    finish first, main returns 3); lcm-fleet starts the worker again."""

    def on_fatal(message: str) -> None:
        rt.fatal = message
        os.kill(os.getpid(), signal.SIGTERM)

    return on_fatal


def verify(rt: Runtime, *, compile: bool) -> None:
    """The memory estimate, the artifact's file hashes and the bucket. With ``compile``, the
    render process compiles meanwhile; nothing is served before every check is done."""
    from worker.model.source import verify_model
    from worker.results.storage import check_bucket, result_store

    rt.check_estimate()
    if compile:
        rt.launch_rendering(stop_serving(rt))
    verify_model(rt.settings, rt.model)
    check_bucket(result_store(rt.settings))


def configure_celery(settings: WorkerSettings) -> Any:
    from worker.consumer import broker_guard
    from worker.consumer.app import configure

    app = configure(settings)
    broker_guard.install(settings.redis_url)
    return app


def check_broker(app: Any, rt: Runtime) -> str:
    """--check: the broker answers; the line that says what was verified."""
    from worker.render.sizes import format_sizes

    settings = rt.settings
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as e:
        raise StartupError(f"broker {settings.redis_url} unreachable: {e}") from e
    return (
        f"ok: {rt.model.path} (sizes {format_sizes(rt.sizes)}), "
        f"bucket {settings.s3_bucket}, "
        f"broker {settings.redis_url}"
    )


def serve_metrics(rt: Runtime) -> None:
    from worker import metrics
    from worker.render.sizes import format_size, format_sizes

    settings = rt.settings
    if not settings.metrics_port:
        return
    try:
        metrics.serve(
            settings.metrics_port,
            settings.metrics_addr,
            settings.redis_url,
            rt.queues,
            {
                "unit": settings.unit,
                "device": settings.device,
                "model_manifest_sha256": rt.model.manifest.sha256,
                "shape": format_size(rt.sizes[0]),
                "sizes": format_sizes(rt.sizes),
            },
        )
    except OSError as e:
        raise StartupError(
            f"cannot serve metrics on {settings.metrics_addr}:{settings.metrics_port}: {e}; "
            "set LCM_METRICS_PORT to a free port, or 0"
        ) from e


def wait_for_render_processes(rt: Runtime) -> list[LoadReport]:
    from worker import metrics

    reports = rt.render_slots().wait_ready()
    for report in reports:
        metrics.observe_load(report)
    return reports


def start_consumer(app: Any, rt: Runtime) -> Consumer:
    """Record the messages this worker holds and beat its heartbeat; give back the messages
    of workers whose heartbeat expired (worker/consumer/reclaim.py)."""
    from worker.consumer import reclaim

    name = f"lcm-worker-{rt.settings.unit}@{socket.gethostname()}"
    holdings = reclaim.Holdings(rt.redis(), name, rt.settings.heartbeat_ttl_s)
    reclaim.install(holdings)
    heartbeat = reclaim.Heartbeat(holdings, reclaim.kombu_restore(app))
    heartbeat.start()
    return Consumer(name, heartbeat)


def run_celery(app: Any, rt: Runtime, consumer: Consumer) -> None:
    """Serve until SIGTERM (Celery's warm shutdown lets running jobs finish)."""
    settings = rt.settings
    try:
        app.worker_main(
            [
                "worker",
                # Threads: two jobs in flight per render process (worker/render/process.py).
                "--pool=threads",
                f"--concurrency={rt.threads}",
                f"--loglevel={settings.log_level}",
                f"--queues={','.join(rt.queues)}",
                f"--hostname={consumer.name}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        consumer.heartbeat.stop()
        rt.stop()


def main(argv: list[str] | None = None) -> int:
    invocation = parse_args(argv)
    rt: Runtime | None = None
    try:
        # 1. settings, from LCM_* (and logging at their level)
        settings = read_settings()
        warn_if_not_persistent(settings.redis_url, "lcm-worker")
        # 2. open the model: pulled if needed; manifest, versions, quality gate, shape
        rt = open_model(settings)
        # 3. verify the artifact's files and the bucket; serving, the render process
        #    compiles meanwhile
        verify(rt, compile=not invocation.check)
        # 4. the Celery app, with the guard against malformed queue items
        app = configure_celery(settings)
        if invocation.check:
            # 5. --check: the broker answers; report and exit
            print(check_broker(app, rt))
            return 0
        # 5. metrics endpoint
        serve_metrics(rt)
        # 6. wait until the render processes have compiled their pipelines
        wait_for_render_processes(rt)
    except WorkerError as e:
        if rt is not None:
            rt.abort()  # the render processes served nothing; do not wait for them
        print(f"lcm-worker: {e}", file=sys.stderr)
        return 2
    # 7. record holdings, heartbeat, give back dead workers' jobs
    consumer = start_consumer(app, rt)
    # 8. serve until SIGTERM
    run_celery(app, rt, consumer)
    if rt.fatal:
        print(f"lcm-worker: stopped: {rt.fatal}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
