"""Typed dependencies of the routes: the services, the caller's API key, what it may see.

All are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
hand-off per dependency per request; these only read the app state or await Redis.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lcm_fleet.records import ANY_OWNER, RecordStore
from lcm_fleet.storage import ObjectStore
from producer.http.auth import ApiKey
from producer.http.errors import ApiError
from producer.http.services import Services
from producer.http.settings import ApiSettings

_bearer = HTTPBearer(auto_error=False, description="An API key from `lcm-api keys create`")


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> ApiSettings:
    return services.settings


async def get_records(services: ServicesDep) -> RecordStore:
    return services.records


async def get_store(services: ServicesDep) -> ObjectStore:
    return services.store


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
RecordsDep = Annotated[RecordStore, Depends(get_records)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]


async def authenticate(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key (401 without a valid one), counted against its rate (429)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401,
            "no API key: send 'Authorization: Bearer <key>' with a key from `lcm-api keys create`",
            param="Authorization",
            allowed="Bearer <API key>",
            code="missing_api_key",
            headers=challenge,
        )
    key = await services.verified.verify(credentials.credentials)
    if key is None:  # never echo the key itself
        raise ApiError(
            401,
            "the API key is not valid (unknown, malformed or revoked)",
            param="Authorization",
            allowed="Bearer <API key>",
            code="invalid_api_key",
            headers=challenge,
        )
    retry_after = await services.limiter.hit(key)
    if retry_after is not None:
        services.metrics.rate_limited.labels("rate").inc()
        raise ApiError(
            429,
            f"key {key.key_id} is over its limit of {key.rate_per_minute} requests per minute; "
            f"retry after {retry_after:.0f} s",
            param="Authorization",
            value=key.key_id,
            allowed=f"at most {key.rate_per_minute} requests per minute",
            code="rate_limit_exceeded",
            headers={"Retry-After": f"{retry_after:.0f}"},
        )
    return key


KeyDep = Annotated[ApiKey, Depends(authenticate)]


def scope_of(key: ApiKey) -> str:
    """The owner whose records the key may read and cancel (admin: everyone's)."""
    return ANY_OWNER if key.admin else key.key_id
