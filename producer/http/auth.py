"""API keys: Bearer tokens stored as HMAC-SHA256 digests under a pepper, never themselves.

A key reads ``lcm_<id>_<secret>``: the id (public: it owns the key's jobs, it is in the
logs) finds the record, the digest of the whole key proves it. The pepper
(``LCM_API_KEY_PEPPER``) is not in Redis, so a copy of Redis alone cannot test guesses.
A key's webhook secret is derived from the pepper and the id, so nothing secret is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from lcm_fleet.keys import API_KEYS_KEY, api_key_key
from producer.http.settings import ApiSettings

KEY_PREFIX = "lcm_"
_KEY_RE = re.compile(r"^lcm_([0-9a-f]{16})_([A-Za-z0-9_-]{32,64})$")


class ApiKey(BaseModel):
    """An API key's record (no secret in it)."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    name: str
    admin: bool = False
    rate_per_minute: int
    max_in_flight: int
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _pepper(settings: ApiSettings) -> bytes:
    return settings.api_key_pepper.get_secret_value().encode()


def key_digest(settings: ApiSettings, key: str) -> str:
    return hmac.new(_pepper(settings), key.encode(), hashlib.sha256).hexdigest()


def webhook_secret(settings: ApiSettings, key_id: str) -> bytes:
    """The key's webhook signing secret: HMAC-SHA256(pepper, "webhook:" + key id), as the
    ``whsec_<hex>`` text printed at key creation (its bytes are the HMAC key)."""
    digest = hmac.new(_pepper(settings), f"webhook:{key_id}".encode(), hashlib.sha256)
    return f"whsec_{digest.hexdigest()}".encode()


def split_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KeyStore:
    """API key records in Redis (``lcm-fleet:api:key:<id>``)."""

    def __init__(self, redis: Any, settings: ApiSettings) -> None:
        self.redis = redis
        self.settings = settings

    def create(
        self,
        name: str,
        *,
        admin: bool = False,
        rate_per_minute: int | None = None,
        max_in_flight: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key's record and the key itself (shown once; only its digest is kept)."""
        key_id = secrets.token_hex(8)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(
            key_id=key_id,
            name=name,
            admin=admin,
            rate_per_minute=rate_per_minute or self.settings.default_rate_per_minute,
            max_in_flight=max_in_flight or self.settings.default_max_in_flight,
            created_at=time.time(),
        )
        fields = {
            "name": name,
            "digest": key_digest(self.settings, key),
            "admin": "1" if admin else "0",
            "rate_per_minute": str(record.rate_per_minute),
            "max_in_flight": str(record.max_in_flight),
            "created_at": repr(record.created_at),
        }
        pipe = self.redis.pipeline()
        pipe.hset(api_key_key(key_id), mapping=fields)
        pipe.sadd(API_KEYS_KEY, key_id)
        pipe.execute()
        return record, key

    def _record(self, key_id: str, raw: dict[str, str]) -> ApiKey:
        return ApiKey(
            key_id=key_id,
            name=raw.get("name", ""),
            admin=raw.get("admin") == "1",
            rate_per_minute=int(raw.get("rate_per_minute") or 1),
            max_in_flight=int(raw.get("max_in_flight") or 1),
            created_at=float(raw.get("created_at") or 0),
            revoked_at=float(raw["revoked_at"]) if raw.get("revoked_at") else None,
        )

    def _raw(self, key_id: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.redis.hgetall(api_key_key(key_id)).items()}

    def checked(self, key_id: str, digest: str, raw: dict[str, str]) -> ApiKey | None:
        """The record if ``raw`` (the key's hash) is unrevoked and holds ``digest``."""
        if not raw or raw.get("revoked_at"):
            return None
        if not hmac.compare_digest(raw.get("digest", ""), digest):
            return None
        return self._record(key_id, raw)

    def verify(self, key: str) -> ApiKey | None:
        """The record of a valid, unrevoked key; None for anything else."""
        key_id = split_key(key)
        if key_id is None:
            return None
        return self.checked(key_id, key_digest(self.settings, key), self._raw(key_id))

    def get(self, key_id: str) -> ApiKey | None:
        raw = self._raw(key_id)
        return self._record(key_id, raw) if raw else None

    def list(self) -> list[ApiKey]:
        ids = sorted(_text(x) for x in self.redis.smembers(API_KEYS_KEY))
        found = (self.get(key_id) for key_id in ids)
        return sorted((k for k in found if k is not None), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key at once; False if there is no such key (or it was revoked)."""
        if not self.redis.exists(api_key_key(key_id)):
            return False
        return bool(self.redis.hsetnx(api_key_key(key_id), "revoked_at", repr(time.time())))


class VerifiedKeys:
    """:meth:`KeyStore.verify` on the event loop (an asyncio Redis client), each valid key's
    record remembered for ``ttl_s`` (``LCM_API_KEY_CACHE_S``) by its digest, never the key.

    A revoked key is refused at once by every submit (the submission script reads the key's
    hash itself) and by everything else once its entry is older than ``ttl_s``. Invalid keys
    are never remembered: each is looked up again.
    """

    def __init__(
        self,
        aredis: Any,
        store: KeyStore,
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.aredis = aredis
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._seen: dict[str, tuple[float, ApiKey]] = {}

    async def verify(self, key: str) -> ApiKey | None:
        key_id = split_key(key)
        if key_id is None:
            return None
        digest = key_digest(self.store.settings, key)
        now = self.clock()
        seen = self._seen.get(digest)
        if seen is not None and now - seen[0] < self.ttl_s:
            return seen[1]
        fetched = await self.aredis.hgetall(api_key_key(key_id))
        raw = {_text(k): _text(v) for k, v in fetched.items()}
        record = self.store.checked(key_id, digest, raw)
        if record is None:
            self._seen.pop(digest, None)
        elif self.ttl_s > 0:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            self._seen[digest] = (now, record)
        return record
