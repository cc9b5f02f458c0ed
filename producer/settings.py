"""The producer's settings: the connection settings and how hard to try publishing."""

from __future__ import annotations

from pydantic import Field

from lcm_fleet.served import CACHE_S_DEFAULT, ServedSizeCheck
from lcm_fleet.settings import ConnectionSettings


class ProducerSettings(ConnectionSettings):
    #: Seconds a producer keeps trying to publish a job while the broker is unreachable
    #: (capped, jittered backoff between tries), then gives up in one line.
    publish_budget_s: float = Field(default=30.0, gt=0, le=3600)
    publish_backoff_base_s: float = Field(default=0.2, gt=0)
    publish_backoff_cap_s: float = Field(default=5.0, gt=0)
    #: Refuse jobs no worker would consume (lcm_fleet/served.py): ``auto`` once workers
    #: advertise on the job's queue family, ``strict`` also before any does, ``off`` never.
    served_size_check: ServedSizeCheck = ServedSizeCheck.AUTO
    #: Seconds a producer reuses what it read of the workers' adverts.
    served_cache_s: float = Field(default=CACHE_S_DEFAULT, ge=0, le=60)
