"""worker/render/slot_pool.py: a free render slot goes to interactive jobs first, and a bulk
job yields a free slot once to interactive work queued in Redis."""

from __future__ import annotations

import threading
import time

import pytest

from lcm_fleet.contract import JobClass
from worker.errors import GaveBackToInteractive
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


def take_job(
    pool: SlotPool[str], job_class: JobClass, job_id: str, got: list[tuple[JobClass, str]]
) -> threading.Thread:
    def run() -> None:
        got.append((job_class, pool.get(job_class, timeout_s=5, job_id=job_id)))

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


def test_a_bulk_job_waiting_for_a_busy_slot_gives_its_message_back_once() -> None:
    queued = threading.Event()
    pool: SlotPool[str] = SlotPool(
        interactive_waiting=queued.is_set, bulk_yield_max_s=30, give_back=True
    )
    # The only slot renders another job; nothing interactive queued: the bulk job waits.
    errors: list[BaseException] = []

    def wait_for_slot() -> None:
        try:
            pool.get(BULK, timeout_s=5, job_id="b1")
        except BaseException as e:
            errors.append(e)

    waiting = threading.Thread(target=wait_for_slot)
    waiting.start()
    time.sleep(0.2)
    assert errors == [] and waiting.is_alive()
    queued.set()  # an interactive job is queued for this worker: b1 goes back, slot still busy
    waiting.join(2)
    assert len(errors) == 1 and isinstance(errors[0], GaveBackToInteractive)
    assert "b1" in str(errors[0]) and pool.gave_back == 1
    # Delivered again to this worker: b1 is not given back twice; it yields the free slot.
    pool.put("r0")
    got: list[tuple[JobClass, str]] = []
    bulk = take_job(pool, BULK, "b1", got)
    time.sleep(0.2)
    assert got == [] and pool.yields == 1 and pool.gave_back == 1
    queued.clear()
    assert pool.get(INTERACTIVE, timeout_s=1) == "r0"
    pool.put("r0")
    bulk.join(2)
    assert got == [(BULK, "r0")]


def test_give_back_takes_a_free_slot_at_once_with_nothing_interactive_queued() -> None:
    pool: SlotPool[str] = SlotPool(interactive_waiting=lambda: False, give_back=True)
    pool.put("r0")
    assert pool.get(BULK, timeout_s=1, job_id="b1") == "r0" and pool.gave_back == 0


def test_give_back_with_a_free_slot_and_interactive_work_queued_since_the_fetch() -> None:
    answers = iter([False])  # nothing queued when the bulk job came, then an interactive job

    pool: SlotPool[str] = SlotPool(
        interactive_waiting=lambda: next(answers, True), bulk_yield_max_s=0.3, give_back=True
    )
    pool.put("r0")
    with pytest.raises(GaveBackToInteractive):
        pool.get(BULK, timeout_s=1, job_id="b1")
    assert pool.get(INTERACTIVE, timeout_s=1) == "r0"  # the slot was not taken


def test_a_bulk_job_fetched_while_interactive_work_waited_keeps_its_turn() -> None:
    # Bulk's turn in the fetch order (LCM_INTERACTIVE_BURST): not given back, it only
    # yields the free slot for at most bulk_yield_max_s.
    pool: SlotPool[str] = SlotPool(
        interactive_waiting=lambda: True, bulk_yield_max_s=0.3, give_back=True
    )
    pool.put("r0")
    assert pool.get(BULK, timeout_s=5, job_id="b1") == "r0"
    assert pool.gave_back == 0 and pool.yields == 1


def test_an_interactive_job_waiting_here_is_not_a_reason_to_give_back() -> None:
    # The interactive job is this worker's already: it goes first; the bulk job just waits.
    pool: SlotPool[str] = SlotPool(interactive_waiting=lambda: False, give_back=True)
    got: list[tuple[JobClass, str]] = []
    interactive = take(pool, INTERACTIVE, got)
    bulk = take_job(pool, BULK, "b1", got)
    time.sleep(0.1)
    pool.put("r0")
    interactive.join(2)
    pool.put("r0")
    bulk.join(2)
    assert got == [(INTERACTIVE, "r0"), (BULK, "r0")] and pool.gave_back == 0
