"""What every offline training of model_build shares: checkpoints and the resumable loop.

``lcm-build reference`` (model_build/reference/train.py) and ``lcm-build train-decoder``
(model_build/train_decoder.py) train through :func:`train_loop`: one optimizer step per call
of a step function, a learning rate that is a function of the step alone, and the modules,
optimizer and random generator saved every ``checkpoint_every`` steps, so that a run killed
at any point resumes to the same weights, bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_build.errors import BuildError

logger = logging.getLogger(__name__)


class Checkpoints:
    """One file per stage in ``root``: the latest state, replaced atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, done: bool = False) -> Path:
        return self.root / f"{stage}{'.done' if done else ''}.pt"

    def save(self, stage: str, state: dict[str, Any], done: bool = False) -> None:
        import torch

        target = self.path(stage, done)
        tmp = target.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(target)
        if done:
            self.path(stage).unlink(missing_ok=True)

    def load(self, stage: str, done: bool = False) -> dict[str, Any] | None:
        import torch

        target = self.path(stage, done)
        if not target.is_file():
            return None
        try:
            state: dict[str, Any] = torch.load(target, weights_only=False)
        except Exception as e:
            raise BuildError(
                f"checkpoint {target} cannot be read ({e}); delete it to restart that stage"
            ) from e
        return state


def learning_rate_factor(step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth: a function of the step alone, so a
    resumed run follows the same schedule."""
    warmup = min(50, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_loop(
    stage: str,
    total: int,
    checkpoint_every: int,
    checkpoints: Checkpoints,
    modules: dict[str, Any],
    optimizer: Any,
    generator: Any,
    step_fn: Callable[[], Any],
    extra_state: Callable[[], dict[str, Any]] | None,
    progress: bool,
    resumed: dict[str, int],
    lr_field: str | None = None,
) -> float:
    """Run ``step_fn`` (returns the loss tensor) up to ``total`` steps, resumably.

    Returns the mean loss of the last 50 steps; ``resumed[stage]`` records the step a
    checkpoint resumed at. ``lr_field`` names the recipe's learning rate in the error a
    diverging loss raises (default ``<stage>_lr``).
    """
    import torch
    from tqdm import tqdm

    start = 0
    base_lr = [group["lr"] for group in optimizer.param_groups]  # before a resume changes them
    state = checkpoints.load(stage)
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start = int(state["step"])
        resumed[stage] = start
        logger.info("%s: resuming at step %d of %d", stage, start, total)
    recent: list[float] = []
    bar = tqdm(total=total, initial=start, desc=f"train {stage}", disable=not progress)
    for step in range(start, total):
        factor = learning_rate_factor(step, total)
        for group, lr in zip(optimizer.param_groups, base_lr, strict=True):
            group["lr"] = lr * factor
        optimizer.zero_grad(set_to_none=True)
        loss = step_fn()
        if not torch.isfinite(loss):
            raise BuildError(
                f"{stage}: loss is {loss.item()} at step {step}; lower {lr_field or stage + '_lr'}"
            )
        loss.backward()
        optimizer.step()
        if extra_state is not None:
            extra_state()  # EMA update and the like, after the optimizer step
        recent = [*recent, float(loss.item())][-50:]
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < total:
            checkpoints.save(
                stage,
                {
                    "step": step + 1,
                    "modules": {n: m.state_dict() for n, m in modules.items()},
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                },
            )
    bar.close()
    return sum(recent) / max(1, len(recent))
