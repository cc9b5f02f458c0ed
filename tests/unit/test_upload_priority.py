"""worker/runtime.py: bulk jobs' images are encoded on threads of a lower CPU priority, so
that they take what the interactive render beside them leaves."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

from lcm_fleet.contract import JobClass
from worker.runtime import Runtime
from worker.settings import WorkerSettings

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _nice_of_a_thread(runtime: Runtime, job_class: JobClass) -> int:
    return (
        runtime.uploads(job_class)
        .submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        .result(timeout=10)
    )


def _runtime(**settings: Any) -> Runtime:
    worker = WorkerSettings(
        model_dir="/m", s3_access_key_id="k", s3_secret_access_key="s", **settings
    )
    return Runtime(settings=worker, model=None)  # type: ignore[arg-type]  # not served here


def test_bulk_images_are_encoded_at_lcm_bulk_encode_nice_and_interactive_ones_not() -> None:
    runtime = _runtime(bulk_encode_nice=7)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        assert _nice_of_a_thread(runtime, JobClass.BULK) == max(base, 7)
        assert _nice_of_a_thread(runtime, JobClass.INTERACTIVE) == base
        assert runtime.uploads(JobClass.BULK) is runtime.uploads(JobClass.BULK)
    finally:
        runtime.stop()


def test_nice_0_leaves_bulk_threads_as_the_rest_of_the_worker() -> None:
    runtime = _runtime(bulk_encode_nice=0)
    try:
        assert _nice_of_a_thread(runtime, JobClass.BULK) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        runtime.stop()
