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

from pydantic import ValidationError

from lcm_fleet.settings import ENV_PREFIX
from worker.errors import WorkerError

logger = logging.getLogger("worker")


def settings_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"])
        env = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        value = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {env}: {msg}{value}")
    return "invalid worker settings:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lcm-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="verify and exit")
    args = parser.parse_args(argv)

    from worker.settings import WorkerSettings

    try:
        settings = WorkerSettings()  # type: ignore[call-arg]
    except ValidationError as e:
        print(f"lcm-worker: {settings_error(e)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from worker import runtime
    from worker.consumer import broker_guard
    from worker.consumer.app import configure
    from worker.model.source import open_model, verify_model
    from worker.render.sizes import format_size, format_sizes
    from worker.results.storage import check_bucket, result_store

    try:
        model = open_model(settings)  # pulled if needed; manifest, versions, gate, shape
    except WorkerError as e:
        print(f"lcm-worker: {e}", file=sys.stderr)
        return 2
    rt = runtime.install(settings, model)

    def on_fatal(message: str) -> None:
        # A render process that cannot be started again: stop serving (running jobs
        # finish first); lcm-fleet starts the worker again.
        rt.fatal = message
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        rt.check_estimate()
        if not args.check:
            # The render process compiles while this process hashes the artifact's files and
            # checks storage and the broker; nothing is served before all of them are done.
            rt.launch_rendering(on_fatal)
        verify_model(settings, model)
        check_bucket(result_store(settings))
    except WorkerError as e:
        rt.abort()
        print(f"lcm-worker: {e}", file=sys.stderr)
        return 2
    app = configure(settings)
    broker_guard.install(settings.redis_url)
    if args.check:
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as e:
            print(f"lcm-worker: broker {settings.redis_url} unreachable: {e}", file=sys.stderr)
            return 2
        print(
            f"ok: {model.path} (sizes {format_sizes(rt.sizes)}), "
            f"bucket {settings.s3_bucket}, "
            f"broker {settings.redis_url}"
        )
        return 0
    if settings.metrics_port:
        from worker import metrics

        try:
            metrics.serve(
                settings.metrics_port,
                settings.metrics_addr,
                settings.redis_url,
                rt.queues,
                {
                    "unit": settings.unit,
                    "device": settings.device,
                    "model_manifest_sha256": model.manifest.sha256,
                    "shape": format_size(rt.sizes[0]),
                    "sizes": format_sizes(rt.sizes),
                },
            )
        except OSError as e:
            rt.abort()
            print(
                f"lcm-worker: cannot serve metrics on {settings.metrics_addr}:"
                f"{settings.metrics_port}: {e}; set LCM_METRICS_PORT to a free port, or 0",
                file=sys.stderr,
            )
            return 2

    try:
        reports = rt.render_slots().wait_ready()
    except WorkerError as e:
        print(f"lcm-worker: {e}", file=sys.stderr)
        return 2
    from worker import metrics

    for report in reports:
        metrics.observe_load(report)
    from worker.consumer import reclaim

    name = f"lcm-worker-{settings.unit}@{socket.gethostname()}"
    holdings = reclaim.Holdings(rt.redis(), name, settings.heartbeat_ttl_s)
    reclaim.install(holdings)
    heartbeat = reclaim.Heartbeat(holdings, reclaim.kombu_restore(app))
    heartbeat.start()
    try:
        app.worker_main(
            [
                "worker",
                # Threads: two jobs in flight per render process (worker/render/process.py).
                "--pool=threads",
                f"--concurrency={rt.threads}",
                f"--loglevel={settings.log_level}",
                f"--queues={','.join(rt.queues)}",
                f"--hostname={name}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        heartbeat.stop()
        rt.stop()
    if rt.fatal:
        print(f"lcm-worker: stopped: {rt.fatal}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
