"""bench/bulk: a 10,000-row file through the fleet, and the producer's memory at scale.

Starts the local Redis and S3 (deploy/local/services.py) and ``--workers`` real
``lcm-worker`` processes serving the artifact (default: the reference INT8 artifact), then:

1. **rows**: writes a JSONL file of ``--rows`` rows (the reference domain's captions,
   ``--images`` images each), submits it with a real ``lcm submit-file --output-prefix``
   (its peak RSS taken by ``/usr/bin/time``), and waits for the batch to end. Reported:
   the enqueue rate (rows / the submit process's wall time, both passes included), the
   end-to-end images/s (first submit to the batch's end) and the batch summary. Then it
   checks what is stored: every row's PNGs exactly once under the prefix (one listing),
   nothing else but the result.json files and the manifest, and the manifest complete and
   matching the objects (every image's sha256 read back).
2. **memory**: for each of ``--memory-rows`` (default 10,000 and 100,000) a file of that
   many rows is submitted to a queue no worker consumes (LCM_SERVED_SIZE_CHECK=off) and the
   submit process's peak RSS recorded; then the batch is cancelled and its queue and
   records deleted.

Results: bench/results/bulk-<date>.json and .md, with the machine (CPU flags) and its load
(``os.getloadavg`` before and after: other work on a shared machine slows the render side).
Never a timed assertion.

    python -m bench.bulk.run                                   # 10,000 rows, 2 images each
    python -m bench.bulk.run --rows 200 --memory-rows 1000     # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.pipeline.machine import describe
from bench.services import ROOT, local_services, start_worker
from lcm_fleet.batch_manifest import parse_manifest
from lcm_fleet.keys import batch_manifest_key, image_key, result_key
from lcm_fleet.records import RecordStore
from lcm_fleet.storage import s3_client
from model_build.reference.domain import all_scenes

DEFAULT_ARTIFACT = Path("/work/artifacts/reference-int8")


def write_rows(path: Path, rows: int, images: int) -> None:
    captions = [scene.caption for scene in all_scenes()]
    with open(path, "w", encoding="utf-8") as f:
        for n in range(rows):
            f.write(json.dumps({"prompt": captions[n % len(captions)], "num_images": images}))
            f.write("\n")


def timed_submit(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``lcm submit-file ARGS`` under /usr/bin/time: wall time, peak RSS, its report line."""
    started = time.time()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "peak_rss_kb=%M", sys.executable, "-m", "producer.cli",
         "submit-file", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"lcm submit-file failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak = re.search(r"peak_rss_kb=(\d+)", done.stderr)
    line = next((t for t in done.stderr.splitlines() if t.startswith("submitted ")), "")
    return {
        "started_at": started,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "report": line,
    }


