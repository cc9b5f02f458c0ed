"""Interactive work ahead of bulk, without starving bulk (lcm_fleet/consuming/order.py).

On real Redis: the guarded kombu channel's fetch order, exactly (one delivery at a time, as
a worker thread takes them); on a real worker: interactive jobs queued behind a bulk backlog
start before the rest of it, and the bulk backlog still runs to the end; and a worker started
on a continuous interactive backlog with bulk waiting takes bulk once in every burst + 1
(Celery's "received" lines, logged in fetch order).
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
import uuid
from typing import Any

import redis
from kombu import Connection, Consumer, Queue

from lcm_fleet.consuming import broker_guard
from lcm_fleet.contract import TASK_RENDER, JobClass, JobState, class_queue, parse_job
from producer.api import JobHandle, submit, submit_job
from producer.settings import ProducerSettings
from tests import poison
from tests.integration.conftest import start_worker, stop_worker, worker_env
from worker.runtime import JOBS_PER_RENDER_PROCESS

BURST = 3


def _fetch_order(url: str, queue: str, count: int) -> list[str]:
    """Task ids in the order the guarded channel delivers them, one held at a time."""
    options = {
        broker_guard.OPTION_MAX_MESSAGE_BYTES: 1 << 20,
        broker_guard.OPTION_TASKS: [TASK_RENDER],
        broker_guard.OPTION_MAX_ETA_AHEAD_S: 600.0,
        broker_guard.OPTION_INTERACTIVE_BURST: BURST,
    }
    got: list[str] = []

    def take(_body: Any, message: Any) -> None:
        got.append(message.headers["id"])
        message.ack()

    with Connection(url, transport=broker_guard.Transport, transport_options=options) as conn:
        channel = conn.default_channel
        channel.basic_qos(0, 1, False)
        queues = [Queue(queue), Queue(class_queue(queue, JobClass.BULK))]
        Consumer(channel, queues, callbacks=[take]).consume()
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=1)
    return got


def test_the_fetch_order_puts_interactive_first_and_bulk_once_in_every_burst_plus_one(
    service_env: dict[str, str],
) -> None:
    url = service_env["LCM_REDIS_URL"]
    queue = f"lcm.order.{uuid.uuid4().hex[:8]}"
    bulk = class_queue(queue, JobClass.BULK)
    r = redis.Redis.from_url(url)
    try:
        # The bulk backlog first, then a stream of interactive jobs (more than the burst).
        for n in range(5):
            r.lpush(bulk, poison.encode(poison.envelope([{"prompt": "b"}], bulk, task_id=f"b{n}")))
        for n in range(12):
            item = poison.envelope([{"prompt": "i"}], queue, task_id=f"i{n}")
            r.lpush(queue, poison.encode(item))
        got = _fetch_order(url, queue, 17)
    finally:
        r.delete(queue, bulk)
    # Interactive first; after BURST of them in a row, one bulk; bulk alone at the end.
    assert got == [
        *("i0", "i1", "i2", "b0"),
        *("i3", "i4", "i5", "b1"),
        *("i6", "i7", "i8", "b2"),
        *("i9", "i10", "i11", "b3"),
        "b4",
    ]


def submit_bulk(prompt: str, settings: ProducerSettings, **fields: Any) -> JobHandle:
    """One job of the bulk class, as a batch submits its rows."""
    job = parse_job({"prompt": prompt, **fields})
    return submit_job(job, settings=settings, job_class=JobClass.BULK)


def test_interactive_jobs_start_before_the_bulk_backlog_and_bulk_still_runs(
    worker, producer_settings, queue_name
) -> None:
    # Bulk jobs long enough (4 images of 8 steps) that a backlog waits while they render.
    bulk = [submit_bulk(f"bulk {n}", producer_settings, steps=8, num_images=4) for n in range(8)]
    interactive = [submit(f"interactive {n}", settings=producer_settings) for n in range(3)]
    queued_at = time.time()
    for handle in [*interactive, *bulk]:
        assert handle.wait(timeout_s=300).images
    records = {h.job_id: h.record() for h in [*bulk, *interactive]}
    assert all(r is not None and r.state is JobState.SUCCEEDED for r in records.values())

    def started(handle: Any) -> float:
        record = records[handle.job_id]
        assert record is not None and record.started_at is not None
        return record.started_at

    # Bulk not yet taken when the interactive jobs were queued: the remaining backlog.
    remaining = [b for b in bulk if started(b) > queued_at]
    assert len(remaining) >= 4, "no bulk backlog left to overtake: make the bulk jobs longer"
    last_interactive = max(started(i) for i in interactive)
    # Only what a worker thread already held when the interactive jobs came may start first.
    overtaken = [b for b in remaining if started(b) < last_interactive]
    assert len(overtaken) <= JOBS_PER_RENDER_PROCESS, (
        f"{len(overtaken)} bulk jobs started before the last interactive one"
    )


def test_a_worker_on_a_continuous_interactive_backlog_still_takes_bulk_once_per_burst(
    service_env, model_dirs, producer_settings, tmp_path
) -> None:
    queue = f"lcm.order.{uuid.uuid4().hex[:8]}"
    settings = ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})
    # Everything is queued before the worker starts (no worker advertises the family yet,
    # so the jobs are queued with a warning): the fetch order is the policy's alone.
    bulk = [submit_bulk(f"bulk {n}", settings) for n in range(4)]
    interactive = [submit(f"interactive {n}", settings=settings) for n in range(10)]
    env = worker_env(
        service_env, model_dirs["int8"], tmp_path, queue, LCM_INTERACTIVE_BURST=str(BURST - 1)
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        for handle in [*interactive, *bulk]:
            assert handle.wait(timeout_s=120).images
    finally:
        stop_worker(worker)
    kind = {h.job_id: "b" for h in bulk} | {h.job_id: "i" for h in interactive}
    received = re.findall(r"lcm_fleet\.render\[([^\]]+)\] received", worker.log_text())
    order = "".join(kind[job_id] for job_id in received if job_id in kind)
    # Burst 2: two interactive, then one bulk, while both wait; the rest of the class after.
    assert order == "iib" * 4 + "ii", order


def test_the_bulk_job_a_worker_holds_makes_way_for_an_interactive_one(
    service_env, model_dirs, producer_settings, tmp_path
) -> None:
    """Sparse interactive work among a bulk backlog: the bulk job waiting in the worker for
    the render slot goes back to its queue (worker/render/slot_pool.py), its thread fetches
    the interactive job queued meanwhile, which renders first: it waits for the current
    render only. The job given back runs later, its delivery not counted."""
    # A worker of its own: interactive jobs left queued by other tests would be fetched.
    queue = f"lcm.yield.{uuid.uuid4().hex[:8]}"
    settings = ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})
    worker = start_worker(
        worker_env(service_env, model_dirs["int8"], tmp_path, queue), tmp_path / "worker.log"
    )
    try:
        held = _held_bulk_job_makes_way(settings)
    finally:
        stop_worker(worker)
    given_back = re.findall(r"job (\S+) given back: bulk job", worker.log_text())
    assert given_back and set(given_back) <= {h.job_id for h in held}, worker.log_text()[-3000:]


def _held_bulk_job_makes_way(producer_settings: ProducerSettings) -> list[Any]:
    # Long bulk jobs (8 images of 8 steps): the render the interactive job arrives during
    # lasts long enough for the job held behind it to be still waiting for the slot.
    bulk = [
        submit_bulk(f"yield bulk {n}", producer_settings, steps=8, num_images=8) for n in range(4)
    ]

    def fetched() -> list[Any]:
        return [h for h in bulk if (r := h.record()) is not None and r.started_at is not None]

    deadline = time.monotonic() + 120
    while len(fetched()) < 2:  # one renders, the next waits in the worker for the slot
        assert time.monotonic() < deadline, "the worker did not take two bulk jobs"
        time.sleep(0.01)
    taken = fetched()
    queued_at = time.time()
    interactive = submit("yield interactive", settings=producer_settings)
    for handle in [interactive, *bulk]:
        assert handle.wait(timeout_s=300).images

    def render_started(handle: Any) -> float:
        record = handle.record()
        assert record is not None and record.started_at is not None and record.result
        return record.started_at + (record.result.durations_s.get("slot_wait") or 0.0)

    # The bulk jobs the worker held, not yet rendering, when the interactive job was queued.
    held = [b for b in taken if queued_at < render_started(b)]
    assert held, "no bulk job was waiting for the slot when the interactive one came"
    assert all(render_started(interactive) < render_started(b) for b in held), (
        "a bulk job held when the interactive one was queued rendered first"
    )
    return held
