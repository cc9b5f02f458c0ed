"""/healthz (the process answers), /readyz (it can do its work), /metrics (Prometheus)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lcm_fleet.consuming.depth import family_depths
from lcm_fleet.contract import size_queue
from lcm_fleet.keys import INCARNATIONS_KEY, alive_key
from producer.http.deps import ServicesDep
from producer.http.schemas import Health, Readiness
from producer.http.services import Services
from producer.queue import cached_broker

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health()


def _queues(services: Services) -> list[str]:
    base = services.settings.queue
    return [base, *(size_queue(base, w, h) for w, h in services.settings.served_size_list)]


def readiness(services: Services) -> Readiness:
    settings = services.settings
    checks: dict[str, bool] = {}
    detail: dict[str, str] = {}
    redis = services.redis
    try:
        redis.ping()
        checks["redis"] = True
    except Exception as e:
        checks["redis"] = False
        detail["redis"] = f"{type(e).__name__}: {e}"
    try:
        services.store.client.head_bucket(Bucket=services.store.bucket)
        checks["s3"] = True
    except Exception as e:
        checks["s3"] = False
        detail["s3"] = f"{type(e).__name__}: {e}"
    if checks["redis"]:
        try:
            # A worker's heartbeat key lives LCM_HEARTBEAT_TTL_S after its last beat, so its
            # remaining lifetime tells how long ago it beat.
            incarnations = [
                i.decode() if isinstance(i, bytes) else str(i)
                for i in redis.hkeys(INCARNATIONS_KEY)
            ]
            pipe = redis.pipeline()
            for incarnation in incarnations:
                pipe.pttl(alive_key(incarnation))
            ages = [
                max(0.0, settings.heartbeat_ttl_s - int(ms) / 1000)
                for ms in pipe.execute()
                if int(ms) > 0
            ]
            recent = [age for age in ages if age <= settings.ready_heartbeat_max_age_s]
            checks["worker"] = bool(recent)
            detail["worker"] = (
                f"{len(recent)} worker(s) beat within {settings.ready_heartbeat_max_age_s:g} s"
                + (f" (latest {min(ages):.1f} s ago)" if ages else "")
            )
            # Both classes, every priority list (lcm_fleet/consuming/depth.py), broker's Redis.
            depths = family_depths(cached_broker(settings), _queues(services))
            depth = sum(d.waiting for d in depths)
            checks["queue_depth"] = depth <= settings.ready_max_queue_depth
            detail["queue_depth"] = f"{depth} waiting (at most {settings.ready_max_queue_depth})"
        except Exception as e:
            checks["worker"] = checks["queue_depth"] = False
            detail["worker"] = f"{type(e).__name__}: {e}"
    else:
        checks["worker"] = checks["queue_depth"] = False
    detail["checked_at"] = f"{time.time():.3f}"
    return Readiness(ready=all(checks.values()), checks=checks, detail=detail)


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: a check failed"}},
    summary="Redis and S3 answer, a worker beat recently, the queue is not too deep",
)
def readyz(services: ServicesDep) -> JSONResponse:
    ready = readiness(services)
    return JSONResponse(ready.model_dump(mode="json"), status_code=200 if ready.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
