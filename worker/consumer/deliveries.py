"""Count deliveries of a job, so a job that keeps killing its worker is not retried forever.

With late acknowledgement a job whose worker process dies goes back to the queue;
Redis has no delivery counter, so we keep one per (job, retry) with a TTL.
"""

from __future__ import annotations

from typing import Any

from lcm_fleet.keys import deliveries_key
from worker.errors import WorkerError


class JobAbandoned(WorkerError):
    """The job was delivered more times than allowed without finishing."""


def count_delivery(redis: Any, task_id: str, retries: int, max_deliveries: int, ttl_s: int) -> int:
    key = deliveries_key(task_id, retries)
    count = int(redis.incr(key))
    redis.expire(key, ttl_s)
    if count > max_deliveries:
        raise JobAbandoned(
            f"job {task_id} was delivered {count} times without finishing (its worker process "
            f"died each time); failing it after {max_deliveries} deliveries"
        )
    return count


def uncount_delivery(redis: Any, task_id: str, retries: int) -> None:
    """Take back this delivery's count: the job went back to its queue on purpose (a bulk
    job making way for interactive work), not because its worker died."""
    key = deliveries_key(task_id, retries)
    if int(redis.decr(key)) <= 0:
        redis.delete(key)


def forget_deliveries(redis: Any, task_id: str, retries: int) -> None:
    redis.delete(deliveries_key(task_id, retries))
