"""The worker's Prometheus endpoint during a batch."""

from __future__ import annotations

import re
import urllib.request

from producer.api import submit
from tests.integration.conftest import METRICS_PORT


def _scrape() -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        return r.read().decode()


def _value(text: str, pattern: str) -> float:
    match = re.search(pattern + r" ([0-9.e+-]+)$", text, re.M)
    assert match, f"{pattern} not in metrics:\n{text[:2000]}"
    return float(match.group(1))


def test_metrics_during_a_batch(worker, producer_settings):
    before = _scrape()
    done = re.search(
        r'^lcm_jobs_total\{outcome="succeeded",size="128x128"\} ([0-9.e+]+)$', before, re.M
    )
    start = float(done.group(1)) if done else 0.0
    handles = [submit(f"batch {i}", settings=producer_settings, seed=i) for i in range(6)]
    depth = _value(_scrape(), rf'lcm_queue_depth\{{queue="{re.escape(producer_settings.queue)}"\}}')
    assert depth >= 0
    for h in handles:
        h.wait(60)
    text = _scrape()
    assert _value(text, r'lcm_jobs_total\{outcome="succeeded",size="128x128"\}') >= start + 6
    for stage in ("queue_wait", "text_encoder", "unet", "vae", "encode", "upload", "total"):
        pattern = rf'lcm_job_stage_seconds_count\{{size="128x128",stage="{stage}"\}}'
        assert _value(text, pattern) >= 6
    assert _value(text, r'lcm_images_total\{size="128x128"\}') >= 6
    assert _value(text, r'lcm_pipeline_compile_seconds\{size="128x128"\}') > 0
    assert _value(text, r'lcm_pipeline_memory_gib\{size="128x128"\}') > 0
    assert "lcm_worker_info{" in text and 'shape="128x128"' in text
    assert _value(text, r"lcm_worker_cores") >= 1
    assert _value(text, r"lcm_images_per_core_hour") > 0  # 6 images within the window
