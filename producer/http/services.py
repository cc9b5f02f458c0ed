"""What the app holds while it runs: Redis clients, the record, key and object stores, the
rate limiter and the metrics. Built once per process by the app's lifespan."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from lcm_fleet.keys import RATE_LIMIT_PREFIX
from lcm_fleet.records import RecordStore
from lcm_fleet.storage import ObjectStore, s3_client
from producer.http.auth import ApiKey, KeyStore
from producer.http.metrics import Metrics
from producer.http.settings import ApiSettings


class RateLimiter:
    """Requests per minute per key: the ``limits`` library's moving window, in Redis."""

    def __init__(self, redis_url: str, ssl_kwargs: dict[str, Any] | None = None) -> None:
        from limits import storage, strategies

        self._storage = storage.RedisStorage(
            redis_url, key_prefix=RATE_LIMIT_PREFIX, socket_timeout=5, **(ssl_kwargs or {})
        )
        self._limiter = strategies.MovingWindowRateLimiter(self._storage)

    def hit(self, key: ApiKey) -> float | None:
        """None if the request may go on, else seconds until it may be retried."""
        from limits import RateLimitItemPerMinute

        item = RateLimitItemPerMinute(key.rate_per_minute)
        if self._limiter.hit(item, key.key_id):
            return None
        stats = self._limiter.get_window_stats(item, key.key_id)
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

    @classmethod
    def from_settings(cls, settings: ApiSettings, metrics: Metrics | None = None) -> Services:
        records_redis = settings.redis_client(settings.records_url, socket_timeout=10)
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
            keys=KeyStore(records_redis, settings),
            limiter=RateLimiter(settings.redis_url, settings.redis_ssl_kwargs()),
            metrics=metrics or Metrics(),
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
