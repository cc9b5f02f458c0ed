"""``lcm-worker``: verify the artifact and storage, then run a Celery worker.

All settings come from ``LCM_*`` environment variables (see worker/settings.py).
Required: LCM_S3_ACCESS_KEY_ID, LCM_S3_SECRET_ACCESS_KEY, and one of LCM_MODEL_DIR (a folder)
or LCM_MODEL (NAME@VERSION / NAME@latest published with `lcm-build publish`, or a folder).

    lcm-worker            verify, then serve until SIGTERM (the running job finishes first)
    lcm-worker --check    verify the artifact, storage and broker, then exit

Exit codes (worker/exit_codes.py): 0 stopped by SIGTERM (or --check passed); 1 Celery stopped
on an unrecoverable error; 2 settings, artifact or bucket refused; 3 a render process could not
be started again; 4 Redis unreachable at start (within LCM_BROKER_CONNECT_TIMEOUT_S).
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
from lcm_fleet.settings import masked_url, settings_problems
from worker.errors import StartupError, WorkerError
from worker.exit_codes import ExitCode

if TYPE_CHECKING:
    from worker.consumer.reclaim import Heartbeat
    from worker.render.messages import LoadReport
    from worker.runtime import Runtime
    from worker.settings import WorkerSettings

logger = logging.getLogger("worker")

# Heavy modules (Celery, boto3, the render process) are imported in the stage that needs
# them, so that a settings mistake is reported at once.


def settings_error(e: ValidationError) -> str:
    lines = [f"  {line}" for line in settings_problems(e)]
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


class BrokerUnreachable(StartupError):
    """Redis did not answer at start within LCM_BROKER_CONNECT_TIMEOUT_S."""


def wait_for_broker(settings: WorkerSettings, *, clock: Callable[[], float] | None = None) -> None:
    """Ping Redis until it answers, for at most LCM_BROKER_CONNECT_TIMEOUT_S (capped,
    jittered backoff between attempts); before anything is compiled or served."""
    import time

    import redis

    from lcm_fleet.backoff import Backoff

    timeout_s = settings.broker_connect_timeout_s
    now = clock or time.monotonic
    deadline = now() + timeout_s
    backoff = Backoff(base_s=0.25, cap_s=5.0, attempts=1)
    attempt = 0
    while True:
        left = deadline - now()
        per_try = max(0.1, min(5.0, left))
        client = settings.redis_client(socket_connect_timeout=per_try, socket_timeout=per_try)
        try:
            client.ping()
            return
        except (redis.RedisError, OSError) as e:
            error = e
        finally:
            client.close()
        left = deadline - now()
        if left <= 0:
            break
        wait = min(left, backoff.delay(attempt))
        attempt += 1
        logger.warning(
            "broker %s does not answer (%s); trying again in %.1fs",
            masked_url(settings.redis_url),
            error,
            wait,
        )
        time.sleep(wait)
    raise BrokerUnreachable(
        f"cannot reach the broker at {masked_url(settings.redis_url)} within "
        f"{timeout_s:g}s (LCM_BROKER_CONNECT_TIMEOUT_S): {error}; check LCM_REDIS_URL and "
        "that Redis is running"
    ) from error


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


def worker_name(settings: WorkerSettings) -> str:
    return f"lcm-worker-{settings.unit}@{socket.gethostname()}"


def configure_celery(settings: WorkerSettings) -> Any:
    """The Celery app, with the guard against malformed queue items (broker_guard.py)."""
    from worker.consumer.app import configure

    return configure(settings, worker_name(settings))


def check_broker(app: Any, rt: Runtime) -> str:
    """--check: the broker answers; the line that says what was verified."""
    from worker.render.sizes import format_sizes

    settings = rt.settings
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as e:
        raise BrokerUnreachable(f"broker {masked_url(settings.redis_url)} unreachable: {e}") from e
    return (
        f"ok: {rt.model.path} (sizes {format_sizes(rt.sizes)}), "
        f"bucket {settings.s3_bucket}, "
        f"broker {masked_url(settings.redis_url)}"
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
            settings.redis_ssl_kwargs(),
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
    from worker.consumer import advert, reclaim

    name = worker_name(rt.settings)
    holdings = reclaim.Holdings(rt.redis(), name, rt.settings.heartbeat_ttl_s)
    reclaim.install(holdings)
    served = advert.for_runtime(rt, rt.redis(), holdings.incarnation, name)
    heartbeat = reclaim.Heartbeat(holdings, reclaim.kombu_restore(app), served)
    heartbeat.start()
    return Consumer(name, heartbeat)


def run_celery(app: Any, rt: Runtime, consumer: Consumer) -> int:
    """Serve until SIGTERM (Celery's warm shutdown lets running jobs finish); Celery's exit
    code: 0 after SIGTERM, 1 after an unrecoverable error."""
    settings = rt.settings
    try:
        # app.Worker, as `celery worker` builds it: app.worker_main and app.start drop the
        # worker's exit code.
        worker = app.Worker(
            # Threads: two jobs in flight per render process (worker/render/process.py).
            pool_cls="threads",
            concurrency=rt.threads,
            loglevel=settings.log_level,
            queues=list(rt.queues),
            hostname=consumer.name,
            without_gossip=True,
            without_mingle=True,
        )
        worker.start()
        code = worker.exitcode
    finally:
        consumer.heartbeat.stop()
        rt.stop()
    return 0 if code is None else int(code)


def main(argv: list[str] | None = None) -> int:
    invocation = parse_args(argv)
    rt: Runtime | None = None
    try:
        # 1. settings, from LCM_* (and logging at their level)
        settings = read_settings()
        # 2. the broker answers (within LCM_BROKER_CONNECT_TIMEOUT_S), before anything is
        #    compiled or served
        wait_for_broker(settings)
        warn_if_not_persistent(settings, "lcm-worker")
        # 3. open the model: pulled if needed; manifest, versions, quality gate, shape
        rt = open_model(settings)
        # 4. verify the artifact's files and the bucket; serving, the render process
        #    compiles meanwhile
        verify(rt, compile=not invocation.check)
        # 5. the Celery app, with the guard against malformed queue items
        app = configure_celery(settings)
        if invocation.check:
            # 6. --check: the broker answers; report and exit
            print(check_broker(app, rt))
            return ExitCode.OK
        # 6. metrics endpoint
        serve_metrics(rt)
        # 7. wait until the render processes have compiled their pipelines
        wait_for_render_processes(rt)
        logger.info(
            "lcm-worker %s ready: %s, %s, sizes %s",
            settings.unit,
            rt.model.path,
            rt.describe_rendering(),
            ", ".join(f"{w}x{h}" for w, h in rt.sizes),
        )
    except BrokerUnreachable as e:
        print(f"lcm-worker: {e}", file=sys.stderr)
        return ExitCode.BROKER
    except WorkerError as e:
        if rt is not None:
            rt.abort()  # the render processes served nothing; do not wait for them
        print(f"lcm-worker: {e}", file=sys.stderr)
        return ExitCode.CONFIG
    # 8. record holdings, heartbeat, give back dead workers' jobs
    consumer = start_consumer(app, rt)
    # 9. serve until SIGTERM
    code = run_celery(app, rt, consumer)
    if rt.fatal:
        print(f"lcm-worker: stopped: {rt.fatal}", file=sys.stderr)
        return ExitCode.RENDERER
    if code != 0:
        print(
            f"lcm-worker: Celery stopped with exit code {code} (its 'Unrecoverable error' "
            "line above says why)",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
