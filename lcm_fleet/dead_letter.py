"""The dead-letter list: queue items a worker refused before they could become a job.

A worker keeps each refused item here once, with the reason, its size, its sha256 and at
most :data:`RAW_PREFIX_BYTES` of it (never a whole oversized payload), newest first; the
list is trimmed to a bounded length. ``lcm dead-letter list|show|purge`` reads and empties
it (producer/deadletter.py). Light: redis and pydantic only, so producers may import it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lcm_fleet.enums import TextEnum
from lcm_fleet.keys import DEAD_LETTER_KEY

#: How much of a refused item an entry keeps.
RAW_PREFIX_BYTES = 512
#: How much of the reason an entry keeps.
REASON_MAX_CHARS = 500
#: Default bound of the list (LCM_DEAD_LETTER_MAX on the worker).
DEFAULT_MAX_ENTRIES = 10_000


class DeadLetterKind(TextEnum):
    """Why an item was refused, in a few words (the ``kind`` metric label)."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    BAD_ENVELOPE = "bad_envelope"
    BAD_HEADERS = "bad_headers"
    BAD_BODY = "bad_body"
    UNKNOWN_TASK = "unknown_task"
    #: Passed the screen, then kombu or Celery still could not take it.
    REFUSED = "refused"


class DeadLetter(BaseModel):
    """One refused queue item."""

    model_config = ConfigDict(frozen=True)

    id: str
    #: Unix seconds when it was refused.
    at: float
    kind: DeadLetterKind
    reason: str
    #: The queue (Redis list) it was taken from, if known.
    queue: str | None = None
    #: Size of the whole item, bytes.
    size: int
    #: sha256 of the whole item, to tell items apart and find duplicates.
    sha256: str
    #: Its first RAW_PREFIX_BYTES bytes, as text (undecodable bytes escaped).
    prefix: str
    #: Who refused it (worker name or host), if known.
    worker: str | None = None


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def make_entry(
    raw: bytes,
    kind: DeadLetterKind,
    reason: str,
    *,
    queue: str | None = None,
    worker: str | None = None,
    at: float | None = None,
) -> DeadLetter:
    return DeadLetter(
        id=uuid.uuid4().hex[:16],
        at=time.time() if at is None else at,
        kind=kind,
        reason=_bounded(reason, REASON_MAX_CHARS),
        queue=None if queue is None else _bounded(queue, 200),
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        prefix=raw[:RAW_PREFIX_BYTES].decode("utf-8", errors="backslashreplace"),
        worker=worker,
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class DeadLetters:
    """The dead-letter list in one Redis (any redis-py client)."""

    def __init__(
        self, redis: Any, max_entries: int = DEFAULT_MAX_ENTRIES, key: str = DEAD_LETTER_KEY
    ) -> None:
        self.redis, self.max_entries, self.key = redis, max_entries, key

    def add(self, entry: DeadLetter) -> None:
        pipe = self.redis.pipeline()
        pipe.lpush(self.key, entry.model_dump_json())
        pipe.ltrim(self.key, 0, self.max_entries - 1)
        pipe.execute()

    def count(self) -> int:
        return int(self.redis.llen(self.key))

    def entries(self, limit: int | None = None) -> list[DeadLetter]:
        """Newest first; entries that do not parse (written by hand) are skipped."""
        raw = self.redis.lrange(self.key, 0, -1 if limit is None else max(0, limit - 1))
        out = []
        for item in raw:
            try:
                out.append(DeadLetter.model_validate_json(_text(item)))
            except ValidationError:
                continue
        return out

    def get(self, entry_id: str) -> DeadLetter | None:
        return next((e for e in self.entries() if e.id == entry_id), None)

    def purge(self) -> int:
        """Remove every entry; how many there were."""
        pipe = self.redis.pipeline()
        pipe.llen(self.key)
        pipe.delete(self.key)
        count, _ = pipe.execute()
        return int(count)
