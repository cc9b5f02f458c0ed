"""A job's record shows when its storage writes wait for S3 (lcm_fleet/records.py Waiting).

While one of the job's store calls (an image, result.json) retries a transient fault in
place (LCM_STORAGE_RETRY_BUDGET_S, worker/results/storage.py), its record carries
``waiting: {waiting_for: storage, since, error, at}``; it is cleared as soon as no call of the
job is retrying any more (and by the record's own transitions when the job ends or goes
back to its queue). ``lcm status JOB`` and ``GET /v1/jobs/{id}`` show it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lcm_fleet.records import WAITING_ERROR_MAX_CHARS, RecordStore, Waiting, WaitingFor

logger = logging.getLogger(__name__)

#: At most this often the record's last error is rewritten while the wait goes on.
UPDATE_EVERY_S = 5.0


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return (
        text
        if len(text) <= WAITING_ERROR_MAX_CHARS
        else text[: WAITING_ERROR_MAX_CHARS - 3] + "..."
    )


class StorageWaiting:
    """The :class:`lcm_fleet.storage.StorageWatch` of one job: keeps its record's
    ``waiting`` in step with its store calls' retries (several upload threads at once)."""

    def __init__(
        self,
        records: RecordStore,
        job_id: str,
        *,
        update_every_s: float = UPDATE_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records, self.job_id = records, job_id
        self.update_every_s, self.clock = update_every_s, clock
        self._lock = threading.Lock()
        #: What the store calls retrying now do (each names its own object key).
        self._retrying: set[str] = set()
        self._since: float | None = None
        self._written = float("-inf")

    def retrying(self, what: str, error: BaseException) -> None:
        with self._lock:
            self._retrying.add(what)
            now = self.clock()
            if self._since is None:
                self._since = now
            elif now - self._written < self.update_every_s:
                return
            self._written = now
            waiting = Waiting(
                waiting_for=WaitingFor.STORAGE, since=self._since, error=_short(error), at=now
            )
            self._write(waiting)

    def settled(self, what: str) -> None:
        with self._lock:
            self._retrying.discard(what)
            if self._retrying or self._since is None:
                return
            self._since = None
            self._written = float("-inf")
            self._write(None)

    def _write(self, waiting: Waiting | None) -> None:
        try:
            self.records.waiting(self.job_id, waiting)
        except Exception as e:  # the record is only a view: the upload goes on
            logger.warning("job %s: could not update its record's waiting: %s", self.job_id, e)
