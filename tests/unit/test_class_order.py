"""The class order of fetches (lcm_fleet/consuming/order.py), against BRPOP's rule: Redis
answers from the first non-empty key, in the order the channel gives."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcm_fleet.consuming.order import ClassOrder
from worker.render.sizes import queues_for

QUEUES = queues_for("lcm.render", [(64, 64)])  # two interactive queues, then their bulk ones


def brpop(order: ClassOrder, lists: dict[str, deque[str]]) -> str | None:
    """One fetch as kombu does it: consume, BRPOP (first non-empty key), rotate."""
    for queue in order.consume(len(order.items)):
        if lists[queue]:
            order.rotate(queue)
            return lists[queue].popleft()
    return None


def fill(interactive: int, bulk: int) -> dict[str, deque[str]]:
    lists: dict[str, deque[str]] = {q: deque() for q in QUEUES}
    lists["lcm.render"].extend(f"i{n}" for n in range(interactive))
    lists["lcm.render.bulk"].extend(f"b{n}" for n in range(bulk))
    return lists


def test_interactive_queues_come_first_and_keep_their_round_robin():
    order = ClassOrder(burst=8)
    order.update(QUEUES)
    assert order.consume(4) == [
        "lcm.render",
        "lcm.render.64x64",
        "lcm.render.bulk",
        "lcm.render.64x64.bulk",
    ]
    order.rotate("lcm.render")
    assert order.consume(4)[:2] == ["lcm.render.64x64", "lcm.render"]
    order.rotate("lcm.render.bulk")
    assert order.consume(4)[2:] == ["lcm.render.64x64.bulk", "lcm.render.bulk"]


def test_after_a_burst_of_interactive_the_next_fetch_puts_bulk_first():
    order = ClassOrder(burst=3)
    order.update(QUEUES)
    for _ in range(3):
        first = order.consume(4)[0]
        assert not first.endswith(".bulk")
        order.rotate(first)
    assert order.consume(4)[:2] == ["lcm.render.bulk", "lcm.render.64x64.bulk"]
    order.rotate("lcm.render.bulk")  # bulk served: interactive first again
    assert order.streak == 0 and not order.consume(4)[0].endswith(".bulk")


def test_a_bulk_first_fetch_that_finds_no_bulk_starts_the_count_again():
    order = ClassOrder(burst=2)
    order.update(QUEUES)
    lists = fill(interactive=6, bulk=0)
    got = [brpop(order, lists) for _ in range(3)]
    assert got == ["i0", "i1", "i2"] and order.streak == 0
    lists["lcm.render.bulk"].append("b0")  # arrives now: waits for at most `burst` more
    assert [brpop(order, lists) for _ in range(3)] == ["i3", "i4", "b0"]


def test_interactive_jobs_queued_after_bulk_ones_are_fetched_first():
    order = ClassOrder(burst=8)
    order.update(QUEUES)
    lists = fill(interactive=0, bulk=10)
    assert brpop(order, lists) == "b0"
    lists["lcm.render"].extend(["i0", "i1", "i2"])
    assert [brpop(order, lists) for _ in range(4)] == ["i0", "i1", "i2", "b1"]
    # Only bulk left: bulk still runs, to the end.
    assert [brpop(order, lists) for _ in range(9)] == [f"b{n}" for n in range(2, 10)] + [None]


@given(burst=st.integers(1, 12), interactive=st.integers(0, 60), bulk=st.integers(0, 60))
def test_while_both_wait_bulk_gets_one_fetch_in_every_burst_plus_one(burst, interactive, bulk):
    order = ClassOrder(burst=burst)
    order.update(QUEUES)
    lists = fill(interactive, bulk)
    got = []
    while (item := brpop(order, lists)) is not None:
        got.append(item)
    assert sorted(got) == sorted(
        [f"i{n}" for n in range(interactive)] + [f"b{n}" for n in range(bulk)]
    )
    # Every run of interactive fetches while bulk still waits is at most `burst` long ...
    run = 0
    bulk_left = bulk
    for item in got:
        if item.startswith("b"):
            bulk_left -= 1
            run = 0
        elif bulk_left:
            run += 1
            assert run <= burst
    # ... and interactive is never behind more than one bulk fetch in a row while it waits.
    interactive_left = interactive
    for first, second in itertools.pairwise(got):
        if first.startswith("i"):
            interactive_left -= 1
        if first.startswith("b") and second.startswith("b"):
            assert interactive_left == 0


def test_burst_must_be_positive():
    with pytest.raises(ValueError, match="burst is 0"):
        ClassOrder(burst=0)


def test_the_workers_app_fetches_in_class_order_one_job_per_thread(monkeypatch) -> None:
    from worker.consumer.app import configure
    from worker.runtime import JOBS_PER_RENDER_PROCESS
    from worker.settings import WorkerSettings

    monkeypatch.setenv("LCM_MODEL_DIR", "/nonexistent")
    monkeypatch.setenv("LCM_S3_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("LCM_S3_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("LCM_INTERACTIVE_BURST", "5")
    app = configure(WorkerSettings(), "w@h")  # type: ignore[call-arg]
    assert app.conf.broker_transport_options["lcm_interactive_burst"] == 5
    # Prefetch cannot defeat the order: a worker holds no job beyond one per thread (two
    # threads per render process: one rendering, one storing or next to render).
    assert app.conf.worker_prefetch_multiplier == 1 and app.conf.task_acks_late
    assert JOBS_PER_RENDER_PROCESS == 2
