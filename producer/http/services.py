"""What the app holds while it runs: Redis clients, the record, key and object stores, the
rate limiter and the metrics. Built once per process by the app's lifespan."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from lcm_fleet.keys import RATE_LIMIT_PREFIX
from lcm_fleet.records import SUBMIT_SCRIPT, RecordStore
from lcm_fleet.storage import ObjectStore, s3_client
from producer.http.auth import ApiKey, KeyStore, VerifiedKeys
from producer.http.metrics import Metrics
from producer.http.settings import ApiSettings
from producer.queue import broker_is_records


class RateLimiter:
    """Requests per minute per key: the ``limits`` library's moving window, in Redis, on the
    event loop (its asyncio storage over redis-py)."""

    def __init__(self, redis_url: str, ssl_kwargs: dict[str, Any] | None = None) -> None:
        from limits.aio import storage, strategies

        self._storage = storage.RedisStorage(
            "async+" + redis_url,
            implementation="redispy",
            key_prefix=RATE_LIMIT_PREFIX,
            socket_timeout=5,
            **(ssl_kwargs or {}),
        )
        self._limiter = strategies.MovingWindowRateLimiter(self._storage)

    async def hit(self, key: ApiKey) -> float | None:
        """None if the request may go on, else seconds until it may be retried."""
        from limits import RateLimitItemPerMinute

        item = RateLimitItemPerMinute(key.rate_per_minute)
        if await self._limiter.hit(item, key.key_id):
            return None
        stats = await self._limiter.get_window_stats(item, key.key_id)
        return max(1.0, math.ceil(stats.reset_time - time.time()))


@dataclass
class Services:
    settings: ApiSettings
    redis: Any
    records: RecordStore
    store: ObjectStore
    #: Signs presigned URLs for the endpoint clients reach (LCM_S3_PUBLIC_ENDPOINT_URL).
    presigner: Any
    keys: KeyStore
    limiter: RateLimiter
    metrics: Metrics
    #: The records' Redis for the event loop (redis.asyncio): the submit path, key checks.
    aredis: Any
    #: The submission script registered on ``aredis`` (lcm_fleet/records.py).
    submit_script: Any
    #: Verified keys, remembered for ``api_key_cache_s``.
    verified: VerifiedKeys
    #: The broker's Redis for the event loop when the records live elsewhere, else None (the
    #: submission script pushes the message itself).
    abroker: Any = None

    @classmethod
    def from_settings(cls, settings: ApiSettings, metrics: Metrics | None = None) -> Services:

        records_url = settings.records_url
        records_redis = settings.redis_client(records_url, socket_timeout=10)
        aredis = settings.redis_async_client(records_url, socket_timeout=10)
        keys = KeyStore(records_redis, settings)
        store = ObjectStore.from_settings(settings)
        presigner = store.client
        if settings.s3_public_endpoint_url:
            public = settings.model_copy(
                update={"s3_endpoint_url": settings.s3_public_endpoint_url}
            )
            key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
            presigner = s3_client(
                public,
                key_id.get_secret_value() if key_id is not None else None,
                secret.get_secret_value() if secret is not None else None,
            )
        return cls(
            settings=settings,
            redis=records_redis,
            records=RecordStore(records_redis, settings.record_ttl_s),
            store=store,
            presigner=presigner,
            keys=keys,
            limiter=RateLimiter(settings.redis_url, settings.redis_ssl_kwargs()),
            metrics=metrics or Metrics(),
            aredis=aredis,
            submit_script=aredis.register_script(SUBMIT_SCRIPT),
            verified=VerifiedKeys(aredis, keys, settings.api_key_cache_s),
            abroker=None
            if broker_is_records(settings)
            else settings.redis_async_client(socket_timeout=30),
        )

    def presign(self, key: str) -> str:
        return str(
            self.presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.store.bucket, "Key": key},
                ExpiresIn=self.settings.presign_expires_s,
            )
        )

    def close(self) -> None:
        self.redis.close()

    async def aclose(self) -> None:
        self.close()
        await self.aredis.aclose()
        if self.abroker is not None:
            await self.abroker.aclose()
