"""Job and batch records on the real Redis: transitions, ownership, cancel, exact batch counts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lcm_fleet.contract import ImageRecord, Job, JobClass, JobResult, JobState
from lcm_fleet.keys import batch_key, job_key
from lcm_fleet.records import (
    ANY_OWNER,
    UNKNOWN_OWNER,
    CancelOutcome,
    RecordStore,
    StartOutcome,
)
from tests.integration.conftest import TEST_REDIS_URL


@pytest.fixture
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def records(redis_client: Any) -> RecordStore:
    return RecordStore(redis_client, ttl_s=600)


def _job(**over: Any) -> Job:
    return Job(prompt="a red circle", job_id=over.pop("job_id", uuid.uuid4().hex), **over)


def _result(job: Job) -> JobResult:
    return JobResult(
        job_id=job.job_id,
        prompt=job.prompt,
        steps=job.steps,
        guidance_scale=8.0,
        width=64,
        height=64,
        images=[ImageRecord(index=0, seed=job.seed, key="k", uri="s3://b/k", sha256="0", bytes=1)],
        model_manifest_sha256="m",
        durations_s={"total": 0.1},
        worker="w",
    )


def test_a_job_moves_queued_running_succeeded(records: RecordStore) -> None:
    job = _job()
    records.create_job(job, "key-a", now=100.0)
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.state is JobState.QUEUED and rec.created_at == 100.0
    assert rec.job == job and rec.owner == "key-a"

    assert records.start(job, "w1", now=101.0) is StartOutcome.RUN
    assert records.progress(job.job_id, 1, 1, 2, 4, now=101.5)
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.state is JobState.RUNNING and rec.started_at == 101.0
    assert rec.progress is not None and (rec.progress.step, rec.progress.steps) == (2, 4)

    assert records.succeed(job.job_id, _result(job), now=102.0).done
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.state is JobState.SUCCEEDED and rec.finished_at == 102.0
    assert rec.result is not None and rec.result.images[0].key == "k"
    # A finished job takes no more progress and no second finish.
    assert not records.progress(job.job_id, 1, 1, 3, 4)
    assert not records.fail(job.job_id, "late").done


def test_unknown_and_other_owners_jobs_are_not_found(records: RecordStore) -> None:
    job = _job()
    records.create_job(job, "key-a")
    assert records.get_job("no-such-" + uuid.uuid4().hex) is None
    assert records.get_job(job.job_id, "key-b") is None
    assert records.get_job(job.job_id, "key-a") is not None
    assert records.get_job(job.job_id, ANY_OWNER) is not None
    assert records.cancel_job(job.job_id, "key-b") is CancelOutcome.NOT_FOUND
    assert records.get_job(job.job_id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_records_expire(records: RecordStore, redis_client: Any) -> None:
    job = _job()
    records.create_job(job, "local")
    assert 0 < redis_client.ttl(job_key(job.job_id)) <= 600


def test_cancel_queued_job_is_never_started(records: RecordStore) -> None:
    job = _job()
    records.create_job(job, "local")
    assert records.cancel_job(job.job_id) is CancelOutcome.CANCELED
    assert records.start(job, "w1") is StartOutcome.SKIP
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.state is JobState.CANCELED and rec.finished_at is not None


def test_cancel_running_job_is_requested_then_ends_canceled(records: RecordStore) -> None:
    job = _job(num_images=3)
    records.create_job(job, "local")
    records.start(job, "w1")
    assert not records.cancel_requested(job.job_id)
    assert records.cancel_job(job.job_id) is CancelOutcome.REQUESTED
    assert records.cancel_requested(job.job_id)
    assert records.get_job(job.job_id).state is JobState.RUNNING  # type: ignore[union-attr]
    done = records.fail(job.job_id, "canceled at step 2", canceled=True, partial_keys=["a", "b"])
    assert done.done and done.before is JobState.RUNNING
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.state is JobState.CANCELED
    assert rec.partial_keys == ("a", "b") and rec.reason == "canceled at step 2"


def test_cancel_of_a_finished_job_changes_nothing(records: RecordStore) -> None:
    job = _job()
    records.create_job(job, "local")
    records.start(job, "w1")
    records.succeed(job.job_id, _result(job))
    assert records.cancel_job(job.job_id) is CancelOutcome.FINISHED
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.state is JobState.SUCCEEDED and not rec.cancel_requested


def test_a_job_without_a_record_gets_one_at_start(records: RecordStore) -> None:
    job = _job()
    assert records.start(job, "w1", job_class=JobClass.BULK) is StartOutcome.RUN
    rec = records.get_job(job.job_id)
    assert rec is not None and rec.owner == UNKNOWN_OWNER and rec.state is JobState.RUNNING
    assert rec.job_class is JobClass.BULK  # the class of the queue it came from


def test_requeue_and_redelivery(records: RecordStore) -> None:
    job = _job()
    records.create_job(job, "local")
    records.start(job, "w1")
    assert records.requeue(job.job_id, "render process died").done
    assert records.get_job(job.job_id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert records.start(job, "w2") is StartOutcome.RUN
    assert records.start(job, "w3") is StartOutcome.RUN  # redelivered while running
    assert records.get_job(job.job_id).worker == "w3"  # type: ignore[union-attr]


def test_batch_counts_stay_exact_under_concurrent_workers(records: RecordStore) -> None:
    batch = "b-" + uuid.uuid4().hex
    records.create_batch(batch, "key-a", source="test")
    jobs = [_job(job_id=f"{batch}-{i}") for i in range(120)]
    for job in jobs:
        records.create_job(job, "key-a", batch_id=batch)
    assert not records.seal_batch(batch)
    rec = records.get_batch(batch)
    assert rec is not None and rec.total == 120 and rec.counts.queued == 120
    assert rec.sealed and not rec.finished

    finished: list[bool] = []

    def work(mine: list[Job]) -> None:
        for i, job in enumerate(mine):
            assert records.start(job, threading.current_thread().name) is StartOutcome.RUN
            if i % 3 == 0:
                done = records.fail(job.job_id, "bad")
            else:
                done = records.succeed(job.job_id, _result(job))
            finished.append(done.batch_finished)

    threads = [threading.Thread(target=work, args=(jobs[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec = records.get_batch(batch)
    assert rec is not None and rec.finished
    assert rec.counts.succeeded + rec.counts.failed == 120
    assert rec.counts.failed == 6 * 7  # indices 0, 3, ..., 18 of each thread's 20
    assert rec.counts.queued == rec.counts.running == 0
    assert finished.count(True) == 1  # exactly one job saw the batch finish
    assert records.batch_job_ids(batch, 0, 5) == [f"{batch}-{i}" for i in range(5)]
    assert len(records.batch_job_ids(batch, 100, 100)) == 20


def test_batch_cancel_cancels_what_is_not_finished(records: RecordStore) -> None:
    batch = "b-" + uuid.uuid4().hex
    records.create_batch(batch, "key-a")
    a, b, c = (_job(job_id=f"{batch}-{i}") for i in range(3))
    for job in (a, b, c):
        records.create_job(job, "key-a", batch_id=batch)
    records.seal_batch(batch)
    records.start(a, "w")
    records.succeed(a.job_id, _result(a))
    records.start(b, "w")
    assert records.cancel_batch(batch, "key-b")[CancelOutcome.NOT_FOUND] == 1
    counts = records.cancel_batch(batch, "key-a")
    assert counts[CancelOutcome.FINISHED] == 1
    assert counts[CancelOutcome.REQUESTED] == 1
    assert counts[CancelOutcome.CANCELED] == 1
    records.fail(b.job_id, "canceled", canceled=True)
    rec = records.get_batch(batch)
    assert rec is not None and rec.finished
    assert (rec.counts.succeeded, rec.counts.canceled) == (1, 2)


def test_a_resubmitted_job_is_counted_once(records: RecordStore, redis_client: Any) -> None:
    batch = "b-" + uuid.uuid4().hex
    records.create_batch(batch, "local")
    job = _job(job_id=f"{batch}-0")
    records.create_job(job, "local", batch_id=batch)
    records.start(job, "w")
    records.fail(job.job_id, "storage down")
    records.create_job(job, "local", batch_id=batch)  # resumed
    records.seal_batch(batch)
    rec = records.get_batch(batch)
    assert rec is not None and rec.total == 1 and rec.counts.queued == 1
    assert rec.counts.failed == 0 and not rec.finished
    assert int(redis_client.hget(batch_key(batch), "done")) == 0


def test_in_flight_counts_queued_and_running_jobs_per_owner(records: RecordStore) -> None:
    owner = f"key-{uuid.uuid4().hex[:8]}"
    jobs = [_job() for _ in range(4)]
    for job in jobs:
        records.create_job(job, owner)
    records.create_job(_job(), "someone-else")
    assert records.in_flight(owner) == 4
    assert records.start(jobs[0], "w") is StartOutcome.RUN
    assert records.in_flight(owner) == 4  # running is still in flight
    assert records.succeed(jobs[0].job_id, _result(jobs[0])).done
    assert records.cancel_job(jobs[1].job_id, owner) is CancelOutcome.CANCELED
    records.start(jobs[2], "w")
    assert records.fail(jobs[2].job_id, "boom").done
    assert records.in_flight(owner) == 1
    # Refused transitions and a second cancel change nothing.
    assert not records.fail(jobs[0].job_id, "late").done
    assert records.cancel_job(jobs[1].job_id, owner) is CancelOutcome.FINISHED
    assert records.in_flight(owner) == 1
    # A requeued job stays in flight; a finished job submitted again is in flight again.
    records.start(jobs[3], "w")
    assert records.requeue(jobs[3].job_id, "retry").done
    assert records.in_flight(owner) == 1
    records.create_job(jobs[0], owner)
    assert records.in_flight(owner) == 2
    # An in-flight job submitted again is counted once; one taken by another owner moves.
    records.create_job(jobs[3], owner)
    assert records.in_flight(owner) == 2
    records.create_job(jobs[3], "someone-else")
    assert records.in_flight(owner) == 1 and records.in_flight("someone-else") >= 2
    assert records.cancel_job(jobs[0].job_id) is CancelOutcome.CANCELED
    assert records.in_flight(owner) == 0


def test_in_flight_counts_stay_exact_under_concurrent_workers(records: RecordStore) -> None:
    owner = f"key-{uuid.uuid4().hex[:8]}"
    jobs = [_job() for _ in range(60)]
    for job in jobs:
        records.create_job(job, owner)

    def work(part: list[Job]) -> None:
        for job in part:
            records.start(job, "w")
            records.succeed(job.job_id, _result(job))

    threads = [threading.Thread(target=work, args=(jobs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for job in jobs[:20]:
        records.cancel_job(job.job_id, owner)
    for thread in threads:
        thread.join()
    assert records.in_flight(owner) == 0
