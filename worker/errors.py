"""Exceptions of the worker. Invalid jobs raise the contract's ``lcm_fleet.errors.InvalidJob``;
storage faults raise ``lcm_fleet.errors.StorageError`` and ``TransientStorageError``."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of everything the worker raises."""


class ModelLoadError(WorkerError):
    """The artifact cannot be served: bad manifest, mismatched files, or compile failure."""


class StartupError(WorkerError):
    """The worker's settings or environment cannot work; the message says what to fix."""


class RenderCancelled(WorkerError):
    """A render stopped at a denoising step: its job's soft time limit passed, or (with
    ``requested``) the job was cancelled."""

    def __init__(self, message: str, requested: bool = False) -> None:
        super().__init__(message)
        self.requested = requested


class JobCanceled(WorkerError):
    """The job was cancelled through its record: before it started, or at a denoising step."""


class RendererLost(WorkerError):
    """The render process died (killed, out of memory) while it rendered a job."""


class GaveBackToInteractive(WorkerError):
    """A bulk job waiting for a busy render slot went back to its queue, so that this
    worker fetches the interactive job queued for it (worker/render/slot_pool.py)."""
