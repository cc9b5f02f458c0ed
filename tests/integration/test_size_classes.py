"""One worker process serving two size classes of the tiny model, within a memory budget."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import urllib.request
import uuid

import pytest
from PIL import Image

from lcm_fleet.contract import TASK_RENDER
from producer.api import handle, submit
from producer.errors import JobFailed
from producer.queue import make_client
from producer.settings import ProducerSettings
from tests.integration.conftest import (
    METRICS_PORT,
    ROOT,
    start_worker,
    stop_worker,
    wait_for_log,
    worker_env,
)

SIZES_PORT = METRICS_PORT + 7


@pytest.fixture(scope="module")
def two_sizes(service_env, model_dirs, producer_settings, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sizes")
    queue = f"lcm.sizes.{uuid.uuid4().hex[:8]}"
    env = worker_env(
        service_env,
        model_dirs["int8"],
        tmp,
        queue,
        LCM_SIZES="128x128,192x128",
        LCM_MEMORY_BUDGET_GIB="4",
        LCM_METRICS_PORT=str(SIZES_PORT),
    )
    worker = start_worker(env, tmp / "worker.log")
    wait_for_log(worker, "size class 192x128: pipeline loaded", timeout_s=120)
    settings = ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})
    yield worker, settings
    stop_worker(worker)


def _png_size(s3, settings, key):
    data = s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
    return Image.open(io.BytesIO(data)).size


def test_each_size_renders_with_its_own_pipeline(two_sizes, s3):
    worker, settings = two_sizes
    jobs = {
        (128, 128): submit("a square", settings=settings, width=128, height=128, seed=1),
        (192, 128): submit("a wide one", settings=settings, width=192, height=128, seed=2),
        None: submit("no size given", settings=settings, seed=3),
    }
    for size, h in jobs.items():
        result = h.wait(120)
        expected = size or (128, 128)  # unsized jobs take the first listed size
        assert (result.width, result.height) == expected
        assert _png_size(s3, settings, result.images[0].key) == expected
    log = worker.log_text()
    assert "size class 128x128: pipeline loaded" in log
    loads = re.findall(r"pipeline (?:compiled|imported) on CPU for 192x128", log)
    assert len(loads) == 1  # once per process
    with urllib.request.urlopen(f"http://127.0.0.1:{SIZES_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert re.search(r'lcm_jobs_total\{outcome="succeeded",size="192x128"\} [1-9]', text)
    assert re.search(r'lcm_jobs_total\{outcome="succeeded",size="128x128"\} [2-9]', text)
    assert re.search(r'lcm_pipeline_memory_gib\{size="192x128"\} 0\.\d*[1-9]', text)
    assert 'sizes="128x128,192x128"' in text
    assert f'lcm_queue_depth{{queue="{settings.queue}.192x128"}}' in text


def test_a_size_the_worker_does_not_serve_fails_once_with_reason(two_sizes):
    worker, settings = two_sizes
    task_id = f"size-{uuid.uuid4().hex[:8]}"
    job = {"prompt": "a cat", "width": 256, "height": 256}
    make_client(settings).send_task(TASK_RENDER, args=[job], task_id=task_id, queue=settings.queue)
    with pytest.raises(JobFailed, match="serves 128x128, 192x128"):
        handle(task_id, settings).wait(60)
    lines = [ln for ln in worker.log_text().splitlines() if f"job {task_id} failed" in ln]
    assert len(lines) == 1 and "(not retried)" in lines[0] and "[size other]" in lines[0]


@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        ("0.001", r"estimated before compiling at 0\.00\d+ GiB or more per pipeline"),
        ("0.02", r"the pipelines measured 0\.\d+ \(128x128\)"),
    ],
)
def test_pipelines_above_the_budget_are_refused_at_start(
    service_env, model_dirs, tmp_path, budget, reason
):
    env = worker_env(
        service_env,
        model_dirs["int8"],
        tmp_path,
        f"lcm.refused.{uuid.uuid4().hex[:8]}",
        LCM_SIZES="128x128,192x128",
        LCM_MEMORY_BUDGET_GIB=budget,
    )
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert f"LCM_MEMORY_BUDGET_GIB={float(budget):g} is too small" in text
    assert re.search(reason, text), text[-3000:]
    assert "raise LCM_MEMORY_BUDGET_GIB to at least" in text
