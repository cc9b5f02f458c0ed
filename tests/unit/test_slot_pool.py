"""worker/render/slot_pool.py: a free render slot goes to interactive jobs first, and a bulk
job yields a free slot once to interactive work queued in Redis."""

from __future__ import annotations

import threading
import time

import pytest

from lcm_fleet.contract import JobClass
from worker.render.slot_pool import SlotPool, SlotTimeout

BULK, INTERACTIVE = JobClass.BULK, JobClass.INTERACTIVE


def take(
    pool: SlotPool[str], job_class: JobClass, got: list[tuple[JobClass, str]]
) -> threading.Thread:
    def run() -> None:
        got.append((job_class, pool.get(job_class, timeout_s=5)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_freed_slot_goes_to_the_interactive_job_that_waits_beside_a_bulk_one() -> None:
    pool: SlotPool[str] = SlotPool()
    got: list[tuple[JobClass, str]] = []
    bulk = take(pool, BULK, got)
    time.sleep(0.05)
    interactive = take(pool, INTERACTIVE, got)
    time.sleep(0.05)
    pool.put("r0")
    interactive.join(2)
    assert got == [(INTERACTIVE, "r0")]
    pool.put("r0")
    bulk.join(2)
    assert got[-1] == (BULK, "r0")


def test_a_bulk_job_yields_a_free_slot_until_the_queued_interactive_job_takes_it() -> None:
    queued = threading.Event()
    queued.set()  # an interactive job waits in Redis
    pool: SlotPool[str] = SlotPool(interactive_waiting=queued.is_set, bulk_yield_max_s=30)
    pool.put("r0")
    got: list[tuple[JobClass, str]] = []
    bulk = take(pool, BULK, got)
    time.sleep(0.2)
    assert got == [] and pool.yields == 1  # the slot is free, and held for the interactive job
    # The thread that stored the last job's images fetches the interactive job.
    queued.clear()
    assert pool.get(INTERACTIVE, timeout_s=1) == "r0"
    time.sleep(0.1)
    assert got == []  # the interactive job renders; the bulk job waits for the slot
    queued.set()  # another interactive job is queued: the bulk job yielded once already
    pool.put("r0")
    bulk.join(2)
    assert got == [(BULK, "r0")]


def test_a_bulk_job_yields_for_at_most_bulk_yield_max_s() -> None:
    pool: SlotPool[str] = SlotPool(interactive_waiting=lambda: True, bulk_yield_max_s=0.3)
    pool.put("r0")
    t0 = time.monotonic()
    assert pool.get(BULK, timeout_s=5) == "r0"
    assert 0.3 <= time.monotonic() - t0 < 2.0


def test_with_nothing_interactive_queued_a_bulk_job_takes_a_free_slot_at_once() -> None:
    asked: list[int] = []

    def nothing_queued() -> bool:
        asked.append(1)
        return False

    pool: SlotPool[str] = SlotPool(interactive_waiting=nothing_queued, bulk_yield_max_s=30)
    pool.put("r0")
    t0 = time.monotonic()
    assert pool.get(BULK, timeout_s=5) == "r0"
    assert time.monotonic() - t0 < 0.5 and asked == [1] and pool.yields == 0


def test_redis_away_does_not_hold_a_free_slot() -> None:
    def away() -> bool:
        raise ConnectionError("Redis is away")

    pool: SlotPool[str] = SlotPool(interactive_waiting=away, bulk_yield_max_s=30)
    pool.put("r0")
    assert pool.get(BULK, timeout_s=1) == "r0"


def test_no_free_slot_within_the_timeout() -> None:
    pool: SlotPool[str] = SlotPool()
    with pytest.raises(SlotTimeout):
        pool.get(INTERACTIVE, timeout_s=0.05)
    with pytest.raises(SlotTimeout):
        pool.get(BULK, timeout_s=0.05)
