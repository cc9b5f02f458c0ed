"""One checked job, start to end: render it in a render slot, store it.

The job holds its render slot only while it renders: once its last image is rendered
the next job may render, while this one's last PNGs are encoded and uploaded. The
result (and the task's return, hence the acknowledgement) waits for this job's own
verified uploads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lcm_fleet.contract import JobClass
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

    def session(
        self,
        deadlines: Deadlines,
        job_class: JobClass = JobClass.INTERACTIVE,
        job_id: str | None = None,
    ) -> AbstractContextManager[Any]: ...


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
    on_step: Callable[[int, int, int, int], bool] | None = None,
    kept: list[str] | None = None,
    cancelled: Callable[[], bool] | None = None,
    job_class: JobClass = JobClass.INTERACTIVE,
) -> TimedResult:
    """``checked``: from ``check_job(job, slots.classes)`` (worker/render/images.py).

    ``on_step(image, images, step, steps)``: see :func:`render`. When the job fails or is
    cancelled, the keys of the images it had stored are appended to ``kept``. ``cancelled()``
    is asked while the job waits for its uploads (JobCanceled when true). ``job_class``: a
    bulk job gives way to interactive work (GaveBackToInteractive, or it yields a free render
    slot; worker/render/slot_pool.py).
    """
    writer = ResultWriter(
        store,
        checked.job,
        prefix=prefix,
        model_manifest_sha256=model_manifest_sha256,
        worker=worker,
        executor=executor,
    )
    try:
        with slots.session(deadlines, job_class, checked.job.job_id) as session:
            rendered = render(
                checked,
                session.pipeline(checked.size_class),
                on_image=writer.add,
                on_step=on_step,
            )
            slot_wait_s = session.waited_s
        done = writer.finish(rendered, deadlines, cancelled)
    except BaseException:
        writer.abandon()
        if kept is not None:
            kept.extend(writer.stored_keys())
        raise
    return done.but(slot_wait=slot_wait_s)
