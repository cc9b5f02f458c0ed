"""The submission script on the real Redis: the record and its Celery message in one round
trip, the HTTP API's guards (revoked key, Idempotency-Key, job id in use, jobs in flight)
checked atomically, and a refusal that changes nothing."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lcm_fleet.contract import TASK_RENDER, Job, parse_job
from lcm_fleet.keys import api_key_key, in_flight_key, job_key
from lcm_fleet.records import Guards, RecordStore, SubmitStatus
from producer.api import submit_job
from producer.queue import broker_is_records, cached_client, make_client, task_message
from producer.settings import ProducerSettings
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


@pytest.fixture
def owner(redis_client: Any) -> Iterator[str]:
    """An API key's id with its record (the script reads it for revocation)."""
    key_id = uuid.uuid4().hex[:16]
    redis_client.hset(api_key_key(key_id), mapping={"digest": "d", "name": "t"})
    yield key_id
    redis_client.delete(api_key_key(key_id), in_flight_key(key_id))


def _job(**fields: Any) -> Job:
    return parse_job({"prompt": "a red circle", "seed": 1, **fields})


def test_submit_job_pushes_what_send_task_would_after_the_record(redis_client: Any) -> None:
    queue = f"lcm.test.script.{uuid.uuid4().hex[:8]}"
    settings = ProducerSettings(redis_url=TEST_REDIS_URL, queue=queue)
    job = _job()
    # A result left by an earlier run of the id is dropped with the push.
    redis_client.set(f"celery-task-meta-{job.job_id}", "{}")
    handle = submit_job(job, settings)
    assert handle.record() is not None and handle.record().state.value == "queued"
    assert redis_client.get(f"celery-task-meta-{job.job_id}") is None
    (ours,) = [json.loads(m) for m in redis_client.lrange(queue, 0, -1)]
    # What Celery's own send_task pushes for the same job, on the same Redis (from the same
    # client: its reply_to is the client's).
    client = cached_client(settings)
    client.send_task(
        TASK_RENDER,
        args=[job.model_dump(mode="json")],
        task_id=job.job_id,
        queue=queue,
        headers={"lcm_submitted_at": ours["headers"]["lcm_submitted_at"]},
        retry=False,
    )
    theirs = json.loads(redis_client.lrange(queue, 0, 0)[0])
    redis_client.delete(queue, job_key(job.job_id), f"_kombu.binding.{queue}")
    for message in (ours, theirs):
        message["properties"].pop("delivery_tag")
        message["headers"].pop("origin")
    assert ours == theirs


def test_the_in_flight_limit_holds_under_concurrent_submits(
    records: RecordStore, redis_client: Any, owner: str
) -> None:
    limit, tries = 5, 40
    queue = f"lcm.test.script.{uuid.uuid4().hex[:8]}"
    client = make_client(ProducerSettings(redis_url=TEST_REDIS_URL, queue=queue))
    jobs = [_job() for _ in range(tries)]
    outcomes: list[SubmitStatus] = []
    start = threading.Barrier(8)

    def submit(part: list[Job]) -> None:
        start.wait()
        for job in part:
            message = task_message(client, TASK_RENDER, [], job.job_id, queue)
            guards = Guards(api_key=api_key_key(owner), max_in_flight=limit, refuse_used_id=True)
            outcomes.append(records.submit(job, owner, guards=guards, enqueue=message).status)

    threads = [threading.Thread(target=submit, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert outcomes.count(SubmitStatus.QUEUED) == limit
        assert outcomes.count(SubmitStatus.IN_FLIGHT) == tries - limit
        assert records.in_flight(owner) == limit == redis_client.llen(queue)
        recorded = [j for j in jobs if redis_client.exists(job_key(j.job_id))]
        assert len(recorded) == limit
    finally:
        redis_client.delete(queue, *[job_key(j.job_id) for j in jobs])


def test_refusals_change_nothing(records: RecordStore, redis_client: Any, owner: str) -> None:
    queue = f"lcm.test.script.{uuid.uuid4().hex[:8]}"
    client = make_client(ProducerSettings(redis_url=TEST_REDIS_URL, queue=queue))
    idem = f"lcm-fleet:test:idem:{uuid.uuid4().hex}"
    first, second = _job(), _job()

    def submit(job: Job, **guards: Any) -> Any:
        message = task_message(client, TASK_RENDER, [], job.job_id, queue)
        full = Guards(api_key=api_key_key(owner), refuse_used_id=True, **guards)
        return records.submit(job, owner, guards=full, enqueue=message)

    try:
        stored = json.dumps({"body": "b", "id": first.job_id})
        assert submit(first, idempotency=(idem, stored, 60)).status is SubmitStatus.QUEUED
        # The same Idempotency-Key answers the earlier value and queues nothing.
        again = submit(second, idempotency=(idem, "other", 60))
        assert again.status is SubmitStatus.EARLIER and again.detail == stored
        # The own id still in flight; another owner's id.
        assert submit(first).detail == "own"
        other = _job()
        records.create_job(other, "someone-else")
        assert submit(other).status is SubmitStatus.ID_IN_USE and submit(other).detail == "other"
        assert submit(second, max_in_flight=1).status is SubmitStatus.IN_FLIGHT
        redis_client.hset(api_key_key(owner), "revoked_at", "1")
        assert submit(second).status is SubmitStatus.REVOKED
        assert not redis_client.exists(job_key(second.job_id))
        assert records.in_flight(owner) == 1 and redis_client.llen(queue) == 1
        assert records.get_job(other.job_id).owner == "someone-else"
    finally:
        redis_client.delete(queue, idem, *[job_key(j.job_id) for j in (first, second)])


@pytest.mark.parametrize("broker_apart", [False, True], ids=["one-script", "push-after"])
def test_a_job_s_class_is_in_its_record_and_picks_its_queue(
    redis_client: Any, broker_apart: bool
) -> None:
    """Interactive jobs go to the queue, bulk ones to the bulk queue beside it, each recorded
    with its class, whether the submission script pushes the message itself or the broker is
    another Redis (here: the same one under another URL, so the push follows the script)."""
    from lcm_fleet.contract import JobClass

    queue = f"lcm.test.script.{uuid.uuid4().hex[:8]}"
    records_url = TEST_REDIS_URL.replace("127.0.0.1", "localhost") if broker_apart else None
    settings = ProducerSettings(
        redis_url=TEST_REDIS_URL, queue=queue, records_redis_url=records_url
    )
    assert broker_is_records(settings) is not broker_apart
    interactive, bulk, explicit = _job(), _job(width=64, height=64), _job()
    lists = [queue, f"{queue}.64x64.bulk", f"{queue}.mine.bulk"]
    try:
        submit_job(interactive, settings)
        submit_job(bulk, settings, job_class=JobClass.BULK)
        submit_job(explicit, settings, f"{queue}.mine", job_class=JobClass.BULK)
        classes = (JobClass.INTERACTIVE, JobClass.BULK, JobClass.BULK)
        for job, job_class, where in zip(
            (interactive, bulk, explicit), classes, lists, strict=True
        ):
            record = RecordStore(redis_client, 600).get_job(job.job_id)
            assert record is not None and record.job_class is job_class
            (message,) = [json.loads(m) for m in redis_client.lrange(where, 0, -1)]
            assert message["headers"]["id"] == job.job_id
            assert message["properties"]["delivery_info"]["routing_key"] == where
    finally:
        redis_client.delete(*lists, *(job_key(j.job_id) for j in (interactive, bulk, explicit)))
