"""The render process: a worker's compiled pipelines live in a process of their own.

Why: the encoding and upload of job N should overlap the render of job N + 1, and a
job must still be acknowledged only after its own uploads are verified. Celery's
prefork pool runs one job per child, start to end, so a child cannot render job N + 1
before job N's task has returned. The worker therefore runs Celery's threads pool (two
jobs in flight per render process) and keeps the pipelines in a separate render process
(``multiprocessing`` spawn: never forked from a process that has OpenVINO threads):

- a job holds a render process (its *slot*) only while it renders; then the next job
  renders while this one's PNGs are encoded and uploaded; each task returns, and its
  message is acknowledged, after its own uploads are verified (``task_acks_late``);
- time limits (worker/render/limits.py): the soft limit stops the UNet loop at the next step
  (genai's step callback); past the hard limit the render process is killed and started
  again, and the job fails with ``TimeLimitExceeded``, as with the prefork pool;
- if the render process dies during a render (out of memory, killed), the job's message
  is requeued at once (``Reject(requeue=True)``, what ``task_reject_on_worker_lost`` does
  for a dead prefork child) and the per-job delivery counter counts the delivery; the
  render process is started again in the background;
- SIGTERM: Celery's warm shutdown lets running jobs finish; the render process ignores
  SIGTERM and SIGINT and is stopped by the worker after them (it also exits when the
  worker is gone: its pipe closes).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

from lcm_fleet.artifact.kinds import InferencePrecision
from lcm_fleet.contract import JobClass
from worker.errors import (
    JobCanceled,
    ModelLoadError,
    RenderCancelled,
    RendererLost,
    StartupError,
    WorkerError,
)
from worker.model.artifact import ServedModel
from worker.model.verified import VerifyMode
from worker.render.limits import Deadlines
from worker.render.memory import load_size_classes
from worker.render.messages import (
    Cancelled,
    CancelRender,
    FromRenderProcess,
    Image,
    LoadFailed,
    LoadReport,
    Ready,
    Refused,
    RenderFailed,
    RenderRequest,
    StepDone,
    Stop,
    ToRenderProcess,
)
from worker.render.pipeline import ImagePipeline, StageTimes, StepCallback
from worker.render.sizes import PipelineSet, Size, format_size
from worker.render.slot_pool import SlotPool, SlotTimeout

logger = logging.getLogger(__name__)

#: How often at most the render process reports the running render's step to the worker.
STEP_REPORT_S = 0.05
#: How often at most the worker asks a running job's on_step (its record's cancel flag)
#: between the render process's reports.
CANCEL_POLL_S = 0.1


@dataclass(frozen=True)
class SizeClass:
    """What the worker's threads know about one compiled size (the pipeline is elsewhere)."""

    width: int
    height: int
    guidance_scale: float
    cfg: bool


def genai_pipeline(spec: RenderSpec, size: Size) -> ImagePipeline:
    from worker.render.pipeline import GenaiPipeline

    return GenaiPipeline(
        spec.model,
        spec.device,
        spec.cache_dir,
        spec.precision.value,
        cpu_threads=spec.cpu_threads,
        cpu_pinning=spec.cpu_pinning,
        text_encoder_device=spec.text_encoder_device,
        width=size[0],
        height=size[1],
        blob_dir=spec.blob_dir,
        blob_verify=spec.blob_verify,
    )


@dataclass(frozen=True)
class RenderSpec:
    """Everything a render process needs to build its pipelines (sent to it pickled)."""

    model: ServedModel
    sizes: tuple[Size, ...]
    device: str = "CPU"
    cache_dir: str = ""
    precision: InferencePrecision = InferencePrecision.DEFAULT
    cpu_threads: int | None = None
    cpu_pinning: bool | None = None
    text_encoder_device: str | None = None
    #: Compiled-model blobs (LCM_CACHE_DIR/blobs; "" off) and how they are checked.
    blob_dir: str = ""
    blob_verify: VerifyMode = VerifyMode.MARKER
    budget_gib: float | None = None
    budget_name: str = "LCM_MEMORY_BUDGET_GIB"
    estimate_gib: float = 0.0
    warmup: bool = True
    log_level: str = "INFO"
    #: The cores of each render process (by index), pinned before it loads OpenVINO; None:
    #: every render process may run on all of the worker's cores.
    cpu_sets: tuple[tuple[int, ...], ...] | None = None
    #: Builds one size's pipeline in the render process (a module-level function).
    factory: Callable[[RenderSpec, Size], ImagePipeline] = genai_pipeline

    def size_classes(self) -> PipelineSet[SizeClass]:
        model = self.model
        return PipelineSet(
            {s: SizeClass(s[0], s[1], model.guidance_scale, model.cfg) for s in self.sizes},
            self.sizes[0],
        )


