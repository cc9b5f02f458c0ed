"""One job, start to end: check it, render it in a render slot, store it.

The job holds its render slot only while it renders: once its last image is rendered
the next job may render, while this one's last PNGs are encoded and uploaded. The
result (and the task's return, hence the acknowledgement) waits for this job's own
verified uploads.
"""

from __future__ import annotations

from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lcm_fleet.contract import Job, JobResult
from lcm_fleet.storage import ObjectStore
from worker.render.images import check_inputs, render
from worker.render.limits import Deadlines
from worker.render.process import SizeClass
from worker.render.sizes import PipelineSet
from worker.results.writer import ResultWriter


class Slots(Protocol):
    """Render slots: worker.render.process.RenderSlots (processes) or LocalSlots (in-process)."""

    classes: PipelineSet[SizeClass]

    def session(self, deadlines: Deadlines) -> AbstractContextManager[Any]: ...


def run_job(
    job: Job,
    *,
    slots: Slots,
    store: ObjectStore,
    prefix: str,
    model_manifest_sha256: str,
    worker: str,
    deadlines: Deadlines,
    executor: Executor | None = None,
) -> JobResult:
    size = slots.classes.for_job(job)  # InvalidJob: a size this worker does not serve
    check_inputs(job, size)  # InvalidJob: e.g. the other guidance regime
    writer = ResultWriter(
        store,
        job,
        prefix=prefix,
        model_manifest_sha256=model_manifest_sha256,
        worker=worker,
        executor=executor,
    )
    try:
        with slots.session(deadlines) as session:
            rendered = render(job, session.pipeline(size), on_image=writer.add)
            slot_wait_s = session.waited_s
    except BaseException:
        writer.abandon()
        raise
    result = writer.finish(rendered, deadlines)
    result.durations_s["slot_wait"] = round(slot_wait_s, 4)
    return result
