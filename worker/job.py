"""One checked job, start to end: render it in a render slot, store it.

The job holds its render slot only while it renders: once its last image is rendered
the next job may render, while this one's last PNGs are encoded and uploaded. The
result (and the task's return, hence the acknowledgement) waits for this job's own
verified uploads.
"""

from __future__ import annotations

from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lcm_fleet.storage import ObjectStore
from worker.durations import TimedResult
from worker.render.images import CheckedJob, render
from worker.render.limits import Deadlines
from worker.render.process import SizeClass
from worker.render.sizes import PipelineSet
from worker.results.writer import ResultWriter


class Slots(Protocol):
    """Render slots: worker.render.process.RenderSlots (processes) or LocalSlots (in-process)."""

    classes: PipelineSet[SizeClass]

    def session(self, deadlines: Deadlines) -> AbstractContextManager[Any]: ...


def run_job(
    checked: CheckedJob[SizeClass],
    *,
    slots: Slots,
    store: ObjectStore,
    prefix: str,
    model_manifest_sha256: str,
    worker: str,
    deadlines: Deadlines,
    executor: Executor | None = None,
) -> TimedResult:
    """``checked``: from ``check_job(job, slots.classes)`` (worker/render/images.py)."""
    writer = ResultWriter(
        store,
        checked.job,
        prefix=prefix,
        model_manifest_sha256=model_manifest_sha256,
        worker=worker,
        executor=executor,
    )
    try:
        with slots.session(deadlines) as session:
            rendered = render(checked, session.pipeline(checked.size_class), on_image=writer.add)
            slot_wait_s = session.waited_s
    except BaseException:
        writer.abandon()
        raise
    return writer.finish(rendered, deadlines).but(slot_wait=slot_wait_s)
