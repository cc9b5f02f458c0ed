"""The render task applies the policy's decision: result, fail once, requeue, retry (fast tier,
Celery's eager apply on fakes)."""

from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from celery.exceptions import Reject
from prometheus_client import REGISTRY

from lcm_fleet.artifact.manifest import Manifest
from lcm_fleet.errors import InvalidJob, TransientStorageError
from tests.unit.fakes import FakePipeline
from worker import runtime
from worker.consumer.tasks import render_job
from worker.errors import RendererLost
from worker.model.artifact import ServedModel
from worker.render.sizes import PipelineSet
from worker.results.storage import result_store
from worker.settings import WorkerSettings


class FakeRedis:
    def __init__(self):
        self.values = {}

    def incr(self, key):
        self.values[key] = self.values.get(key, 0) + 1
        return self.values[key]

    def expire(self, key, ttl_s):
        pass

    def delete(self, key):
        self.values.pop(key, None)


class Dying(FakePipeline):
    def generate(self, prompt, seed, steps, guidance_scale, deadline=None, on_step=None):
        if prompt == "die":
            raise RendererLost("render process 0 (pid 1) died during the render (exit code -9)")
        return super().generate(prompt, seed, steps, guidance_scale, deadline, on_step)


def _count(outcome, size):
    return REGISTRY.get_sample_value("lcm_jobs_total", {"outcome": outcome, "size": size}) or 0.0


@pytest.fixture
def rt(local_slots, fake_s3, unrecorded):
    settings = WorkerSettings(
        model_dir="/m",
        s3_access_key_id="k",
        s3_secret_access_key="s",
        upload_attempts=1,
        storage_retry_budget_s=0,  # LCM_UPLOAD_ATTEMPTS, not a time budget
        task_max_retries=2,
        retry_backoff_base_s=0.01,
        retry_backoff_cap_s=0.02,
    )
    model = ServedModel(path=Path("/m"), manifest=Manifest.model_construct(), width=32, height=32)
    rt = runtime.install(settings, model)
    rt.slots = local_slots(PipelineSet({(32, 32): Dying(32, 32)}, (32, 32)))
    rt._store = result_store(settings, client=fake_s3())
    rt._redis = FakeRedis()
    rt._records = unrecorded
    yield rt
    rt.slots = None
    rt.stop()
    runtime._runtime = None


def test_a_job_returns_its_result_with_every_duration(rt):
    before = _count("succeeded", "32x32")
    out = render_job.apply(args=[{"prompt": "a cat", "seed": 1, "num_images": 2}]).get()
    assert out["status"] == "succeeded" and len(out["images"]) == 2
    # No submit-time header here: no queue_wait (tests/integration/test_render_path.py has one).
    assert list(out["durations_s"]) == [
        *("text_encoder", "unet", "vae", "render", "encode", "store_wait", "upload"),
        *("slot_wait", "total"),
    ]
    assert _count("succeeded", "32x32") == before + 1
    assert rt._redis.values == {}  # the delivery count is forgotten


def test_a_refused_job_fails_once_with_its_reason(rt):
    before = _count("invalid", "other")
    result = render_job.apply(args=[{"prompt": "x", "width": 64, "height": 64}])
    with pytest.raises(InvalidJob, match="serves 32x32"):
        result.get()
    assert _count("invalid", "other") == before + 1


def test_a_lost_render_process_requeues_the_job(rt):
    before = _count("requeued", "32x32")
    result = render_job.apply(args=[{"prompt": "die"}])
    assert result.state == "REJECTED", result.state
    assert isinstance(result.result, Reject) and result.result.requeue
    assert "died during the render" in str(result.result.reason)
    assert _count("requeued", "32x32") == before + 1


def test_a_storage_fault_is_retried_then_fails(rt, fake_s3):
    denied = ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Put"
    )
    rt._store = result_store(rt.settings, client=fake_s3([denied] * 10))
    retried, failed = _count("retried", "32x32"), _count("failed", "32x32")
    result = render_job.apply(args=[{"prompt": "x"}])
    with pytest.raises(TransientStorageError):
        result.get()
    # Eager retries run at once: two retries (LCM_TASK_MAX_RETRIES=2), then the job fails.
    assert _count("retried", "32x32") == retried + 2
    assert _count("failed", "32x32") == failed + 1
