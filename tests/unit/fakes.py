"""Fake genai pipelines and the render-process factories that build them.

Not a test module and not a conftest: a render process is started with multiprocessing's
spawn, which pickles ``RenderSpec.factory`` by its module path, so ``scripted_factory``,
``hanging_factory`` and ``flaky_factory`` must be importable module-level functions. Tests
take ``FakePipeline`` through the ``fake_pipeline`` fixture (tests/unit/conftest.py); only
tests/unit/test_renderer.py imports the factories from here, to hand them to a RenderSpec.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from worker.errors import RenderCancelled
from worker.render.pipeline import StageTimes


class FakePipeline:
    """Deterministic: pixels derive from prompt and seed. ``step_s`` per denoising step."""

    def __init__(self, width=64, height=64, guidance_scale=8.0, cfg=False, step_s=0.0):
        self.width, self.height = width, height
        self.guidance_scale, self.cfg = guidance_scale, cfg
        self.step_s = step_s
        self.calls = []

    def generate(self, prompt, seed, steps, guidance_scale, deadline=None, on_step=None):
        self.calls.append((prompt, seed, steps, guidance_scale))
        for step in range(steps):
            time.sleep(self.step_s)
            if on_step is not None and on_step(step + 1, steps):
                raise RenderCancelled(
                    f"stopped after step {step + 1} of {steps}: the job was cancelled",
                    requested=True,
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise RenderCancelled(f"stopped after step {step + 1} of {steps}")
        rng = np.random.default_rng([seed, len(prompt), steps])
        pixels = rng.integers(0, 255, (self.height, self.width, 3), dtype=np.uint8)
        return pixels, StageTimes(0.01, 0.1, 0.05, 0.2)


class ScriptedPipeline(FakePipeline):
    """In a render process: prompts 'crash' (SIGKILL itself), 'hang' (ignores the deadline),
    'slow' (0.2 s per step), 'fail' (raises)."""

    def generate(self, prompt, seed, steps, guidance_scale, deadline=None, on_step=None):
        if prompt == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if prompt == "hang":
            time.sleep(3600)
        if prompt == "fail":
            raise RuntimeError("the device went away")
        self.step_s = 0.2 if prompt == "slow" else 0.0
        return super().generate(prompt, seed, steps, guidance_scale, deadline, on_step)


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
