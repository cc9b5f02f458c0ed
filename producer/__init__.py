"""lcm-fleet producer: submit prompt jobs to the render queue.

This package is light: it imports no OpenVINO, torch or worker code. The job
contract in :mod:`producer.contract` is the one module the worker shares with it.
"""

from producer.api import JobHandle, submit
from producer.contract import Job, JobResult
from producer.errors import JobFailed, JobTimeout, ProducerError, SubmitError

__all__ = [
    "Job",
    "JobFailed",
    "JobHandle",
    "JobResult",
    "JobTimeout",
    "ProducerError",
    "SubmitError",
    "submit",
]
