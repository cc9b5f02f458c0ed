"""Batches at scale: output prefix, the output manifest, and resuming a file as its batch.

Real `lcm submit-file` processes (one killed part-way), the real worker, real Redis and S3.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from lcm_fleet.batch_manifest import ManifestLine, parse_manifest
from lcm_fleet.keys import batch_manifest_key, image_key, result_key
from lcm_fleet.records import JobRecord, RecordStore
from tests.integration.conftest import ROOT, run_cli


def _env(service_env: dict[str, str], producer_settings: Any) -> dict[str, str]:
    return {**service_env, "LCM_QUEUE": producer_settings.queue, "PYTHONUNBUFFERED": "1"}


def _records(service_env: dict[str, str]) -> RecordStore:
    return RecordStore(redis.Redis.from_url(service_env["LCM_REDIS_URL"]), 3600)


def _keys_under(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return keys


def _sha256(s3: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _manifest(s3: Any, bucket: str, key: str) -> list[ManifestLine]:
    return list(parse_manifest(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def _assert_manifest_matches_objects(
    s3: Any, bucket: str, lines: list[ManifestLine], rows: list[int]
) -> None:
    assert [line.row for line in lines] == rows
    for line in lines:
        assert line.state == "succeeded", line
        assert line.images and line.result_key
        for image in line.images:
            assert _sha256(s3, bucket, image.key) == image.sha256, image.key


def _outcomes(path: Path) -> dict[int, str]:
    entries = [json.loads(text) for text in path.read_text().splitlines()]
    return {e["line"]: e["outcome"] for e in entries}


def test_an_output_prefix_holds_the_images_and_the_manifest_and_wait_prints_the_summary(
    worker, service_env, producer_settings, s3, tmp_path
):
    bucket = producer_settings.s3_bucket
    prefix = f"catalogue/{uuid.uuid4().hex[:8]}"
    f = tmp_path / "rows.csv"
    f.write_text("prompt,num_images\na red cube,2\n\na blue ball,\na green cone,1\n")
    batch = f"pfx-{uuid.uuid4().hex[:8]}"
    done = run_cli(
        "producer.cli", "submit-file", str(f), "--batch-id", batch, "--output-prefix",
        prefix + "/", "--steps", "1", "--wait", "--timeout-s", "180",
        env=_env(service_env, producer_settings), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 succeeded (4 image(s)), 0 failed, 0 unfinished" in done.stderr
    assert f"manifest {prefix}/manifest.jsonl" in done.stderr and "images/s" in done.stderr
    ids = [f"{batch}-{line:06d}" for line in (2, 4, 5)]
    stored = _keys_under(s3, bucket, prefix + "/")
    expected = {result_key("", i, prefix) for i in ids} | {f"{prefix}/manifest.jsonl"}
    expected |= {image_key("", ids[0], 1, prefix)} | {image_key("", i, 0, prefix) for i in ids}
    assert set(stored) == expected
    assert not _keys_under(s3, bucket, f"jobs/{batch}-")  # nothing in the default layout
    lines = _manifest(s3, bucket, batch_manifest_key("", batch, prefix))
    _assert_manifest_matches_objects(s3, bucket, lines, [2, 4, 5])
    assert [line.job_id for line in lines] == ids
    assert [len(line.images) for line in lines] == [2, 1, 1]
    assert all(line.seed is not None and line.durations_s["total"] > 0 for line in lines)
    record = _records(service_env).get_batch(batch)
    assert record is not None and record.output_prefix == prefix
    assert record.summary is not None and record.summary.images == 4
    assert record.summary.counts.succeeded == 3 and record.summary.images_per_s > 0
    shown = run_cli("producer.cli", "batch", "status", batch, env=service_env)
    assert "summary: 3 row(s): 3 succeeded (4 image(s))" in shown.stdout
    printed = run_cli("producer.cli", "batch", "manifest", batch, env=service_env)
    assert [json.loads(t)["row"] for t in printed.stdout.splitlines()] == [2, 4, 5]
    # The job's own download finds its objects under the prefix.
    got = run_cli("producer.cli", "download", ids[0], str(tmp_path / "dl"), env=service_env)
    assert len(got.stdout.split()) == 2


def test_a_killed_producer_resumes_every_row_exactly_once_and_a_deleted_png_renders_again(
    worker, service_env, producer_settings, s3, tmp_path
):
    bucket = producer_settings.s3_bucket
    rows = 240
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(f'{{"prompt": "row {n}", "steps": 1}}\n' for n in range(1, rows + 1)))
    batch = f"resume-{uuid.uuid4().hex[:8]}"
    env = _env(service_env, producer_settings)
    args = [sys.executable, "-m", "producer.cli", "submit-file", str(f), "--batch-id", batch]
    first = tmp_path / "ids1.jsonl"
    proc = subprocess.Popen(
        [*args, "--ids-out", str(first)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(30):  # the producer is killed once 30 rows are queued
        assert proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    queued_first = _outcomes(first)
    assert 30 <= len(queued_first) < rows, "the producer was not killed part-way"
    assert set(queued_first.values()) == {"queued"}

    resumed_at = time.time()
    second = tmp_path / "ids2.jsonl"
    done = run_cli(
        "producer.cli", "submit-file", str(f), "--batch-id", batch, "--ids-out", str(second),
        "--wait", "--timeout-s", "300", env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{rows} succeeded ({rows} image(s)), 0 failed, 0 unfinished" in done.stderr
    again = _outcomes(second)
    assert sorted(again) == list(range(1, rows + 1))  # no row lost
    records = _records(service_env)
    jobs: list[JobRecord | None] = records.get_jobs(
        [f"{batch}-{n:06d}" for n in range(1, rows + 1)]
    )
    for line, job in zip(range(1, rows + 1), jobs, strict=True):
        assert job is not None and job.state == "succeeded" and job.row == line
        # A row queued by the killed producer was not queued again (its record would be
        # newer), and a row the resume queued had not been queued before.
        assert (job.created_at >= resumed_at) == (again[line] == "queued"), (line, again[line])
    assert all(again[line] != "queued" for line in queued_first)
    stored = _keys_under(s3, bucket, f"jobs/{batch}-")
    assert len(stored) == 2 * rows  # one PNG and one result.json per row, nothing else
    manifest_key = batch_manifest_key("", batch)
    lines = _manifest(s3, bucket, manifest_key)
    _assert_manifest_matches_objects(s3, bucket, lines, list(range(1, rows + 1)))
    record = records.get_batch(batch)
    assert record is not None and record.total == rows and record.counts.succeeded == rows
    assert record.summary is not None and record.summary.rows == rows
    written = record.summary.written_at

    # A PNG lost from S3: resubmitting renders that row only, and the manifest is rewritten.
    lost = image_key("", f"{batch}-000007", 0)
    s3.delete_object(Bucket=bucket, Key=lost)
    third = tmp_path / "ids3.jsonl"
    done = run_cli(
        "producer.cli", "submit-file", str(f), "--batch-id", batch, "--ids-out", str(third),
        "--wait", "--timeout-s", "300", env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "submitted 1 job(s)" in done.stderr and f"{rows - 1} row(s) already stored" in done.stderr
    )
    outcomes = _outcomes(third)
    assert outcomes[7] == "queued" and {outcomes[n] for n in outcomes if n != 7} == {"stored"}
    record = records.get_batch(batch)
    assert record is not None and record.summary is not None
    assert record.summary.written_at > written and record.counts.succeeded == rows
    lines = _manifest(s3, bucket, manifest_key)
    _assert_manifest_matches_objects(s3, bucket, lines, list(range(1, rows + 1)))
    assert (
        lines[6].images[0].key == lost
        and len(_keys_under(s3, bucket, f"jobs/{batch}-")) == 2 * rows
    )


def test_a_batch_cancelled_before_any_job_ran_gets_its_manifest_from_the_cancel(
    service_env, producer_settings, s3, tmp_path
):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    batch = f"cancel-{uuid.uuid4().hex[:8]}"
    queue = f"{producer_settings.queue}.nobody-{uuid.uuid4().hex[:6]}"
    env = {**service_env, "LCM_QUEUE": queue, "LCM_SERVED_SIZE_CHECK": "off"}
    try:
        run_cli("producer.cli", "submit-file", str(f), "--batch-id", batch, env=env)
        run_cli("producer.cli", "batch", "cancel", batch, env=env)
        lines = _manifest(s3, producer_settings.s3_bucket, batch_manifest_key("", batch))
        assert [(line.row, line.state, line.reason) for line in lines] == [
            (1, "canceled", "canceled before it started"),
            (2, "canceled", "canceled before it started"),
        ]
        record = _records(service_env).get_batch(batch)
        assert record is not None and record.summary is not None
        assert record.summary.counts.canceled == 2 and record.summary.images == 0
    finally:
        redis.Redis.from_url(service_env["LCM_REDIS_URL"]).delete(queue)
