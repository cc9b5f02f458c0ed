"""The worker's object store: the kernel's store with the worker's upload retry settings."""

from __future__ import annotations

from typing import Any

from lcm_fleet.backoff import Backoff
from lcm_fleet.errors import StorageError
from lcm_fleet.storage import ObjectStore
from worker.errors import StartupError
from worker.settings import WorkerSettings


def result_store(settings: WorkerSettings, client: Any = None) -> ObjectStore:
    """Results go up with LCM_UPLOAD_BACKOFF_* between attempts, retried in place (the job
    keeps its render slot's place, not the back of the queue) for LCM_STORAGE_RETRY_BUDGET_S;
    with a budget of 0, LCM_UPLOAD_ATTEMPTS attempts."""
    backoff = Backoff(
        base_s=settings.upload_backoff_base_s,
        cap_s=max(settings.upload_backoff_cap_s, settings.upload_backoff_base_s),
        attempts=settings.upload_attempts,
    )
    budget = settings.storage_retry_budget_s or None
    return ObjectStore.from_settings(settings, backoff=backoff, client=client, budget_s=budget)


def check_bucket(store: ObjectStore) -> None:
    """Fail fast at start-up when the bucket is missing or not ours to write."""
    try:
        store.check_bucket()
    except StorageError as e:
        raise StartupError(str(e)) from e
