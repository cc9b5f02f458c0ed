"""A job from check to stored result, two at a time: render of one overlaps storing of the other."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from lcm_fleet.contract import Job
from lcm_fleet.errors import InvalidJob
from worker.job import run_job
from worker.render.images import check_job
from worker.render.limits import Deadlines
from worker.render.sizes import PipelineSet


@pytest.fixture
def slots_for(fake_pipeline, local_slots):
    """``slots_for(log, step_s)``: one 32x32 pipeline that logs when each render starts and ends."""

    class Recording(fake_pipeline):
        def __init__(self, log, **kw):
            super().__init__(**kw)
            self.log = log

        def generate(self, prompt, seed, steps, guidance_scale, deadline=None):
            self.log.append(("render-start", prompt, time.monotonic()))
            out = super().generate(prompt, seed, steps, guidance_scale, deadline)
            self.log.append(("render-end", prompt, time.monotonic()))
            return out

    def slots(log, step_s=0.05):
        pipe = Recording(log, width=32, height=32, step_s=step_s)
        return local_slots(PipelineSet({(32, 32): pipe}, (32, 32)))

    return slots


def _run(job, slots, store, deadlines, pool):
    return run_job(
        check_job(job, slots.classes),
        slots=slots,
        store=store,
        prefix="",
        model_manifest_sha256="m",
        worker="w",
        deadlines=deadlines,
        executor=pool,
    ).result


def test_next_job_renders_while_the_previous_one_uploads(slots_for, slow_s3, result_store_for):
    log, client = [], slow_s3(0.3)
    store, slots = result_store_for(client), slots_for(log)
    jobs = [Job(prompt=f"job{i}", seed=i, num_images=2, steps=4) for i in range(2)]
    finished, stored_at_return = {}, {}

    def one(job):
        result = _run(job, slots, store, Deadlines.start(30, 60), pool)
        finished[job.prompt] = time.monotonic()
        stored_at_return[job.prompt] = sorted(k for k in client.objects if job.job_id in k)
        return result

    with ThreadPoolExecutor(2, thread_name_prefix="lcm-upload") as pool, ThreadPoolExecutor(2) as t:
        results = list(t.map(one, jobs))
    first = min(finished, key=finished.get)
    second = "job1" if first == "job0" else "job0"
    second_start = min(t for kind, p, t in log if kind == "render-start" and p == second)
    assert second_start < finished[first]  # overlap: rendering began before the first finished
    renders = [(kind, p) for kind, p, _ in log]
    assert renders.index(("render-start", second)) > max(
        i for i, (kind, p) in enumerate(renders) if kind == "render-end" and p == first
    )  # one render at a time
    for job, result in zip(jobs, results, strict=True):
        # The job returned (and would be acknowledged) only with its own objects stored.
        assert stored_at_return[job.prompt] == [
            f"jobs/{job.job_id}/000.png",
            f"jobs/{job.job_id}/001.png",
            f"jobs/{job.job_id}/result.json",
        ]
        assert result.durations_s["slot_wait"] >= 0
    assert max(r.durations_s["slot_wait"] for r in results) > 0.2  # one waited for the other


def test_soft_limit_while_waiting_for_uploads(slots_for, slow_s3, result_store_for):
    log, client = [], slow_s3(1.0)
    slots, store = slots_for(log, 0.0), result_store_for(client)
    with (
        ThreadPoolExecutor(1) as pool,
        pytest.raises(SoftTimeLimitExceeded, match=r"waiting for 1 image upload\(s\)"),
    ):
        _run(Job(prompt="x", seed=1), slots, store, Deadlines.start(0.3, 5), pool)
    assert not any("result.json" in k for k in client.objects)


def test_soft_limit_while_waiting_for_the_pipeline(slots_for, slow_s3, result_store_for):
    log = []
    slots = slots_for(log)
    held, release = threading.Event(), threading.Event()

    def hold():
        with slots.session(Deadlines.none()):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        with pytest.raises(SoftTimeLimitExceeded, match="waiting for the pipeline"):
            _run(
                Job(prompt="x", seed=1),
                slots,
                result_store_for(slow_s3(0)),
                Deadlines.start(0.2, 5),
                None,
            )
    finally:
        release.set()
        holder.join()
    assert log == []


def test_soft_limit_during_a_render_stops_it(slots_for, slow_s3, result_store_for):
    log = []
    with pytest.raises(SoftTimeLimitExceeded, match="while rendering"):
        _run(
            Job(prompt="x", seed=1, num_images=3, steps=8),
            slots_for(log, step_s=0.1),
            result_store_for(slow_s3(0)),
            Deadlines.start(0.5, 5),
            None,
        )
    assert len([e for e in log if e[0] == "render-start"]) == 1


def test_invalid_size_is_refused_before_waiting_for_the_pipeline(
    slots_for, slow_s3, result_store_for
):
    log = []
    with pytest.raises(InvalidJob, match="serves 32x32"):
        job = Job(prompt="x", width=64, height=64)
        _run(job, slots_for(log), result_store_for(slow_s3(0)), Deadlines.none(), None)
    assert log == []
