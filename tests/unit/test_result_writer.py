"""ResultWriter against a fake S3 client (fast tier): overlap, verification order, failures."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lcm_fleet.contract import Job
from worker.durations import JobDurations
from worker.render.images import Rendered, RenderedImage
from worker.results.writer import ResultWriter


def _image(i):
    return RenderedImage(index=i, seed=10 + i, pixels=np.full((16, 16, 3), i * 40, dtype=np.uint8))


def test_uploads_run_beside_rendering_and_finish_waits_for_them(slow_s3, result_store_for):
    client = slow_s3(0.2)
    job = Job(prompt="x", seed=10, num_images=3)
    with ThreadPoolExecutor(1, thread_name_prefix="lcm-upload") as pool:
        writer = ResultWriter(
            result_store_for(client),
            job,
            prefix="",
            model_manifest_sha256="m",
            worker="w",
            executor=pool,
        )
        t0 = time.perf_counter()
        for i in range(3):
            writer.add(_image(i), 8.0)
        assert time.perf_counter() - t0 < 0.15  # add() did not wait for the upload
        rendered = Rendered(
            job=job,
            width=16,
            height=16,
            guidance_scale=8.0,
            images=[_image(i) for i in range(3)],
            durations=JobDurations(render=0.1),
        )
        result = writer.finish(rendered).result
    assert any(name.startswith("lcm-upload") for name in client.threads)
    assert sorted(client.objects) == [f"jobs/{job.job_id}/{i:03d}.png" for i in range(3)] + [
        f"jobs/{job.job_id}/result.json"
    ]
    assert [i.seed for i in result.images] == [10, 11, 12]
    assert result.durations_s["store_wait"] > 0.3 and result.durations_s["upload"] >= 0.6


def test_failed_upload_fails_the_job(fake_s3, result_store_for):
    from botocore.exceptions import ClientError

    from lcm_fleet.errors import StorageError

    denied = ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Put"
    )
    client = fake_s3([denied])
    job = Job(prompt="x", seed=1)
    writer = ResultWriter(
        result_store_for(client), job, prefix="", model_manifest_sha256="m", worker="w"
    )
    with pytest.raises(StorageError):
        writer.add(_image(0), 8.0)
    assert "result.json" not in " ".join(client.objects)
