"""``lcm``: submit render jobs and fetch their results.

    lcm submit "a lighthouse at dusk" [--seed N --steps N --num-images N ...]
               [--wait] [--download DIR]
    lcm submit-file prompts.jsonl|prompts.csv [--steps N ... (defaults for every row)]
               [--batch-id ID] [--output-prefix PREFIX] [--skip-invalid] [--from-line N]
               [--ids-out FILE] [--wait] [--download DIR]   (the same file again resumes it)
    lcm wait JOB_ID [--timeout-s S]
    lcm status JOB_ID [--json]       lcm watch JOB_ID       lcm cancel JOB_ID
    lcm download JOB_ID DIR
    lcm batch status|watch|cancel BATCH_ID      lcm batch download BATCH_ID DIR
    lcm batch manifest BATCH_ID [--write]       the batch's output manifest (JSONL)
    lcm dead-letter list|show ID|purge --yes    queue items the workers refused
    lcm schedule add|list|show|validate|apply|pause|resume|remove|run-now   scheduled runs

Connection settings come from LCM_* environment variables (LCM_REDIS_URL, LCM_S3_*).
Exit codes: 0 done, 2 invalid input (nothing submitted), 1 a job failed, timed out, or the
queue is unreachable (submit-file: the jobs queued before are listed, with the line to
resume from). Redis away: reads and waits retry within their deadline, then one line names
the (masked) Redis address and what to resume; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lcm_fleet.broker import BrokerUnavailable, unreachable, warn_if_not_persistent
from lcm_fleet.contract import (
    GUIDANCE_MAX,
    GUIDANCE_MIN,
    IMAGES_MAX,
    IMAGES_MIN,
    SEED_MAX,
    SIZE_MAX,
    SIZE_MIN,
    SIZE_MULTIPLE,
    STEPS_MAX,
    STEPS_MIN,
    JobResult,
    quote,
)
from lcm_fleet.errors import InvalidJob
from producer import deadletter
from producer.errors import ProducerError
from producer.schedules import cli as schedules_cli
from producer.settings import ProducerSettings


def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError

    from lcm_fleet.broker import REDIS_TRANSIENT

    return (*REDIS_TRANSIENT, OperationalError)


_BROKER_DOWN = _broker_errors()


def _print_result(result: JobResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    for image in result.images:
        print(f"{image.uri}  seed={image.seed}")
    d = result.durations_s
    stages = " ".join(f"{k}={v:.3f}s" for k, v in d.items())
    print(
        f"job {result.job_id}: {len(result.images)} image(s) "
        f"{result.width}x{result.height} | {stages}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="submit one job")
    p.add_argument("prompt")
    _add_job_fields(p)
    p.add_argument("--job-id", help="your own id (re-submitting it overwrites that job's images)")
    p.add_argument(
        "--queue", help="queue name (default LCM_QUEUE, or the job's size class); interactive"
    )
    p.add_argument("--wait", action="store_true", help="wait for the result and print the S3 URIs")
    p.add_argument("--timeout-s", type=_SECONDS, default=600.0)
    p.add_argument("--download", type=Path, metavar="DIR", help="wait, then download the PNGs here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "submit-file",
        help="submit every row of a JSONL or CSV file (checked whole before anything is queued)",
    )
    p.add_argument("file", type=Path, help="*.jsonl (one JSON object per line) or *.csv (header)")
    p.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file's suffix")
    _add_job_fields(p, defaults=True)
    p.add_argument(
        "--batch-id",
        help="rows without job_id get BATCH_ID-<line> (default: a digest of the file, so "
        "resubmitting the same file resumes the same batch: only rows not stored and "
        "verified, and not queued or running, are queued)",
    )
    p.add_argument(
        "--output-prefix",
        metavar="PREFIX",
        help="store the batch's images and manifest under PREFIX/ (below LCM_S3_PREFIX) "
        "instead of jobs/<job_id>/ and batches/<batch_id>/",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="submit the valid rows and list the invalid ones (default: submit nothing)",
    )
    p.add_argument(
        "--from-line", type=_LINE, default=1, metavar="N", help="skip rows before line N (resume)"
    )
    p.add_argument(
        "--queue",
        help="queue name (default LCM_QUEUE, or the row's size class); bulk jobs go to its "
        "bulk queue, QUEUE.bulk",
    )
    p.add_argument(
        "--ids-out", type=Path, metavar="FILE", help="write line, job_id, seed per job (JSONL)"
    )
    p.add_argument("--wait", action="store_true", help="wait for every job; exit 1 if any failed")
    p.add_argument("--timeout-s", type=_SECONDS, default=3600.0, help="for the whole batch")
    p.add_argument("--download", type=Path, metavar="DIR", help="wait, then download the PNGs here")

    p = sub.add_parser("wait", help="wait for a job's result")
    p.add_argument("job_id")
    p.add_argument("--timeout-s", type=_SECONDS, default=600.0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="print a job's state and progress")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")

    p = sub.add_parser("watch", help="show a job's progress until it ends")
    p.add_argument("job_id")
    p.add_argument("--timeout-s", type=_SECONDS, default=600.0)

    p = sub.add_parser("cancel", help="cancel a job (a running one stops at its next step)")
    p.add_argument("job_id")

    p = sub.add_parser("batch", help="a batch's counts, progress, cancel or images")
    p.add_argument("action", choices=("status", "watch", "cancel", "download", "manifest"))
    p.add_argument("batch_id")
    p.add_argument("out", type=Path, nargs="?", help="download: the folder for the PNGs")
    p.add_argument("--timeout-s", type=_SECONDS, default=3600.0, help="watch: give up after")
    p.add_argument("--json", action="store_true", help="status: print the record as JSON")
    p.add_argument(
        "--write",
        action="store_true",
        help="manifest: build it from the records and write it again (else print the stored one)",
    )

    p = sub.add_parser("download", help="download a finished job's PNGs")
    p.add_argument("job_id")
    p.add_argument("out", type=Path)
    deadletter.add_parser(sub)
    schedules_cli.add_parser(sub)
    return parser


def _number(kind: type[int] | type[float], low: float, high: float, hint: str = "") -> Any:
    """An argparse type: ``kind`` within ``low..high``; its error carries the range (argparse
    prefixes the option: ``argument --seed: 1.5 is not an integer in 0..4294967295``)."""
    noun = "an integer" if kind is int else "a number"
    span = f"{low:g}..{high:g}" if kind is float else f"{int(low)}..{int(high)}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{quote(text)} is not {noun} in {span}{hint}")
        return value

    return parse


_SIZE_HINT = f" (a multiple of {SIZE_MULTIPLE})"
_JOB_FIELDS = (
    ("seed", _number(int, 0, SEED_MAX)),
    ("steps", _number(int, STEPS_MIN, STEPS_MAX)),
    ("guidance_scale", _number(float, GUIDANCE_MIN, GUIDANCE_MAX)),
    ("width", _number(int, SIZE_MIN, SIZE_MAX, _SIZE_HINT)),
    ("height", _number(int, SIZE_MIN, SIZE_MAX, _SIZE_HINT)),
    ("num_images", _number(int, IMAGES_MIN, IMAGES_MAX)),
)
#: --timeout-s: seconds, up to a week; --from-line: a line number.
_SECONDS = _number(float, 0, 7 * 24 * 3600)
_LINE = _number(int, 1, 10**9)


def _add_job_fields(p: argparse.ArgumentParser, defaults: bool = False) -> None:
    for name, kind in _JOB_FIELDS:
        help_text = "for rows that do not give it" if defaults else None
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)


def _job_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {name: getattr(args, name) for name, _ in _JOB_FIELDS}
    return {k: v for k, v in fields.items() if v is not None}


def _submit_file(args: argparse.Namespace, settings: ProducerSettings) -> int:
    from producer.bulk import (
        BulkSubmitError,
        check_jobs_file,
        check_sizes,
        iter_rows,
        submit_stream,
    )

    if args.from_line < 1:
        raise InvalidJob(f"--from-line got {args.from_line}; give a line number from 1")
    checked = check_jobs_file(
        args.file,
        fmt=args.format,
        defaults=_job_fields(args),
        batch_id=args.batch_id,
        skip_invalid=args.skip_invalid,
        output_prefix=args.output_prefix,
    )
    for reject in checked.rejected:
        print(f"lcm: skipped line {reject.line}: {reject.reason}", file=sys.stderr)
    check_sizes(checked, settings, args.queue)
    ids_out = open(args.ids_out, "w") if args.ids_out else None  # noqa: SIM115
    batch_id = checked.batch_id

    def record(row: Any, outcome: Any, made: Any) -> None:
        if ids_out is not None:  # before stdout: a reader of stdout finds the line written
            entry = {
                "line": row.line,
                "job_id": row.job.job_id,
                "seed": row.job.seed,
                "outcome": outcome.value,
            }
            ids_out.write(json.dumps(entry) + "\n")
            ids_out.flush()
        print(row.job.job_id)

    try:
        report = submit_stream(
            iter_rows(checked, args.from_line),
            settings,
            queue=args.queue,
            on_row=record,
            batch_id=batch_id,
            source=str(args.file),
            output_prefix=checked.output_prefix,
        )
    except BulkSubmitError as e:
        print(
            f"lcm: {e}. Batch {batch_id}: resume with `lcm submit-file {args.file}"
            + (f" --batch-id {args.batch_id}" if args.batch_id else "")
            + (f" --output-prefix {checked.output_prefix}" if checked.output_prefix else "")
            + f"` (rows queued or stored are not queued again), follow it with `lcm batch "
            f"status {batch_id}`",
            file=sys.stderr,
        )
        return 1
    finally:
        if ids_out is not None:
            ids_out.close()
    print(
        f"submitted {report.queued} job(s) from {args.file} (batch {batch_id}"
        + (", resumed" if report.resumed else "")
        + (f"; {report.stored} row(s) already stored" if report.stored else "")
        + (f"; {report.in_flight} row(s) already queued or running" if report.in_flight else "")
        + (f"; {len(checked.rejected)} invalid row(s) skipped" if checked.rejected else "")
        + (f"; lines before {args.from_line} skipped" if args.from_line > 1 else "")
        + f"; {report.rows / max(report.elapsed_s, 1e-9):.0f} rows/s)",
        file=sys.stderr,
    )
    if not (args.wait or args.download):
        return 0
    from producer import watch

    return watch.wait_and_report(batch_id, args.timeout_s, args.download, settings, report.rows)


#: ``lcm submit`` says that the broker has no persistence at most once an hour per broker.
PERSISTENCE_WARNING_QUIET_S = 3600


def run(args: argparse.Namespace) -> int:
    from producer.api import handle, submit
    from producer.download import download
    from producer.settings import ProducerSettings

    settings = ProducerSettings()
    if args.command in ("submit", "submit-file"):
        warn_if_not_persistent(settings, "lcm", quiet_for_s=PERSISTENCE_WARNING_QUIET_S)
    if args.command == "submit":
        fields = _job_fields(args)
        if args.job_id is not None:
            fields["job_id"] = args.job_id
        h = submit(args.prompt, settings=settings, queue=args.queue, **fields)
        assert h.job is not None
        print(f"submitted job {h.job_id} (seed {h.job.seed})", file=sys.stderr)
        if not (args.wait or args.download):
            print(h.job_id)
            return 0
        result = h.wait(timeout_s=args.timeout_s)
        _print_result(result, args.json)
        if args.download:
            for path in download(h.job_id, args.download, settings):
                print(f"saved {path}", file=sys.stderr)
        return 0
    if args.command == "submit-file":
        return _submit_file(args, settings)
    if args.command == "wait":
        _print_result(handle(args.job_id, settings).wait(timeout_s=args.timeout_s), args.json)
        return 0
    if args.command in ("status", "watch", "cancel", "batch"):
        from producer import watch

        return watch.run(args, settings)
    if args.command == "dead-letter":
        return deadletter.run(args, settings)
    if args.command == "schedule":
        return schedules_cli.run(args, settings)
    if args.command == "download":
        for path in download(args.job_id, args.out, settings):
            print(path)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except InvalidJob as e:
        print(f"lcm: {e}", file=sys.stderr)
        return 2
    except (ProducerError, BrokerUnavailable) as e:
        print(f"lcm: {e}", file=sys.stderr)
        return 1
    except _BROKER_DOWN as e:
        print(f"lcm: {unreachable(_redis_url(), e)}", file=sys.stderr)
        return 1


def _redis_url() -> str:
    try:
        return ProducerSettings().redis_url
    except Exception:
        return "(LCM_REDIS_URL)"


if __name__ == "__main__":
    sys.exit(main())
