"""The producer's settings: the connection settings and how hard to try publishing."""

from __future__ import annotations

from pydantic import Field

from lcm_fleet.settings import ConnectionSettings


class ProducerSettings(ConnectionSettings):
    #: Attempts to publish a job while the broker is unreachable.
    publish_attempts: int = Field(default=5, ge=1, le=20)
    publish_backoff_base_s: float = Field(default=0.2, gt=0)
    publish_backoff_cap_s: float = Field(default=5.0, gt=0)
