"""The one place a job's end is recorded: its outcome counted and its log line, as before."""

import logging

import pytest
from prometheus_client import REGISTRY

from lcm_fleet.contract import JobResult
from lcm_fleet.errors import InvalidJob, TransientStorageError
from worker.consumer import report
from worker.consumer.policy import Action, Decision, Outcome
from worker.durations import JobDurations, TimedResult


def _count(outcome, size):
    return REGISTRY.get_sample_value("lcm_jobs_total", {"outcome": outcome, "size": size}) or 0.0


def _stage_count(stage, size):
    labels = {"stage": stage, "size": size}
    return REGISTRY.get_sample_value("lcm_job_stage_seconds_count", labels) or 0.0


def _done(queue_wait):
    durations = JobDurations(0.01, 0.1, 0.05, 0.2).but(
        encode=0.02, store_wait=0.0, upload=0.03, slot_wait=0.5, total=0.8, queue_wait=queue_wait
    )
    result = JobResult(
        job_id="j",
        prompt="p",
        steps=4,
        guidance_scale=8.0,
        width=64,
        height=32,
        images=[],
        model_manifest_sha256="m",
        durations_s={},
        worker="w",
    )
    return TimedResult.of(result, durations)


def test_a_succeeded_job_is_counted_observed_and_logged(caplog):
    before, stages = _count("succeeded", "64x32"), _stage_count("slot_wait", "64x32")
    with caplog.at_level(logging.INFO, logger="worker.consumer.report"):
        report.succeeded("t1", _done(1.23456), "64x32")
        report.succeeded("t2", _done(None), "64x32")
    assert _count("succeeded", "64x32") == before + 2
    assert _stage_count("slot_wait", "64x32") == stages + 2
    assert [r.getMessage() for r in caplog.records] == [
        "job t1 succeeded: 0 image(s) 64x32 steps=4 | queue_wait=1.235s slot_wait=0.500s "
        "text_encoder=0.010s unet=0.100s vae=0.050s encode=0.020s upload=0.030s total=0.800s",
        "job t2 succeeded: 0 image(s) 64x32 steps=4 | queue_wait=- slot_wait=0.500s "
        "text_encoder=0.010s unet=0.100s vae=0.050s encode=0.020s upload=0.030s total=0.800s",
    ]


@pytest.mark.parametrize(
    ("decision", "error", "level", "line"),
    [
        (
            Decision(Outcome.INVALID, Action.FAIL, 0),
            InvalidJob("field 'steps' got 99"),
            logging.WARNING,
            "job t failed (not retried): field 'steps' got 99 [size other]",
        ),
        (
            Decision(Outcome.ABANDONED, Action.FAIL, 0),
            RuntimeError("delivered 4 times"),
            logging.WARNING,
            "job t failed (not retried): delivered 4 times [size other]",
        ),
        (
            Decision(Outcome.RETRIED, Action.RETRY, 1, 7.25),
            TransientStorageError("SlowDown"),
            logging.WARNING,
            "job t: storage failed (SlowDown); retry 2 in 7.2s [size other]",
        ),
        (
            Decision(Outcome.FAILED, Action.FAIL, 3, exhausted=True),
            TransientStorageError("SlowDown"),
            logging.ERROR,
            "job t failed after 3 retries: SlowDown [size other]",
        ),
        (
            Decision(Outcome.GIVEN_BACK, Action.REQUEUE, 0),
            RuntimeError("bulk job t went back to its queue"),
            logging.INFO,
            "job t given back: bulk job t went back to its queue [size other]",
        ),
        (
            Decision(Outcome.REQUEUED, Action.REQUEUE, 0),
            RuntimeError("exit code -9"),
            logging.ERROR,
            "job t requeued: exit code -9 [size other]",
        ),
        (
            Decision(Outcome.TIMED_OUT, Action.FAIL, 0),
            RuntimeError("soft time limit (2s) exceeded"),
            logging.ERROR,
            "job t failed: soft time limit (2s) exceeded [size other]",
        ),
        (
            Decision(Outcome.FAILED, Action.FAIL, 0),
            RuntimeError("boom"),
            logging.ERROR,
            "job t failed: boom [size other]",
        ),
    ],
)
def test_a_failed_attempt_is_counted_and_logged_as_before(caplog, decision, error, level, line):
    before = _count(decision.outcome.value, "other")
    with caplog.at_level(logging.INFO, logger="worker.consumer.report"):
        report.failed("t", decision, error, "other")
    assert _count(decision.outcome.value, "other") == before + 1
    (record,) = caplog.records
    assert (record.levelno, record.getMessage()) == (level, line)
    # Only an unexpected failure carries its traceback.
    unexpected = decision.outcome is Outcome.FAILED and not decision.exhausted
    assert bool(record.exc_info) == unexpected
