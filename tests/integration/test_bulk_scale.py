"""A bulk file at scale through the real worker (the slow tier): every row's PNG exactly once,
the manifest complete and matching the objects, and a resubmission queueing nothing.

The row count is sized for CI (docs/tests.md#timings): the tiny INT8 model at 1 step, so the
test measures the fleet's bookkeeping (records, uploads, the manifest of every row), not the
model; the 10,000-row run with the reference model is bench/bulk.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from lcm_fleet.batch_manifest import parse_manifest
from lcm_fleet.keys import batch_manifest_key, image_key, result_key
from lcm_fleet.records import RecordStore
from tests.integration.conftest import run_cli

ROWS = 1000

pytestmark = pytest.mark.slow


def test_a_large_file_renders_every_row_once_with_a_matching_manifest(
    worker, service_env, producer_settings, s3, tmp_path
):
    bucket = producer_settings.s3_bucket
    tag = uuid.uuid4().hex[:8]
    batch, prefix = f"scale-{tag}", f"scale/{tag}"
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(f'{{"prompt": "row {n}"}}\n' for n in range(1, ROWS + 1)))
    env = {**service_env, "LCM_QUEUE": producer_settings.queue}
    args = ["--batch-id", batch, "--output-prefix", prefix, "--steps", "1"]
    done = run_cli(
        "producer.cli", "submit-file", str(f), *args, "--wait", "--timeout-s", "1200",
        env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{ROWS} succeeded ({ROWS} image(s)), 0 failed, 0 unfinished" in done.stderr

    listed: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        listed.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    ids = [f"{batch}-{n:06d}" for n in range(1, ROWS + 1)]
    manifest_key = batch_manifest_key("", batch, prefix)
    expected = {image_key("", i, 0, prefix) for i in ids} | {result_key("", i, prefix) for i in ids}
    assert set(listed) == expected | {manifest_key}  # each PNG once, nothing else

    body = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    lines = list(parse_manifest(body))
    assert [(line.row, line.job_id) for line in lines] == list(
        zip(range(1, ROWS + 1), ids, strict=True)
    )
    assert {line.state for line in lines} == {"succeeded"}
    named = [image for line in lines for image in line.images]
    assert [image.key for image in named] == [image_key("", i, 0, prefix) for i in ids]

    def sha(key: str) -> str:
        return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()

    with ThreadPoolExecutor(16) as pool:
        digests = list(pool.map(sha, [image.key for image in named]))
    assert digests == [image.sha256 for image in named]
    assert all(listed[image.key] == image.bytes for image in named)
    records = RecordStore(redis.Redis.from_url(service_env["LCM_REDIS_URL"]), 3600)
    record = records.get_batch(batch)
    assert record is not None and record.summary is not None
    assert record.summary.rows == ROWS and record.summary.images == ROWS
    written = record.summary.written_at

    # The same file again: every row is stored and verified, nothing is queued.
    ids_out = tmp_path / "again.jsonl"
    again = run_cli(
        "producer.cli", "submit-file", str(f), *args, "--ids-out", str(ids_out), "--wait",
        env=env, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted 0 job(s)" in again.stderr and f"{ROWS} row(s) already stored" in again.stderr
    assert {json.loads(t)["outcome"] for t in ids_out.read_text().splitlines()} == {"stored"}
    record = records.get_batch(batch)
    assert record is not None and record.summary is not None
    assert record.summary.written_at > written and record.counts.succeeded == ROWS
