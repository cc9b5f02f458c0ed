"""The retry policy: each exception's outcome and action, retries running out, bounded backoff."""

import random

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from lcm_fleet.backoff import Backoff
from lcm_fleet.errors import InvalidJob, StorageError, TransientStorageError
from worker import metrics
from worker.consumer.deliveries import JobAbandoned
from worker.consumer.policy import (
    CANCELED_BY,
    NEVER_RETRY,
    Action,
    Decision,
    Outcome,
    RetryPolicy,
    decide,
)
from worker.errors import (
    GaveBackToInteractive,
    JobCanceled,
    ModelLoadError,
    RenderCancelled,
    RendererLost,
    WorkerError,
)
from worker.settings import WorkerSettings

POLICY = RetryPolicy(max_retries=3, backoff=Backoff(5.0, 120.0))


@pytest.mark.parametrize(
    ("error", "outcome", "action"),
    [
        (InvalidJob("field 'steps' got 99"), Outcome.INVALID, Action.FAIL),
        (JobAbandoned("delivered 4 times"), Outcome.ABANDONED, Action.FAIL),
        (TransientStorageError("SlowDown"), Outcome.RETRIED, Action.RETRY),
        (StorageError("AccessDenied"), Outcome.FAILED, Action.FAIL),
        (RendererLost("exit code -9"), Outcome.REQUEUED, Action.REQUEUE),
        (GaveBackToInteractive("bulk job b went back"), Outcome.GIVEN_BACK, Action.REQUEUE),
        (SoftTimeLimitExceeded("soft"), Outcome.TIMED_OUT, Action.FAIL),
        (TimeLimitExceeded("hard"), Outcome.TIMED_OUT, Action.FAIL),
        (JobCanceled("canceled at step 2"), Outcome.CANCELED, Action.FAIL),
        (RenderCancelled("stopped"), Outcome.FAILED, Action.FAIL),
        (ModelLoadError("gone"), Outcome.FAILED, Action.FAIL),
        (WorkerError("render failed in the render process"), Outcome.FAILED, Action.FAIL),
        (RuntimeError("anything else"), Outcome.FAILED, Action.FAIL),
    ],
)
def test_each_exception_has_its_outcome_and_action(error, outcome, action):
    decision = decide(error, 0, POLICY)
    assert (decision.outcome, decision.action) == (outcome, action)
    assert (decision.countdown_s is not None) == (action is Action.RETRY)
    assert decision.retries == 0 and not decision.exhausted


def test_never_retried_whatever_the_retries_left():
    assert set(NEVER_RETRY) == {InvalidJob, JobAbandoned}
    for retries in (0, 1, 99):
        assert decide(InvalidJob("x"), retries, POLICY).action is Action.FAIL


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_transient_storage_faults_are_retried_until_the_last_retry(retries):
    decision = decide(TransientStorageError("timeout"), retries, POLICY)
    assert decision == Decision(Outcome.RETRIED, Action.RETRY, retries, decision.countdown_s)


@pytest.mark.parametrize("retries", [3, 4, 20])
def test_after_the_last_retry_the_job_fails(retries):
    decision = decide(TransientStorageError("timeout"), retries, POLICY)
    assert decision == Decision(Outcome.FAILED, Action.FAIL, retries, None, exhausted=True)


def test_no_retries_allowed_fails_at_once():
    policy = RetryPolicy(max_retries=0, backoff=Backoff(5.0, 120.0))
    assert decide(TransientStorageError("timeout"), 0, policy).exhausted


@pytest.mark.parametrize("retries", [0, 1, 2, 5, 10, 19])
def test_countdown_is_jittered_below_the_doubling_ceiling_and_the_cap(retries):
    policy = RetryPolicy(max_retries=20, backoff=Backoff(5.0, 120.0))
    rng = random.Random(retries)
    countdowns = [
        decide(TransientStorageError("x"), retries, policy, rng).countdown_s for _ in range(200)
    ]
    ceiling = min(120.0, 5.0 * 2**retries)
    assert all(0.0 <= c <= ceiling for c in countdowns)
    assert max(countdowns) > 0.5 * ceiling and len(set(countdowns)) > 100  # jittered, full range


def test_policy_from_settings_takes_a_cap_below_the_base_as_the_base():
    settings = WorkerSettings(
        model_dir="/m",
        s3_access_key_id="k",
        s3_secret_access_key="s",
        task_max_retries=5,
        retry_backoff_base_s=10.0,
        retry_backoff_cap_s=2.0,
    )
    policy = RetryPolicy.of(settings)
    assert policy == RetryPolicy(5, Backoff(10.0, 10.0))
    assert decide(TransientStorageError("x"), 4, policy).countdown_s <= 10.0


def test_outcomes_are_the_metric_labels():
    assert metrics.OUTCOMES == (
        "succeeded",
        "invalid",
        "failed",
        "retried",
        "abandoned",
        "requeued",
        "given_back",
        "timed_out",
        "canceled",
    )
    assert Outcome.TIMED_OUT == "timed_out" and str(Outcome.TIMED_OUT) == "timed_out"


def test_the_task_declares_the_never_retry_set_to_celery():
    from worker.consumer.tasks import render_job

    assert tuple(render_job.throws) == NEVER_RETRY + CANCELED_BY
