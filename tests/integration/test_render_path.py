"""Jobs through the real worker process, Redis and S3."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid

import numpy as np
import pytest
import redis
from PIL import Image

from lcm_fleet.contract import TASK_RENDER
from lcm_fleet.errors import InvalidJob
from lcm_fleet.keys import DEAD_LETTER_KEY, image_key, result_key
from producer.api import handle, submit
from producer.download import download
from producer.errors import JobFailed
from producer.queue import make_client


def _get(s3, settings, key: str) -> bytes:
    return s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_job_produces_pngs_whose_metadata_match_the_job(
    worker, producer_settings, s3, model_dirs, tmp_path
):
    h = submit(
        "a red cube on a blue table",
        settings=producer_settings,
        seed=1234,
        steps=3,
        guidance_scale=6.5,
        num_images=2,
    )
    result = h.wait(timeout_s=120)
    manifest_sha = hashlib.sha256((model_dirs["int8"] / "manifest.json").read_bytes()).hexdigest()
    assert result.model_manifest_sha256 == manifest_sha
    assert [i.seed for i in result.images] == [1234, 1235]
    assert {"text_encoder", "unet", "vae", "encode", "upload", "total"} <= set(result.durations_s)
    assert result.durations_s["unet"] > 0 and result.durations_s["total"] > 0
    assert 0 <= result.durations_s["queue_wait"] < 60
    for image in result.images:
        assert image.key == image_key("", h.job_id, image.index)
        data = _get(s3, producer_settings, image.key)
        assert hashlib.sha256(data).hexdigest() == image.sha256
        png = Image.open(io.BytesIO(data))
        assert png.size == (128, 128)
        text = png.text
        assert text["prompt"] == "a red cube on a blue table"
        assert text["seed"] == str(image.seed)
        assert text["steps"] == "3" and text["guidance_scale"] == "6.5"
        assert text["width"] == "128" and text["height"] == "128"
        assert text["model_manifest_sha256"] == manifest_sha
        assert text["job_id"] == h.job_id
    stored = json.loads(_get(s3, producer_settings, result_key("", h.job_id)))
    assert stored["images"] == [i.model_dump() for i in result.images]
    # The producer's download verifies each file's sha256.
    paths = download(h.job_id, tmp_path, producer_settings)
    assert [p.read_bytes() for p in paths] == [
        _get(s3, producer_settings, i.key) for i in result.images
    ]
    # One log line per job, with its stage durations.
    line = [ln for ln in worker.log_text().splitlines() if f"job {h.job_id} succeeded" in ln]
    assert len(line) == 1 and "unet=" in line[0] and "upload=" in line[0]


def test_same_job_twice_gives_identical_images(worker, producer_settings, s3):
    a = submit("a lighthouse at dusk", settings=producer_settings, seed=7).wait(120)
    b = submit("a lighthouse at dusk", settings=producer_settings, seed=7).wait(120)
    assert a.job_id != b.job_id
    da, db = (_get(s3, producer_settings, r.images[0].key) for r in (a, b))
    assert np.array_equal(_pixels(da), _pixels(db))
    assert a.images[0].sha256 != b.images[0].sha256  # the PNGs differ only in their job_id chunk


def test_different_seeds_give_different_images(worker, producer_settings, s3):
    a = submit("a lighthouse at dusk", settings=producer_settings, seed=1).wait(120)
    b = submit("a lighthouse at dusk", settings=producer_settings, seed=2).wait(120)
    pa, pb = (_pixels(_get(s3, producer_settings, r.images[0].key)) for r in (a, b))
    assert np.mean(np.abs(pa.astype(int) - pb.astype(int))) > 1.0


def test_resubmitted_job_id_overwrites_its_own_objects(worker, producer_settings, s3):
    job_id = f"fixed-{uuid.uuid4().hex[:8]}"
    first = submit("a boat", settings=producer_settings, job_id=job_id, seed=5, num_images=2).wait(
        120
    )
    second = submit("a boat", settings=producer_settings, job_id=job_id, seed=5, num_images=2).wait(
        120
    )
    listed = s3.list_objects_v2(Bucket=producer_settings.s3_bucket, Prefix=f"jobs/{job_id}/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert keys == [
        f"jobs/{job_id}/000.png",
        f"jobs/{job_id}/001.png",
        f"jobs/{job_id}/result.json",
    ]
    assert [i.sha256 for i in first.images] == [i.sha256 for i in second.images]


def test_invalid_job_is_refused_at_submit(worker, producer_settings):
    r = redis.Redis.from_url(producer_settings.redis_url)
    before = r.llen(producer_settings.queue)
    with pytest.raises(InvalidJob, match=r"field 'steps' got 12.*from 1 to 8"):
        submit("a cat", settings=producer_settings, steps=12)
    with pytest.raises(InvalidJob, match=r"field 'width' got 100"):
        submit("a cat", settings=producer_settings, width=100, height=128)
    assert r.llen(producer_settings.queue) == before


def test_sized_jobs_go_to_their_size_class(worker, producer_settings):
    r = redis.Redis.from_url(producer_settings.redis_url)
    served = submit("a cat", settings=producer_settings, width=128, height=128, seed=2)
    assert served.wait(60).width == 128  # the worker consumes its own size class
    other = f"{producer_settings.queue}.256x256"
    # No worker serves 256x256: refused at submit (test_served_sizes.py) unless asked to queue.
    ahead = producer_settings.model_copy(update={"served_size_check": "off"})
    h = submit("a cat", settings=ahead, width=256, height=256)
    time.sleep(1.0)
    assert r.llen(other) == 1 and h.state == "PENDING"  # waits for a 256x256 worker
    r.delete(other)


def test_size_the_model_does_not_serve_fails_once_with_reason(worker, producer_settings):
    client = make_client(producer_settings)
    task_id = f"size-{uuid.uuid4().hex[:8]}"
    job = {"prompt": "a cat", "width": 256, "height": 256}
    client.send_task(TASK_RENDER, args=[job], task_id=task_id, queue=producer_settings.queue)
    with pytest.raises(JobFailed, match="serves 128x128"):
        handle(task_id, producer_settings).wait(60)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ([{"prompt": 5, "steps": 99}], "field 'steps' got 99"),
        (["just a string"], "must be a JSON object"),
        ([{"prompt": "x"}, "extra"], "exactly one positional argument"),
    ],
)
def test_malformed_payload_fails_once_and_worker_keeps_serving(
    worker, producer_settings, args, reason
):
    client = make_client(producer_settings)
    task_id = f"bad-{uuid.uuid4().hex[:8]}"
    client.send_task(TASK_RENDER, args=args, task_id=task_id, queue=producer_settings.queue)
    with pytest.raises(JobFailed, match=reason):
        handle(task_id, producer_settings).wait(60)
    log = worker.log_text()
    assert log.count(f"job {task_id} failed (not retried)") == 1
    assert "Retry in" not in "\n".join(ln for ln in log.splitlines() if task_id in ln)
    assert submit("still serving", settings=producer_settings, seed=3).wait(60).images


def test_undecodable_queue_item_is_dead_lettered_and_worker_keeps_serving(
    worker, producer_settings
):
    r = redis.Redis.from_url(producer_settings.redis_url)
    marker = f"garbage-{uuid.uuid4().hex}"
    r.lpush(producer_settings.queue, f"{marker} is not a message".encode())
    assert submit("after garbage", settings=producer_settings, seed=4).wait(60).images
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [json.loads(e) for e in r.lrange(DEAD_LETTER_KEY, 0, 50)]
        if any(marker in e["prefix"] and e["kind"] == "not_json" for e in entries):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the malformed item was not recorded in the dead-letter list")
    assert worker.proc.poll() is None