# ---------------------------------------------------------------- the render process


def serve(conn: Any, spec: RenderSpec, index: int = 0) -> None:
    """Entry point of render process ``index``: compile, report, then render until told to
    stop."""
    # The worker decides when this process stops (after the running jobs); a Ctrl-C or
    # SIGTERM sent to the whole process group must not cut a render short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[render {os.getpid()}]: %(message)s",
    )
    if spec.cpu_sets is not None:
        # Before OpenVINO starts its threads: its pinning stays within these cores.
        os.sched_setaffinity(0, spec.cpu_sets[index])
    try:
        loaded = load_size_classes(
            spec.sizes,
            lambda size: spec.factory(spec, size),
            estimate_gib=spec.estimate_gib,
            budget_gib=spec.budget_gib,
            budget_name=spec.budget_name,
            warmup=spec.warmup,
        )
    except StartupError as e:
        conn.send(Refused(str(e)))
        return
    except Exception as e:
        logger.exception("the render process could not load its pipelines")
        conn.send(LoadFailed(f"{type(e).__name__}: {e}"))
        return
    conn.send(Ready(LoadReport(os.getpid(), loaded.loads, loaded.rss_gib)))
    while True:
        try:
            message: ToRenderProcess = conn.recv()
        except (EOFError, OSError):
            return  # the worker is gone
        match message:
            case Stop():
                return
            case RenderRequest() as request:
                reply = _render(loaded.pipelines, request, conn)
            case CancelRender():
                continue  # it came after its render had ended: nothing to stop
            case _:
                reply = RenderFailed(f"the render process got {message!r}, not a render request")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _step_reporter(conn: Any) -> Callable[[int, int], bool]:
    """genai's step callback in the render process: tell the worker where the render is
    (at most every STEP_REPORT_S, and at the last step), and stop when it sent CancelRender."""
    last = [0.0]

    def on_step(step: int, steps: int) -> bool:
        now = time.monotonic()
        if step >= steps or now - last[0] >= STEP_REPORT_S:
            last[0] = now
            conn.send(StepDone(step, steps))
        # Only a CancelRender can come while a render runs (the worker waits for its reply).
        return bool(conn.poll(0)) and isinstance(conn.recv(), CancelRender)

    return on_step


def _render(
    pipelines: PipelineSet[ImagePipeline], request: RenderRequest, conn: Any
) -> FromRenderProcess:
    try:
        pipeline = pipelines.get(request.size)
    except KeyError:
        return RenderFailed(f"no pipeline for {format_size(request.size)}")
    try:
        pixels, times = pipeline.generate(
            request.prompt,
            request.seed,
            request.steps,
            request.guidance_scale,
            deadline=request.soft_deadline,
            on_step=_step_reporter(conn) if request.report_steps else None,
        )
    except RenderCancelled as e:
        return Cancelled(str(e), requested=e.requested)
    except Exception as e:
        logger.exception("render failed")
        return RenderFailed(f"{type(e).__name__}: {e}")
    return Image(pixels, times)


# ---------------------------------------------------------------- the worker's side


