"""Fakes shared by the fast tier, as fixtures: a test asks for what it fakes by name.

- ``fake_pipeline``: the deterministic fake genai pipeline class (``FakePipeline``).
- ``local_slots``: in-process pipelines behind one lock, with RenderSlots' interface.
- ``fake_s3``, ``slow_s3``: fake boto3 S3 clients (``put_object`` only); ``slow_s3(delay_s)``
  sleeps in each put and records the threads it ran on.
- ``result_store_for``: the worker's result store around a fake client.

The fakes a spawned render process must import by module path (its pipeline factories) live
in ``tests/unit/fakes.py``.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.unit.fakes import FakePipeline
from worker.errors import JobCanceled, RenderCancelled
from worker.render.process import SizeClass
from worker.render.sizes import PipelineSet
from worker.results.storage import result_store
from worker.settings import WorkerSettings


class FakeS3:
    def __init__(self, failures=()):
        self.failures = list(failures)
        self.objects = {}
        self.meta = type("M", (), {"endpoint_url": "http://fake"})()

    def put_object(self, Bucket, Key, Body, ContentType, ContentMD5):
        if self.failures:
            raise self.failures.pop(0)
        self.objects[Key] = Body
        return {"ETag": f'"{hashlib.md5(Body).hexdigest()}"'}

    def get_object(self, Bucket, Key):
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[Key]), "ContentLength": len(self.objects[Key])}


class SlowS3(FakeS3):
    def __init__(self, delay_s):
        super().__init__()
        self.delay_s = delay_s
        self.threads = set()

    def put_object(self, **kw):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().put_object(**kw)


class LocalSlots:
    """In-process pipelines behind one lock, with RenderSlots' interface (for run_job tests)."""

    def __init__(self, pipelines):
        self.pipelines = pipelines
        self.classes = PipelineSet(
            {
                s: SizeClass(p.width, p.height, p.guidance_scale, p.cfg)
                for s in pipelines.sizes
                for p in [pipelines.get(s)]
            },
            pipelines.default,
        )
        self._lock = threading.Lock()

    @contextmanager
    def session(self, deadlines, job_class=None, job_id=None):
        t0 = time.monotonic()
        left = deadlines.soft_left()
        if not self._lock.acquire(timeout=-1 if left == float("inf") else max(0.0, left)):
            raise deadlines.soft_exceeded("waiting for the pipeline")
        try:
            yield LocalSession(self, deadlines, time.monotonic() - t0)
        finally:
            self._lock.release()


class LocalSession:
    def __init__(self, slots, deadlines, waited_s):
        self.slots, self.deadlines, self.waited_s = slots, deadlines, waited_s

    def pipeline(self, size):
        pipeline = self.slots.pipelines.get((size.width, size.height))
        deadlines = self.deadlines

        class Limited:
            width, height = pipeline.width, pipeline.height
            guidance_scale, cfg = pipeline.guidance_scale, pipeline.cfg

            def generate(self, prompt, seed, steps, guidance_scale, deadline=None, on_step=None):
                deadlines.check_soft("before rendering an image")
                soft = deadlines.soft if deadline is None else min(deadline, deadlines.soft)
                extra = {} if on_step is None else {"on_step": on_step}
                try:
                    return pipeline.generate(
                        prompt,
                        seed,
                        steps,
                        guidance_scale,
                        deadline=None if soft == float("inf") else soft,
                        **extra,
                    )
                except RenderCancelled as e:
                    if e.requested:
                        raise JobCanceled(f"canceled while rendering ({e})") from e
                    raise deadlines.soft_exceeded(f"while rendering ({e})") from e

        return Limited()


class Unrecorded:
    """RecordStore's interface for a job without a record store: every job runs, nothing
    is kept (the records are tested on the real Redis: tests/integration/test_records.py)."""

    def start(self, job, worker, job_class=None):
        from lcm_fleet.records import StartOutcome

        return StartOutcome.RUN

    def progress(self, *args, **kwargs):
        return False

    def cancel_requested(self, job_id):
        return False

    def _moved(self, *args, **kwargs):
        from lcm_fleet.records import Transition

        return Transition(done=False, before=None)

    succeed = fail = requeue = _moved


@pytest.fixture
def unrecorded() -> Unrecorded:
    return Unrecorded()


@pytest.fixture
def fake_pipeline() -> type[FakePipeline]:
    """The class: ``fake_pipeline(width, height, guidance_scale, cfg, step_s)``, or subclass it."""
    return FakePipeline


@pytest.fixture
def local_slots() -> type[LocalSlots]:
    """The class: ``local_slots(PipelineSet(...))``."""
    return LocalSlots


@pytest.fixture
def fake_s3() -> type[FakeS3]:
    """The class: ``fake_s3([exception, ...])`` raises those from its first puts, in order."""
    return FakeS3


@pytest.fixture
def slow_s3() -> type[SlowS3]:
    """The class: ``slow_s3(delay_s)``."""
    return SlowS3


@pytest.fixture
def result_store_for() -> Callable[[Any], Any]:
    """``result_store_for(client)``: the worker's result store (default settings) on a client."""

    def store(client):
        settings = WorkerSettings(
            model_dir="/m", s3_access_key_id="k", s3_secret_access_key="s", storage_retry_budget_s=0
        )
        return result_store(settings, client=client)

    return store
