"""Typed settings from environment variables with the prefix ``LCM_``.

``ConnectionSettings`` holds what every role needs to reach Redis and S3; the
producer's, the worker's and the build's settings extend it, so each process has one
object. Secrets are ``SecretStr``: the object store unwraps them once, where it
builds its client (lcm_fleet/storage.py).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lcm_fleet.contract import QUEUE_RENDER
from lcm_fleet.keys import normalise_prefix

ENV_PREFIX = "LCM_"


class ConnectionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: Celery broker and result backend.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Queue that render jobs go to.
    queue: str = QUEUE_RENDER
    #: Seconds a finished job's result stays readable in Redis.
    result_expires_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Seconds a job or batch record (lcm_fleet/records.py) stays readable after its last
    #: change.
    record_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Redis of the job and batch records; None: the broker's (LCM_REDIS_URL).
    records_redis_url: str | None = None

    #: S3 endpoint; None means AWS's own endpoints.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "lcm-fleet"
    #: Key prefix under which all of lcm-fleet's objects live.
    s3_prefix: str = ""
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    s3_read_timeout_s: float = Field(default=60.0, gt=0)
    #: S3 credentials; None uses boto3's default chain. The worker requires both.
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    @property
    def records_url(self) -> str:
        return self.records_redis_url or self.redis_url

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return normalise_prefix(value)
