"""lcm-fleet producer: submit prompt jobs to the render queue.

This package is light: it imports no OpenVINO, torch or worker code. The job
contract in :mod:`lcm_fleet.contract` is the one module the worker shares with it.
"""

from lcm_fleet.contract import Job, JobResult
from producer.api import JobHandle, submit
from producer.errors import JobCanceled, JobFailed, JobTimeout, ProducerError, SubmitError

__all__ = [
    "Job",
    "JobCanceled",
    "JobFailed",
    "JobHandle",
    "JobResult",
    "JobTimeout",
    "ProducerError",
    "SubmitError",
    "submit",
]