class Renderer:
    """One render process and the pipe to it; used by one job at a time (RenderSlots)."""

    def __init__(self, spec: RenderSpec, startup_timeout_s: float, index: int = 0) -> None:
        self.spec = spec
        self.startup_timeout_s = startup_timeout_s
        self.index = index
        self._process: Any = None
        self._conn: Any = None
        self.report: LoadReport | None = None
        self.starts = 0
        self._launched_at = 0.0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> LoadReport:
        """Start the process and wait until its pipelines are ready."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the process; it compiles and warms up its pipelines (see wait_ready)."""
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve,
            args=(theirs, self.spec, self.index),
            name=f"lcm-render-{self.index}",
            daemon=True,
        )
        self._launched_at = time.monotonic()
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        self.starts += 1
        logger.info("render process %d started (pid %d)", self.index, process.pid)

    def wait_ready(self) -> LoadReport:
        """Wait until the launched process reports its pipelines ready (or fails)."""
        process, ours, t0 = self._process, self._conn, self._launched_at
        if process is None:
            raise StartupError(f"render process {self.index} was not launched")
        left = max(0.0, self.startup_timeout_s - (time.monotonic() - t0))
        try:
            if not ours.poll(left):
                self.kill()
                raise ModelLoadError(
                    f"the render process did not load its pipelines within "
                    f"LCM_STARTUP_TIMEOUT_S={self.startup_timeout_s:g}s; raise it, or turn the "
                    "compile cache on (LCM_CACHE_DIR)"
                )
            message: FromRenderProcess = ours.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise ModelLoadError(
                f"the render process died while loading its pipelines (exit code "
                f"{process.exitcode}); see its log lines above"
            ) from e
        match message:
            case Ready(report):
                self.report = report
            case Refused(reason):
                self.stop()
                raise StartupError(reason)
            case LoadFailed(reason):
                self.stop()
                raise ModelLoadError(f"the render process could not load its pipelines: {reason}")
            case _:
                self.stop()
                raise ModelLoadError(f"the render process sent {message!r} instead of its report")
        logger.info(
            "render process %d (pid %d) ready in %.1fs: %s",
            self.index,
            process.pid,
            time.monotonic() - t0,
            ", ".join(
                f"{format_size(m.size)} +{m.rss_growth_gib:.2f} GiB" for m in self.report.loads
            ),
        )
        return self.report

    def render(
        self,
        request: RenderRequest,
        deadlines: Deadlines,
        on_step: StepCallback | None = None,
    ) -> tuple[Any, StageTimes]:
        """One image; raise RendererLost if the process dies, and kill it past the hard limit.

        ``on_step(step, steps)`` sees the render's steps as the render process reports them;
        when it returns True the render is told to stop at its next step.
        """
        if not self.alive():
            raise RendererLost(f"render process {self.index} is not running")
        try:
            self._conn.send(replace(request, report_steps=on_step is not None))
            cancel_sent = False
            last = StepDone(0, request.steps)
            while True:
                left = deadlines.hard_left()
                # With on_step, wake at least every CANCEL_POLL_S, so that a cancel is on the
                # pipe before the running step ends (the render stops right after it).
                wait = None if left == float("inf") else max(0.0, left)
                if on_step is not None:
                    wait = CANCEL_POLL_S if wait is None else min(wait, CANCEL_POLL_S)
                if not self._conn.poll(wait):
                    if deadlines.hard_left() > 0:
                        reply: FromRenderProcess = last
                    else:
                        pid = self.pid
                        self.kill()
                        raise deadlines.hard_exceeded(
                            f"while rendering; render process {self.index} (pid {pid}) was "
                            "killed and is started again"
                        )
                else:
                    reply = self._conn.recv()
                if not isinstance(reply, StepDone):
                    break
                last = reply
                if on_step is not None and on_step(reply.step, reply.steps) and not cancel_sent:
                    self._conn.send(CancelRender())
                    cancel_sent = True
        except (EOFError, OSError) as e:
            process = self._process
            if process is not None:
                process.join(timeout=5)
            code = None if process is None else process.exitcode
            raise RendererLost(
                f"render process {self.index} (pid {self.pid}) died during the render "
                f"(exit code {code}; -9 is SIGKILL, e.g. the out-of-memory killer)"
            ) from e
        match reply:
            case Image(pixels, times):
                return pixels, times
            case Cancelled(reason, requested=True):
                raise JobCanceled(f"canceled while rendering ({reason})")
            case Cancelled(reason):
                raise deadlines.soft_exceeded(f"while rendering ({reason})")
            case RenderFailed(reason):
                raise WorkerError(f"render failed in the render process: {reason}")
            case _:
                raise WorkerError(f"the render process sent {reply!r} instead of an image")

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask the process to exit after its current render; kill it after ``timeout_s``."""
        process, conn = self._process, self._conn
        if process is None:
            return
        with suppress(BrokenPipeError, OSError):
            conn.send(Stop())
        process.join(timeout=timeout_s)
        if process.is_alive():
            logger.warning("render process %d did not stop; killing it", self.index)
            self.kill()
        conn.close()


class RemotePipeline:
    """An ImagePipeline whose renders run in a render process, under a job's deadlines."""

    def __init__(self, renderer: Renderer, size: SizeClass, deadlines: Deadlines) -> None:
        self.renderer, self.deadlines = renderer, deadlines
        self.width, self.height = size.width, size.height
        self.guidance_scale, self.cfg = size.guidance_scale, size.cfg

    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance_scale: float,
        deadline: float | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[Any, StageTimes]:
        self.deadlines.check_soft("before rendering an image")
        soft = self.deadlines.soft if deadline is None else min(deadline, self.deadlines.soft)
        request = RenderRequest(
            size=(self.width, self.height),
            prompt=prompt,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            soft_deadline=None if soft == float("inf") else soft,
        )
        return self.renderer.render(request, self.deadlines, on_step)


