"""`lcm submit-file` through real Redis, the real worker process and real S3."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from urllib.parse import urlsplit

import pytest
import redis
from PIL import Image

from lcm_fleet.keys import image_key
from producer.bulk import BulkSubmitError, read_jobs_file, submit_rows
from tests.integration.conftest import run_cli
from tests.integration.tcp_proxy import TcpProxy


def _env(service_env, producer_settings) -> dict[str, str]:
    return {**service_env, "LCM_QUEUE": producer_settings.queue}


def test_csv_batch_renders_every_row_and_downloads_verified_pngs(
    worker, service_env, producer_settings, s3, tmp_path
):
    f = tmp_path / "prompts.csv"
    f.write_text(
        "prompt,seed,num_images,width,height\n"
        '"a red cube, on a table",11,2,,\n'
        "a blue ball,12,,128,128\n"
        "a green cone,,,,\n"
    )
    ids_out, out_dir = tmp_path / "ids.jsonl", tmp_path / "pngs"
    batch = f"bulk-{uuid.uuid4().hex[:8]}"
    args = ["--steps", "2", "--batch-id", batch, "--ids-out", str(ids_out), "--wait"]
    env = _env(service_env, producer_settings)
    # Submitted twice: the second run's --wait must see its own results, not the first's.
    for _ in range(2):
        done = run_cli(
            "producer.cli", "submit-file", str(f), *args, "--timeout-s", "180",
            "--download", str(out_dir), env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{batch}-000002", f"{batch}-000003", f"{batch}-000004"]
    assert "3 succeeded (4 image(s)), 0 failed, 0 unfinished" in done.stderr
    records = [json.loads(line) for line in ids_out.read_text().splitlines()]
    assert [(r["line"], r["seed"]) for r in records][:2] == [(2, 11), (3, 12)]
    saved = sorted(p.name for p in out_dir.iterdir())
    assert saved == [
        f"{batch}-000002-000.png",
        f"{batch}-000002-001.png",
        f"{batch}-000003-000.png",
        f"{batch}-000004-000.png",
    ]
    # The downloaded PNGs are the second run's: row 4's random seed is that run's.
    last_seed = records[2]["seed"]
    assert Image.open(out_dir / saved[3]).text["seed"] == str(last_seed)
    stored = s3.get_object(
        Bucket=producer_settings.s3_bucket, Key=image_key("", f"{batch}-000002", 1)
    )["Body"].read()
    assert (out_dir / saved[1]).read_bytes() == stored
    assert hashlib.sha256(stored).hexdigest()


def test_a_file_with_a_bad_row_queues_nothing_and_names_the_row(
    service_env, producer_settings, tmp_path
):
    queue = producer_settings.queue + ".bulk-refused"
    f = tmp_path / "prompts.jsonl"
    # A file of its own (its batch id is its digest): no record of an earlier run is resumed.
    f.write_text(f'{{"prompt": "fine {uuid.uuid4().hex}"}}\n{{"prompt": "bad", "steps": 40}}\n')
    env = {**service_env, "LCM_QUEUE": queue}
    refused = run_cli("producer.cli", "submit-file", str(f), env=env, check=False)
    assert refused.returncode == 2
    assert "line 2: field 'steps' got 40" in refused.stderr
    assert "nothing was submitted" in refused.stderr
    broker = redis.Redis.from_url(service_env["LCM_REDIS_URL"])
    assert broker.llen(queue) == broker.llen(f"{queue}.bulk") == 0
    # Skipping invalid rows explicitly queues the good one and lists the other.
    skipped = run_cli("producer.cli", "submit-file", str(f), "--skip-invalid", env=env)
    assert "skipped line 2: field 'steps' got 40" in skipped.stderr
    assert broker.llen(f"{queue}.bulk") == 1  # a bulk file's jobs are bulk
    broker.delete(queue, f"{queue}.bulk")


def test_a_broker_outage_part_way_names_the_line_and_from_line_resumes_there(
    service_env, producer_settings, tmp_path
):
    """Real Redis behind a proxy that is cut after two publishes; then `--from-line`."""
    redis_url = urlsplit(service_env["LCM_REDIS_URL"])
    proxy = TcpProxy((redis_url.hostname or "127.0.0.1", redis_url.port or 6379))
    queue = producer_settings.queue + ".bulk-resume"
    settings = producer_settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{proxy.port}{redis_url.path}",
            "queue": queue,
            "publish_budget_s": 1.0,
            "publish_backoff_base_s": 0.05,
        }
    )
    f = tmp_path / "prompts.jsonl"
    tag = uuid.uuid4().hex  # a file of its own: no record of an earlier run is resumed
    f.write_text("".join(f'{{"prompt": "prompt {n} {tag}", "seed": {n}}}\n' for n in range(1, 5)))
    bulk = read_jobs_file(f)
    broker = redis.Redis.from_url(service_env["LCM_REDIS_URL"])
    try:

        def cut_after_line_2(row, handle):
            if row.line == 2:
                proxy.cut()

        with pytest.raises(BulkSubmitError) as failed:
            submit_rows(bulk.rows, settings, on_submitted=cut_after_line_2)
        assert failed.value.next_line == 3
        assert [h.job_id for h in failed.value.submitted] == [
            f"{bulk.batch_id}-000001",
            f"{bulk.batch_id}-000002",
        ]
        assert "2 of 4 job(s) were queued" in str(failed.value)
        assert "Resubmit from line 3" in str(failed.value)
        assert broker.llen(f"{queue}.bulk") == 2

        env = {**service_env, "LCM_QUEUE": queue}
        resumed = run_cli("producer.cli", "submit-file", str(f), "--from-line", "3", env=env)
        assert resumed.stdout.split() == [f"{bulk.batch_id}-000003", f"{bulk.batch_id}-000004"]
        assert "lines before 3 skipped" in resumed.stderr
        # Every line of the file is queued exactly once, with the seed its line gave it.
        queued = [json.loads(m) for m in broker.lrange(f"{queue}.bulk", 0, -1)]
        seeds = {
            m["headers"]["id"]: json.loads(base64.b64decode(m["body"]))[0][0]["seed"]
            for m in queued
        }
        assert seeds == {f"{bulk.batch_id}-{n:06d}": n for n in range(1, 5)}
    finally:
        proxy.cut()
        broker.delete(queue, f"{queue}.bulk")
