"""Stand-ins for the genai pipeline, importable by a spawned render process."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np

from worker.errors import RenderCancelled
from worker.render.pipeline import StageTimes
from worker.render.process import SizeClass
from worker.render.sizes import PipelineSet


class FakePipeline:
    """Deterministic: pixels derive from prompt and seed. ``step_s`` per denoising step."""

    def __init__(self, width=64, height=64, guidance_scale=8.0, cfg=False, step_s=0.0):
        self.width, self.height = width, height
        self.guidance_scale, self.cfg = guidance_scale, cfg
        self.step_s = step_s
        self.calls = []

    def generate(self, prompt, seed, steps, guidance_scale, deadline=None):
        self.calls.append((prompt, seed, steps, guidance_scale))
        for step in range(steps):
            time.sleep(self.step_s)
            if deadline is not None and time.monotonic() >= deadline:
                raise RenderCancelled(f"stopped after step {step + 1} of {steps}")
        rng = np.random.default_rng([seed, len(prompt), steps])
        pixels = rng.integers(0, 255, (self.height, self.width, 3), dtype=np.uint8)
        return pixels, StageTimes(0.01, 0.1, 0.05, 0.2)


class ScriptedPipeline(FakePipeline):
    """In a render process: prompts 'crash' (SIGKILL itself), 'hang' (ignores the deadline),
    'slow' (0.2 s per step), 'fail' (raises)."""

    def generate(self, prompt, seed, steps, guidance_scale, deadline=None):
        if prompt == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if prompt == "hang":
            time.sleep(3600)
        if prompt == "fail":
            raise RuntimeError("the device went away")
        self.step_s = 0.2 if prompt == "slow" else 0.0
        return super().generate(prompt, seed, steps, guidance_scale, deadline)


def scripted_factory(spec, size):
    """RenderSpec.factory for tests: a ScriptedPipeline of the size, holding some memory."""
    pipe = ScriptedPipeline(size[0], size[1], spec.model.guidance_scale, spec.model.cfg)
    pipe.weights = np.ones(8 * 1024 * 1024, dtype=np.uint8)  # 8 MiB resident
    return pipe


def hanging_factory(spec, size):
    """RenderSpec.factory for tests: a compile that never ends."""
    time.sleep(3600)
    return scripted_factory(spec, size)


def flaky_factory(spec, size):
    """scripted_factory, unless LCM_TEST_FACTORY_FAIL is set when the process starts."""
    if os.environ.get("LCM_TEST_FACTORY_FAIL"):
        raise RuntimeError("cannot compile: the device went away")
    return scripted_factory(spec, size)


class LocalSlots:
    """In-process pipelines behind one lock, with RenderSlots' interface (for run_job tests)."""

    def __init__(self, pipelines):
        self.pipelines = pipelines
        self.classes = PipelineSet(
            {
                s: SizeClass(p.width, p.height, p.guidance_scale, p.cfg)
                for s in pipelines.sizes
                for p in [pipelines.get(s)]
            },
            pipelines.default,
        )
        self._lock = threading.Lock()

    @contextmanager
    def session(self, deadlines):
        t0 = time.monotonic()
        left = deadlines.soft_left()
        if not self._lock.acquire(timeout=-1 if left == float("inf") else max(0.0, left)):
            raise deadlines.soft_exceeded("waiting for the pipeline")
        try:
            yield LocalSession(self, deadlines, time.monotonic() - t0)
        finally:
            self._lock.release()


class LocalSession:
    def __init__(self, slots, deadlines, waited_s):
        self.slots, self.deadlines, self.waited_s = slots, deadlines, waited_s

    def pipeline(self, size):
        pipeline = self.slots.pipelines.get((size.width, size.height))
        deadlines = self.deadlines

        class Limited:
            width, height = pipeline.width, pipeline.height
            guidance_scale, cfg = pipeline.guidance_scale, pipeline.cfg

            def generate(self, prompt, seed, steps, guidance_scale, deadline=None):
                deadlines.check_soft("before rendering an image")
                soft = deadlines.soft if deadline is None else min(deadline, deadlines.soft)
                try:
                    return pipeline.generate(
                        prompt,
                        seed,
                        steps,
                        guidance_scale,
                        deadline=None if soft == float("inf") else soft,
                    )
                except RenderCancelled as e:
                    raise deadlines.soft_exceeded(f"while rendering ({e})") from e

        return Limited()