class RenderSession:
    """A job's hold on one render process."""

    def __init__(self, renderer: Renderer, deadlines: Deadlines, waited_s: float) -> None:
        self.renderer, self.deadlines, self.waited_s = renderer, deadlines, waited_s

    def pipeline(self, size: SizeClass) -> RemotePipeline:
        return RemotePipeline(self.renderer, size, self.deadlines)


class RenderSlots:
    """The worker's render processes; a job holds one only while it renders."""

    def __init__(
        self,
        spec: RenderSpec,
        processes: int = 1,
        startup_timeout_s: float = 600.0,
        on_fatal: Callable[[str], None] | None = None,
        interactive_waiting: Callable[[], bool] | None = None,
        bulk_yield_max_s: float = 0.0,
        bulk_give_back: bool = False,
    ) -> None:
        """``interactive_waiting()``: True while interactive jobs wait in Redis for this
        worker; a bulk job waiting for a render process then goes back to its queue
        (``bulk_give_back``), or yields a free one to them for at most ``bulk_yield_max_s``
        (worker/render/slot_pool.py)."""
        self.spec = spec
        self.classes = spec.size_classes()
        self.renderers = [Renderer(spec, startup_timeout_s, i) for i in range(processes)]
        self.on_fatal = on_fatal
        self._idle: SlotPool[Renderer] = SlotPool(
            interactive_waiting, bulk_yield_max_s, give_back=bulk_give_back
        )
        self._restarts: list[threading.Thread] = []

    def start(self) -> list[LoadReport]:
        """Start every render process, one after the other; stop them all on a failure."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the first render process without waiting: the worker verifies the artifact
        and its storage meanwhile, and serves nothing before :meth:`wait_ready` returns."""
        self.renderers[0].launch()

    def wait_ready(self) -> list[LoadReport]:
        """Wait for the first render process, then start the others one after the other
        (so their memory is measured one at a time); stop them all on a failure."""
        reports = []
        try:
            for renderer in self.renderers:
                if renderer.pid is None:
                    renderer.launch()
                reports.append(renderer.wait_ready())
                self._idle.put(renderer)
        except BaseException:
            self.stop()
            raise
        return reports

    @contextmanager
    def session(
        self,
        deadlines: Deadlines,
        job_class: JobClass = JobClass.INTERACTIVE,
        job_id: str | None = None,
    ) -> Iterator[RenderSession]:
        """Wait (until the soft limit) for a free render process and hold it; interactive
        jobs get a free one before bulk jobs, and bulk job ``job_id`` may be given back
        instead (GaveBackToInteractive; worker/render/slot_pool.py)."""
        t0 = time.monotonic()
        left = deadlines.soft_left()
        try:
            renderer = self._idle.get(
                job_class, timeout_s=None if left == float("inf") else max(0.0, left), job_id=job_id
            )
        except SlotTimeout:
            raise deadlines.soft_exceeded("waiting for a free render process") from None
        try:
            yield RenderSession(renderer, deadlines, time.monotonic() - t0)
        finally:
            if renderer.alive():
                self._idle.put(renderer)
            else:
                self._restart_later(renderer)

    def _restart_later(self, renderer: Renderer) -> None:
        def restart() -> None:
            try:
                renderer.stop(timeout_s=1.0)
                renderer.start()
            except Exception as e:
                message = f"render process {renderer.index} could not be started again: {e}"
                logger.error("%s", message)
                if self.on_fatal is not None:
                    self.on_fatal(message)
                return
            self._idle.put(renderer)

        thread = threading.Thread(target=restart, name=f"lcm-render-restart-{renderer.index}")
        self._restarts.append(thread)
        thread.start()

    def kill(self) -> None:
        """Kill every render process at once (at start-up, before anything was served)."""
        for renderer in self.renderers:
            renderer.kill()

    def stop(self, timeout_s: float = 60.0) -> None:
        for thread in self._restarts:
            thread.join(timeout=timeout_s)
        for renderer in self.renderers:
            renderer.stop(timeout_s)
