"""Exceptions of the producer. A job the contract rejects raises ``lcm_fleet.errors.InvalidJob``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lcm_fleet.records import SubmitOutcome


class ProducerError(Exception):
    """Base of everything the producer raises."""


class SubmitError(ProducerError):
    """The job could not be put on the queue (broker unreachable after retries)."""


class SubmitRefused(ProducerError):
    """The submission script refused the job (a guard of the HTTP API); nothing changed."""

    def __init__(self, outcome: SubmitOutcome) -> None:
        super().__init__(f"submission refused: {outcome.status.value} {outcome.detail}".strip())
        self.outcome = outcome


class JobFailed(ProducerError):
    """The worker finished the job with a failure; ``reason`` says why."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


class JobCanceled(JobFailed):
    """The job was cancelled before it finished."""


class JobTimeout(ProducerError):
    """No result arrived within the wait timeout (the job may still be queued or running)."""
