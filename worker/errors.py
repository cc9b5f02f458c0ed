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
    """A render stopped at a denoising step because its job's soft time limit passed."""


class RendererLost(WorkerError):
    """The render process died (killed, out of memory) while it rendered a job."""
