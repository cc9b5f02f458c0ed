"""A job's record shows while its storage writes retry (worker/results/waiting.py): set at
the first retry, cleared once no write of the job retries any more."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from lcm_fleet.backoff import Backoff
from lcm_fleet.errors import TransientStorageError
from lcm_fleet.records import Waiting, WaitingFor
from lcm_fleet.storage import ObjectStore
from worker.results.waiting import StorageWaiting


class Shown:
    """What the record was told (RecordStore.waiting's interface)."""

    def __init__(self) -> None:
        self.calls: list[Waiting | None] = []

    def waiting(self, job_id: str, waiting: Waiting | None, now: float | None = None) -> bool:
        assert job_id == "job-1"
        self.calls.append(waiting)
        return True


def _store(client: Any, watch: StorageWaiting, attempts: int = 5) -> ObjectStore:
    store = ObjectStore(client, "bucket", Backoff(base_s=0.001, cap_s=0.001, attempts=attempts))
    return store.watched(watch)


def test_a_write_that_retries_shows_waiting_until_it_succeeds(fake_s3) -> None:
    shown = Shown()
    clock = iter([100.0, 101.0, 102.0])
    watch = StorageWaiting(shown, "job-1", update_every_s=5.0, clock=lambda: next(clock))  # type: ignore[arg-type]
    outage = [EndpointConnectionError(endpoint_url="http://s3:1")] * 3
    client = fake_s3(outage)
    _store(client, watch).put("jobs/job-1/000.png", b"png", "image/png")
    assert "jobs/job-1/000.png" in client.objects
    # Shown at the first retry (the next two fall within update_every_s), then cleared.
    assert len(shown.calls) == 2
    first, last = shown.calls
    assert first is not None and last is None
    assert first.waiting_for is WaitingFor.STORAGE and first.since == 100.0
    assert first.error.startswith("TransientStorageError: put s3://bucket/jobs/job-1/000.png")
    assert len(first.error) <= 200


def test_a_write_that_gives_up_clears_it_too(fake_s3) -> None:
    shown = Shown()
    watch = StorageWaiting(shown, "job-1")  # type: ignore[arg-type]
    client = fake_s3([EndpointConnectionError(endpoint_url="http://s3:1")] * 2)
    with pytest.raises(TransientStorageError):
        _store(client, watch, attempts=2).put("k", b"x", "image/png")
    assert [c is None for c in shown.calls] == [False, True]


def test_a_write_without_retries_touches_no_record(fake_s3) -> None:
    shown = Shown()
    _store(fake_s3(), StorageWaiting(shown, "job-1")).put("k", b"x", "image/png")  # type: ignore[arg-type]
    assert shown.calls == []


def test_two_writes_retrying_keep_it_until_both_settle() -> None:
    shown = Shown()
    watch = StorageWaiting(shown, "job-1", update_every_s=0.0)  # type: ignore[arg-type]
    watch.retrying("put a", TransientStorageError("down"))
    watch.retrying("put b", TransientStorageError("still down"))
    watch.settled("put a")
    assert shown.calls[-1] is not None  # b still retries
    watch.settled("put b")
    assert shown.calls[-1] is None
    assert shown.calls[0] is not None and shown.calls[1] is not None
    assert shown.calls[0].since == shown.calls[1].since  # the same wait, its last error


def test_a_record_that_cannot_be_written_does_not_stop_the_write() -> None:
    class Away:
        def waiting(self, *args: Any, **kwargs: Any) -> bool:
            raise ConnectionError("redis away")

    watch = StorageWaiting(Away(), "job-1")  # type: ignore[arg-type]
    watch.retrying("put a", TransientStorageError("down"))
    watch.settled("put a")
