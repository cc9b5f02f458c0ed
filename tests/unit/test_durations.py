"""JobDurations: each stage where it is measured, one durations_s dict with the result's keys."""

import json

import pytest

from lcm_fleet.contract import Job
from tests.unit.fakes import FakePipeline
from worker.durations import JobDurations, TimedResult
from worker.render.images import render
from worker.render.pipeline import StageTimes
from worker.results.writer import ResultWriter


def test_render_stages_add_up_per_image_and_round_to_4_decimals():
    d = JobDurations().plus(StageTimes(0.011111, 0.122222, 0.05, 0.2))
    d = d.plus(StageTimes(0.01, 0.1, 0.055555, 0.2)).but(render=0.3333333)
    assert d.as_dict() == {"text_encoder": 0.0211, "unet": 0.2222, "vae": 0.1056, "render": 0.3333}


def test_keys_in_the_order_and_presence_the_result_always_had():
    d = JobDurations(0.1, 0.2, 0.3, 0.7).but(encode=0.05, store_wait=0.01, upload=0.2)
    d = d.but(slot_wait=0.0, total=1.5, queue_wait=None)  # no submit header: no queue_wait
    assert list(d.as_dict()) == [
        "text_encoder",
        "unet",
        "vae",
        "render",
        "encode",
        "store_wait",
        "upload",
        "slot_wait",
        "total",
    ]
    assert d.but(queue_wait=2.123456).as_dict()["queue_wait"] == 2.1235
    assert d.but(queue_wait=None).queue_wait is None  # None: not measured, left as it was


def test_result_json_holds_the_stages_measured_before_it_is_written(slow_s3, result_store_for):
    client = slow_s3(0)
    job = Job(prompt="x", seed=1, num_images=2)
    writer = ResultWriter(
        result_store_for(client), job, prefix="", model_manifest_sha256="m", worker="w"
    )
    done = writer.finish(render(job, FakePipeline(), on_image=writer.add))
    stored = json.loads(client.objects[f"jobs/{job.job_id}/result.json"])
    assert set(stored["durations_s"]) == {
        "text_encoder",
        "unet",
        "vae",
        "render",
        "encode",
        "store_wait",
    }
    assert stored["durations_s"]["unet"] == pytest.approx(0.2)
    assert stored["status"] == "succeeded"
    assert done.result.durations_s == done.durations.as_dict()
    assert done.durations.upload is not None and "upload" in done.result.durations_s


def test_timed_result_keeps_the_dict_in_step_with_the_durations(slow_s3, result_store_for):
    client = slow_s3(0)
    job = Job(prompt="x", seed=1)
    writer = ResultWriter(
        result_store_for(client), job, prefix="", model_manifest_sha256="m", worker="w"
    )
    done = writer.finish(render(job, FakePipeline(), on_image=writer.add))
    later = done.but(slot_wait=0.25, total=1.0)
    assert isinstance(later, TimedResult)
    assert later.result.durations_s["slot_wait"] == 0.25 and later.durations.total == 1.0
    assert "slot_wait" not in done.result.durations_s  # frozen: the earlier one is unchanged
    assert later.result.model_dump(mode="json")["status"] == "succeeded"
