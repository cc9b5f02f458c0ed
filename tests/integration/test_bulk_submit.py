"""`lcm submit-file` through real Redis, the real worker process and real S3."""

from __future__ import annotations

import hashlib
import json
import uuid

import redis
from PIL import Image

from producer.contract import image_key
from tests.integration.conftest import run_cli


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
    f.write_text('{"prompt": "fine"}\n{"prompt": "bad", "steps": 40}\n')
    env = {**service_env, "LCM_QUEUE": queue}
    refused = run_cli("producer.cli", "submit-file", str(f), env=env, check=False)
    assert refused.returncode == 2
    assert "line 2: field 'steps' got 40" in refused.stderr
    assert "nothing was submitted" in refused.stderr
    broker = redis.Redis.from_url(service_env["LCM_REDIS_URL"])
    assert broker.llen(queue) == 0
    # Skipping invalid rows explicitly queues the good one and lists the other.
    skipped = run_cli("producer.cli", "submit-file", str(f), "--skip-invalid", env=env)
    assert "skipped line 2: field 'steps' got 40" in skipped.stderr
    assert broker.llen(queue) == 1
    broker.delete(queue)
