"""The render process with a scripted fake pipeline: sizes, time limits, death and restart."""

import time
from pathlib import Path

import numpy as np
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from lcm_fleet.artifact.manifest import Manifest
from tests.unit.fakes import flaky_factory, hanging_factory, scripted_factory
from worker.errors import RendererLost, StartupError
from worker.model.artifact import ServedModel
from worker.render.limits import Deadlines
from worker.render.process import RenderSlots, RenderSpec

SIZES = ((64, 64), (96, 64))


def _spec(**over):
    model = ServedModel(
        path=Path("/nonexistent"), manifest=Manifest.model_construct(), width=64, height=64
    )
    base = dict(model=model, sizes=SIZES, factory=scripted_factory, log_level="WARNING")
    base.update(over)
    return RenderSpec(**base)


def _wait_restarted(slots, old_pid, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    renderer = slots.renderers[0]
    while time.monotonic() < deadline:
        if renderer.alive() and renderer.pid != old_pid and renderer.report is not None:
            return renderer.pid
        time.sleep(0.05)
    raise AssertionError("the render process was not started again")


@pytest.fixture(scope="module")
def slots():
    slots = RenderSlots(_spec(), processes=1, startup_timeout_s=60)
    reports = slots.start()
    yield slots, reports
    slots.stop()


def test_each_size_renders_in_the_render_process(slots, fake_pipeline):
    slots, (report,) = slots
    assert [m.size for m in report.loads] == list(SIZES)
    assert all(m.rss_growth_gib > 0.005 for m in report.loads)  # 8 MiB each, measured there
    assert report.pid == slots.renderers[0].pid and report.pid != __import__("os").getpid()
    assert slots.classes.sizes == list(SIZES)
    with slots.session(Deadlines.none()) as session:
        for size in SIZES:
            pipe = session.pipeline(slots.classes.get(size))
            pixels, times = pipe.generate("a cat", 5, 4, 8.0)
            expected, _ = fake_pipeline(*size).generate("a cat", 5, 4, 8.0)
            assert pixels.shape == (size[1], size[0], 3) and np.array_equal(pixels, expected)
            assert times.unet_s > 0


def test_soft_limit_stops_the_render_at_a_step(slots):
    slots, _ = slots
    pid = slots.renderers[0].pid
    with slots.session(Deadlines.start(0.5, 30)) as session:
        pipe = session.pipeline(slots.classes.get((64, 64)))
        with pytest.raises(
            SoftTimeLimitExceeded,
            match=r"limit \(0.5s\) exceeded while rendering \(stopped after step [1-7] of 8",
        ):
            pipe.generate("slow", 1, 8, 8.0)  # 8 steps x 0.2 s
    assert slots.renderers[0].pid == pid and slots.renderers[0].alive()  # not restarted


def test_hard_limit_kills_and_replaces_the_render_process(slots):
    slots, _ = slots
    pid = slots.renderers[0].pid
    with slots.session(Deadlines.start(0.2, 0.6)) as session:
        pipe = session.pipeline(slots.classes.get((64, 64)))
        with pytest.raises(TimeLimitExceeded, match=r"hard time limit \(0.6s\).*was killed"):
            pipe.generate("hang", 1, 4, 8.0)
    new_pid = _wait_restarted(slots, pid)
    with slots.session(Deadlines.none()) as session:
        assert session.pipeline(slots.classes.get((96, 64))).generate("x", 1, 1, 8.0)[0].shape
    assert new_pid != pid


def test_death_during_a_render_is_reported_and_the_process_restarted(slots):
    slots, _ = slots
    pid = slots.renderers[0].pid
    with (
        slots.session(Deadlines.none()) as session,
        pytest.raises(RendererLost, match=r"died during the render \(exit code -9"),
    ):
        session.pipeline(slots.classes.get((64, 64))).generate("crash", 1, 4, 8.0)
    _wait_restarted(slots, pid)
    with slots.session(Deadlines.none()) as session:
        assert session.pipeline(slots.classes.get((64, 64))).generate("x", 2, 1, 8.0)[0].size


def test_a_render_error_fails_the_image_and_the_process_keeps_serving(slots):
    slots, _ = slots
    pid = slots.renderers[0].pid
    with slots.session(Deadlines.none()) as session:
        pipe = session.pipeline(slots.classes.get((64, 64)))
        with pytest.raises(Exception, match="the device went away"):
            pipe.generate("fail", 1, 4, 8.0)
        assert pipe.generate("x", 1, 1, 8.0)[0].size
    assert slots.renderers[0].pid == pid


def test_the_slot_is_exclusive_and_waiting_counts_against_the_soft_limit(slots):
    slots, _ = slots
    with (
        slots.session(Deadlines.none()),
        pytest.raises(SoftTimeLimitExceeded, match="waiting for a free render process"),
        slots.session(Deadlines.start(0.3, 5)),
    ):
        pass


def test_memory_budget_refusal_comes_from_the_render_process():
    slots = RenderSlots(_spec(budget_gib=0.004), processes=1, startup_timeout_s=60)
    with pytest.raises(StartupError, match=r"LCM_MEMORY_BUDGET_GIB=0.004 is too small"):
        slots.start()
    assert not slots.renderers[0].alive()


def test_a_render_process_that_cannot_start_again_stops_the_worker(monkeypatch):
    fatal = []
    slots = RenderSlots(
        _spec(factory=flaky_factory), processes=1, startup_timeout_s=60, on_fatal=fatal.append
    )
    slots.start()
    try:
        monkeypatch.setenv("LCM_TEST_FACTORY_FAIL", "1")  # seen by the next render process
        with (
            slots.session(Deadlines.none()) as session,
            pytest.raises(RendererLost),
        ):
            session.pipeline(slots.classes.get((64, 64))).generate("crash", 1, 4, 8.0)
        deadline = time.monotonic() + 30
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fatal and "could not be started again" in fatal[0]
        assert "cannot compile: the device went away" in fatal[0]
        with (  # no render process left to hand out
            pytest.raises(SoftTimeLimitExceeded),
            slots.session(Deadlines.start(0.2, 1)),
        ):
            pass
    finally:
        slots.stop()


def test_launch_does_not_wait_for_the_compile_and_kill_ends_it():
    # lcm-worker hashes the artifact while the render process compiles; if the hashes do
    # not match it refuses to start and kills the render process mid-compile.
    slots = RenderSlots(_spec(factory=hanging_factory), processes=2, startup_timeout_s=60)
    slots.launch()
    first, second = slots.renderers
    assert first.alive() and first.report is None
    assert second.pid is None  # the others start one after the other, in wait_ready
    slots.kill()
    assert not first.alive() and first._process.exitcode == -9


def test_each_render_process_runs_on_its_own_cores():
    import os

    cpus = sorted(os.sched_getaffinity(0))
    sets = ((cpus[0],), (cpus[-1],))
    slots = RenderSlots(_spec(sizes=((64, 64),), cpu_sets=sets), processes=2, startup_timeout_s=60)
    try:
        slots.start()
        assert [os.sched_getaffinity(r.pid) for r in slots.renderers] == [set(s) for s in sets]
    finally:
        slots.stop()
