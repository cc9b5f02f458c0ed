"""``lcm``: submit render jobs and fetch their results.

    lcm submit "a lighthouse at dusk" [--seed N --steps N --num-images N ...]
               [--wait] [--download DIR]
    lcm wait JOB_ID [--timeout-s S]
    lcm status JOB_ID
    lcm download JOB_ID DIR

Connection settings come from LCM_* environment variables (LCM_REDIS_URL, LCM_S3_*).
Exit codes: 0 done, 2 invalid input, 1 the job failed, timed out, or the queue is unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from producer.contract import JobResult
from producer.errors import InvalidJob, ProducerError


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
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--num-images", type=int)
    p.add_argument("--job-id", help="your own id (re-submitting it overwrites that job's images)")
    p.add_argument("--queue", help="queue name (default LCM_QUEUE)")
    p.add_argument("--wait", action="store_true", help="wait for the result and print the S3 URIs")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--download", type=Path, metavar="DIR", help="wait, then download the PNGs here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("wait", help="wait for a job's result")
    p.add_argument("job_id")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="print a job's state")
    p.add_argument("job_id")

    p = sub.add_parser("download", help="download a finished job's PNGs")
    p.add_argument("job_id")
    p.add_argument("out", type=Path)
    return parser


def run(args: argparse.Namespace) -> int:
    from producer.api import handle, submit
    from producer.download import download
    from producer.settings import ProducerSettings

    settings = ProducerSettings()
    if args.command == "submit":
        fields: dict[str, Any] = {
            k: v
            for k, v in {
                "seed": args.seed,
                "steps": args.steps,
                "guidance_scale": args.guidance_scale,
                "width": args.width,
                "height": args.height,
                "num_images": args.num_images,
                "job_id": args.job_id,
            }.items()
            if v is not None
        }
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
    if args.command == "wait":
        _print_result(handle(args.job_id, settings).wait(timeout_s=args.timeout_s), args.json)
        return 0
    if args.command == "status":
        print(handle(args.job_id, settings).state)
        return 0
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
    except ProducerError as e:
        print(f"lcm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
