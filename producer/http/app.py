"""Builds the FastAPI app of ``lcm-api``; nothing else lives here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lcm_fleet.broker import warn_if_not_persistent
from lcm_fleet.errors import InvalidJob
from producer.http import errors
from producer.http.limits import BodyLimitMiddleware
from producer.http.metrics import Metrics, MetricsMiddleware
from producer.http.routes import batches, gallery, health, images, jobs, queues, schedules
from producer.http.services import Services
from producer.http.settings import ApiSettings

logger = logging.getLogger(__name__)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The path only: headers (the API key) and bodies never go to the log.
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return errors.ApiError(500, "internal error; the service logged it").response()


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    logger.error("Redis unreachable on %s %s: %s", request.method, request.url.path, exc)
    return errors.ApiError(
        503,
        "Redis is unreachable; retry later",
        code="redis_unavailable",
        headers={"Retry-After": "5"},
    ).response()


def create_app(settings: ApiSettings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or ApiSettings()  # type: ignore[call-arg]  # the pepper comes from env
    metrics = services.metrics if services is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        warn_if_not_persistent(settings, "lcm-api")
        app.state.services = services or Services.from_settings(settings, metrics)
        try:
            yield
        finally:
            if own:
                await app.state.services.aclose()

    app = FastAPI(
        title="lcm-fleet API",
        version="1",
        summary="Text-to-image jobs and batches on an lcm-fleet of OpenVINO LCM workers",
        lifespan=lifespan,
        # No OpenTelemetry here (metrics are Prometheus, /metrics): without this FastAPI asks
        # OpenTelemetry for its providers on every request (environment lookups, ~6% of a
        # submit's CPU under load).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_exception_handler(errors.ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(InvalidJob, errors.invalid_job_handler)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
    for module in (jobs, batches, images, health, gallery, queues, schedules):
        app.include_router(module.router)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