def wait_finished(records: RecordStore, batch_id: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = records.get_batch(batch_id)
        if record is not None and record.finished and record.summary is not None:
            return record
        time.sleep(1.0)
    raise RuntimeError(f"batch {batch_id} did not finish in {timeout_s:.0f}s")


def check_stored(
    s3: Any, bucket: str, prefix: str, batch_id: str, rows: int, images: int
) -> dict[str, Any]:
    """Every row's PNGs exactly once, nothing else, and the manifest matching them."""
    listed: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        listed.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    ids = [f"{batch_id}-{n:06d}" for n in range(1, rows + 1)]
    expected = {image_key("", i, k, prefix) for i in ids for k in range(images)}
    expected |= {result_key("", i, prefix) for i in ids}
    manifest_key = batch_manifest_key("", batch_id, prefix)
    expected.add(manifest_key)
    missing, extra = expected - set(listed), set(listed) - expected
    body = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    lines = list(parse_manifest(body))

    def sha(key: str) -> str:
        return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()

    named = [(image.key, image.sha256, image.bytes) for line in lines for image in line.images]
    with ThreadPoolExecutor(16) as pool:
        digests = list(pool.map(sha, [key for key, _, _ in named]))
    mismatched = [
        key for (key, want, size), got in zip(named, digests, strict=True)
        if got != want or listed.get(key) != size
    ]  # fmt: skip
    return {
        "objects": len(listed),
        "pngs": sum(1 for key in listed if key.endswith(".png")),
        "missing": sorted(missing)[:10],
        "missing_count": len(missing),
        "extra": sorted(extra)[:10],
        "extra_count": len(extra),
        "manifest_key": manifest_key,
        "manifest_bytes": len(body),
        "manifest_rows": len(lines),
        "manifest_rows_are_the_file": [line.row for line in lines] == list(range(1, rows + 1)),
        "manifest_all_succeeded": all(line.state == "succeeded" for line in lines),
        "manifest_images": len(named),
        "manifest_sha256_mismatches": len(mismatched),
        "exactly_once": not missing and not extra and not mismatched and len(lines) == rows,
    }


def purge(records: RecordStore, client: Any, batch_id: str, queue: str, rows: int) -> None:
    """Cancel the batch's queued jobs (their counts move), then delete queue and records."""
    records.cancel_batch(batch_id)
    client.delete(queue, f"{queue}.bulk")
    ids = [f"{batch_id}-{n:06d}" for n in range(1, rows + 1)]
    for start in range(0, len(ids), 5000):
        client.delete(*[f"lcm-fleet:job:{i}" for i in ids[start : start + 5000]])
    client.delete(f"lcm-fleet:batch:{batch_id}", f"lcm-fleet:batch:{batch_id}:jobs")


def markdown(report: dict[str, Any]) -> str:
    run = report["rows_run"]
    machine = report["machine"]
    lines = [
        f"# bench/bulk, {report['date']}",
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('logical_cores')} cores, ISA "
        f"{report['isa']}; load average before {report['load_before']}, after "
        f"{report['load_after']} (other work on the machine slows the render side).",
        f"Artifact: {report['artifact']} ({report['shape']}), {report['workers']} worker(s).",
        "",
        f"## {run['rows']} rows x {run['images_per_row']} images through the fleet",
        "",
        "| figure | value |",
        "|---|---|",
        f"| enqueue rate (rows / submit process wall time, both passes) | "
        f"{run['enqueue_rows_per_s']:.0f} rows/s ({run['submit']['wall_s']:.1f} s) |",
        f"| producer peak RSS | {run['submit']['peak_rss_mib']} MiB |",
        f"| end to end (first submit to batch end) | {run['end_to_end_s']:.0f} s, "
        f"{run['images_per_s']:.2f} images/s |",
        f"| batch summary | {run['summary']['counts']}, {run['summary']['images']} images, "
        f"{run['summary']['images_per_s']} images/s |",
        f"| stored objects | {run['stored']['objects']} ({run['stored']['pngs']} PNGs), "
        f"missing {run['stored']['missing_count']}, extra {run['stored']['extra_count']} |",
        f"| manifest | {run['stored']['manifest_rows']} rows, "
        f"{run['stored']['manifest_images']} images, sha256 mismatches "
        f"{run['stored']['manifest_sha256_mismatches']}, rows in file order "
        f"{run['stored']['manifest_rows_are_the_file']} |",
        f"| every PNG exactly once, manifest matching | {run['stored']['exactly_once']} |",
        "",
        "## Producer memory (enqueue only, no worker)",
        "",
        "| rows | submit wall time | rows/s | peak RSS |",
        "|---|---|---|---|",
    ]
    for m in report["memory"]:
        lines.append(
            f"| {m['rows']} | {m['wall_s']:.1f} s | {m['rows_per_s']:.0f} | "
            f"{m['peak_rss_mib']} MiB |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bulk.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=2, help="images per row")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--memory-rows", default="10000,100000", help="comma-separated; empty: skip"
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench-bulk")
    parser.add_argument("--s3-port", type=int, default=18934)
    parser.add_argument("--redis-url", default=None, help="default LCM_REDIS_URL or db 0")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600)
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact.resolve()
    services = local_services()
    env = services.start(work / "services", s3_port=args.s3_port, redis_url=args.redis_url)
    env = {**env, "PYTHONUNBUFFERED": "1"}
    import redis

    client = redis.Redis.from_url(env["LCM_REDIS_URL"])
    records = RecordStore(client, 7 * 24 * 3600)
    s3 = s3_client(_settings(env), env["LCM_S3_ACCESS_KEY_ID"], env["LCM_S3_SECRET_ACCESS_KEY"])
    bucket = env["LCM_S3_BUCKET"]
    queue = f"lcm.bench.bulk.{uuid.uuid4().hex[:8]}"
    load_before = [round(x, 2) for x in os.getloadavg()]
    workers = []
    try:
        workers = [
            start_worker(artifact, env, queue, work / f"worker-{n}.log")
            for n in range(args.workers)
        ]
        # 1. rows through the fleet
        tag = uuid.uuid4().hex[:8]
        batch = f"bulk-{tag}"
        prefix = f"bench/bulk/{tag}"
        rows_file = work / f"rows-{args.rows}.jsonl"
        write_rows(rows_file, args.rows, args.images)
        submit_env = {**env, "LCM_QUEUE": queue}
        submitted = timed_submit(
            [str(rows_file), "--batch-id", batch, "--output-prefix", prefix], submit_env
        )
        print(f"submitted: {submitted}", flush=True)
        record = wait_finished(records, batch, args.timeout_s)
        end_to_end = max(1e-9, (record.finished_at or time.time()) - submitted["started_at"])
        images = args.rows * args.images
        stored = check_stored(s3, bucket, prefix, batch, args.rows, args.images)
        print(f"stored: {stored}", flush=True)
        rows_run = {
            "rows": args.rows,
            "images_per_row": args.images,
            "batch_id": batch,
            "output_prefix": prefix,
            "submit": submitted,
            "enqueue_rows_per_s": round(args.rows / submitted["wall_s"], 1),
            "end_to_end_s": round(end_to_end, 1),
            "images_per_s": round(images / end_to_end, 3),
            "summary": record.summary.model_dump(mode="json"),
            "stored": stored,
        }
        load_mid = [round(x, 2) for x in os.getloadavg()]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
    # 2. the producer's memory at scale, enqueue only
    memory = []
    idle_queue = f"lcm.bench.bulk-idle.{uuid.uuid4().hex[:8]}"
    for rows in [int(x) for x in args.memory_rows.split(",") if x.strip()]:
        path = work / f"memory-{rows}.jsonl"
        write_rows(path, rows, args.images)
        batch = f"mem-{uuid.uuid4().hex[:8]}"
        idle_env = {**env, "LCM_QUEUE": idle_queue, "LCM_SERVED_SIZE_CHECK": "off"}
        try:
            got = timed_submit([str(path), "--batch-id", batch], idle_env)
        finally:
            purge(records, client, batch, idle_queue, rows)
        memory.append({"rows": rows, "rows_per_s": round(rows / got["wall_s"], 1), **got})
        print(f"memory: {memory[-1]}", flush=True)
    services.stop(work / "services")
    machine = describe()
    flags = machine.get("flags", [])
    report = {
        "benchmark": "bulk",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "isa": " ".join(f for f in ("avx2", "avx512_vnni", "amx_tile") if f in flags),
        "load_before": load_before,
        "load_after_rows": load_mid,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "artifact": str(artifact),
        "shape": json.loads((artifact / "manifest.json").read_text()).get("shape"),
        "workers": args.workers,
        "rows_run": rows_run,
        "memory": memory,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = f"bulk-{args.rows}-{datetime.now():%Y%m%d-%H%M}"
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written: {args.results_dir / name}.json and .md")
    return 0 if rows_run["stored"]["exactly_once"] else 1


def _settings(env: dict[str, str]) -> Any:
    from producer.settings import ProducerSettings

    return ProducerSettings(
        redis_url=env["LCM_REDIS_URL"],
        s3_endpoint_url=env["LCM_S3_ENDPOINT_URL"],
        s3_bucket=env["LCM_S3_BUCKET"],
    )


if __name__ == "__main__":
    sys.exit(main())
