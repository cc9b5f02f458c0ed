"""/v1/schedules: scheduled bulk runs per API key (list, create/replace, show with runs,
pause, resume, run now, delete). The same operations as ``lcm schedule``
(producer/schedules/manage.py); the runs are made by ``lcm-scheduler``.

Over HTTP a schedule's source must be an object of the fleet's bucket
(``s3://<LCM_S3_BUCKET>/...``): a local path would read files of the scheduler's machine.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError

from lcm_fleet.records import BatchCounts
from lcm_fleet.schedules import (
    ALLOWED,
    NAME_PATTERN,
    QUEUE_SCHEDULES,
    TASK_SCHEDULE_EXPAND,
    RunState,
    Schedule,
    ScheduleRun,
)
from producer.http.deps import KeyDep, ServicesDep, scope_of
from producer.http.errors import ApiError, from_validation, responses
from producer.http.services import Services
from producer.http.submitting import check_webhook
from producer.queue import cached_client
from producer.schedules.manage import Schedules, ScheduleView, schedules_for
from producer.schedules.store import OwnedElsewhere, PutOutcome

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The schedule's name")]
# The body: a schedule without its owner (the key's). Its $refs point at the components the
# response models put in the document (Schedule's JobDefaults and MissedPolicy).
_BODY_SCHEMA = Schedule.model_json_schema(ref_template="#/components/schemas/{model}")
_BODY_SCHEMA.pop("$defs", None)
_BODY_SCHEMA.pop("title", None)
_BODY_SCHEMA["properties"].pop("owner")


class RunOut(ScheduleRun):
    """A run as the API shows it: with its batch's counts, without the scheduler's lease."""

    schedule: str = Field(exclude=True)
    worker: str | None = Field(default=None, exclude=True)
    lease_until: float | None = Field(default=None, exclude=True)
    #: The batch's counts and end, while its record lives (None: expired or not yet made).
    batch_counts: BatchCounts | None = None
    batch_finished_at: float | None = None


class ScheduleOut(BaseModel):
    schedule: Schedule
    #: ISO 8601 in the schedule's zone; None while paused.
    next_slot: str | None = None
    runs: list[RunOut] = []


class ScheduleList(BaseModel):
    schedules: list[Schedule]


def _ops(services: Services) -> Schedules:
    return schedules_for(services.settings)


def _not_found(name: str) -> ApiError:
    return ApiError(
        404,
        f"no schedule {name!r} for this key (unknown, or another key's)",
        param="name",
        value=name,
        allowed="the name of a schedule this key created",
        code="schedule_not_found",
    )


def _out(view: ScheduleView) -> ScheduleOut:
    runs = [
        RunOut(
            **v.run.model_dump(),
            batch_counts=v.batch.counts if v.batch else None,
            batch_finished_at=v.batch.finished_at if v.batch else None,
        )
        for v in view.runs
    ]
    nxt = view.next_slot.astimezone(view.schedule.zone).isoformat() if view.next_slot else None
    return ScheduleOut(schedule=view.schedule, next_slot=nxt, runs=runs)


async def _body(request: Request, key: Any, name: str | None) -> Schedule:
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(
            400,
            f"the request body is not valid JSON ({e})",
            param="body",
            allowed="a JSON object with the fields of a schedule",
            code="json_invalid",
        ) from e
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object", param="body", code="json_invalid")
    if "owner" in payload:
        raise ApiError(
            400,
            "field 'owner' is set by the API (the key that sends the request); remove it",
            param="owner",
            code="extra_forbidden",
        )
    if name is not None and payload.setdefault("name", name) != name:
        raise ApiError(
            400,
            f"field 'name' got {payload['name']!r} but the path names {name!r}",
            param="name",
            value=payload["name"],
            allowed=f"{name!r} or nothing",
            code="name_mismatch",
        )
    try:
        return Schedule.model_validate({**payload, "owner": key.key_id})
    except ValidationError as e:
        raise from_validation(list(e.errors()), ALLOWED) from e  # type: ignore[arg-type]


def _check_source(services: Services, schedule: Schedule) -> None:
    bucket = services.settings.s3_bucket
    if not schedule.source.startswith(f"s3://{bucket}/"):
        raise ApiError(
            400,
            f"field 'source' got {schedule.source!r}: over HTTP a source must be an object of "
            f"the fleet's bucket; allowed: s3://{bucket}/KEY (.jsonl, .ndjson or .csv)",
            param="source",
            value=schedule.source,
            allowed=f"s3://{bucket}/KEY",
            code="source_not_allowed",
        )


def _put(services: Services, schedule: Schedule, create_only: bool) -> PutOutcome:
    _check_source(services, schedule)
    check_webhook(services, schedule.webhook_url)
    ops = _ops(services)
    existing = ops.get(schedule.name)
    if existing is not None and (create_only or existing.owner != schedule.owner):
        raise ApiError(
            409,
            f"schedule {schedule.name!r} exists"
            + ("" if existing.owner == schedule.owner else " (another key's)")
            + ("; replace it with PUT /v1/schedules/{name}" if create_only else ""),
            param="name",
            value=schedule.name,
            allowed="a name no other schedule has",
            code="schedule_exists",
        )
    try:
        return ops.put(schedule)
    except OwnedElsewhere as e:
        raise ApiError(409, f"schedule {schedule.name!r} is another key's", param="name") from e


def _view(services: Services, name: str, owner: str, runs: int = 10) -> ScheduleOut:
    view = _ops(services).view(name, owner, runs)
    if view is None:
        raise _not_found(name)
    return _out(view)


@router.get("", response_model=ScheduleList, responses=responses(401, 429))
def list_schedules(services: ServicesDep, key: KeyDep) -> ScheduleList:
    return ScheduleList(schedules=_ops(services).list(scope_of(key)))


_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}
}


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    responses=responses(400, 401, 409, 429),
    summary="Create a schedule (409 if the name exists)",
    openapi_extra=_BODY,
)
async def create_schedule(request: Request, services: ServicesDep, key: KeyDep) -> ScheduleOut:
    schedule = await _body(request, key, None)
    await anyio.to_thread.run_sync(_put, services, schedule, True)
    return await anyio.to_thread.run_sync(_view, services, schedule.name, key.key_id)


@router.put(
    "/{name}",
    response_model=ScheduleOut,
    responses=responses(400, 401, 409, 429),
    summary="Create or replace a schedule",
    openapi_extra=_BODY,
)
async def put_schedule(
    name: Name, request: Request, response: Response, services: ServicesDep, key: KeyDep
) -> ScheduleOut:
    schedule = await _body(request, key, name)
    outcome = await anyio.to_thread.run_sync(_put, services, schedule, False)
    if outcome is PutOutcome.CREATED:
        response.status_code = 201
    return await anyio.to_thread.run_sync(_view, services, name, key.key_id)


@router.get(
    "/{name}",
    response_model=ScheduleOut,
    responses=responses(400, 401, 404, 429),
    summary="A schedule, its next slot and its last runs with their batches' counts",
)
def get_schedule(
    name: Name,
    services: ServicesDep,
    key: KeyDep,
    runs: Annotated[int, Query(ge=0, le=1000)] = 10,
) -> ScheduleOut:
    return _view(services, name, scope_of(key), runs)


def _enable(services: Services, key: Any, name: str, enabled: bool) -> ScheduleOut:
    if _ops(services).set_enabled(name, scope_of(key), enabled) is None:
        raise _not_found(name)
    return _view(services, name, scope_of(key))


@router.post("/{name}/pause", response_model=ScheduleOut, responses=responses(400, 401, 404, 429))
def pause_schedule(name: Name, services: ServicesDep, key: KeyDep) -> ScheduleOut:
    return _enable(services, key, name, False)


@router.post(
    "/{name}/resume",
    response_model=ScheduleOut,
    responses=responses(400, 401, 404, 429),
    summary="Resume: it fires from its next slot (slots missed while paused do not run)",
)
def resume_schedule(name: Name, services: ServicesDep, key: KeyDep) -> ScheduleOut:
    return _enable(services, key, name, True)


@router.post(
    "/{name}/run",
    status_code=202,
    response_model=RunOut,
    responses=responses(400, 401, 404, 409, 429),
    summary="Run now: a run for this second, queued by lcm-scheduler",
)
def run_schedule_now(name: Name, services: ServicesDep, key: KeyDep) -> RunOut:
    ops = _ops(services)
    run = ops.run_now(name, scope_of(key), expand=False)
    if run is None:
        raise _not_found(name)
    if run.state is RunState.PENDING:
        cached_client(services.settings).send_task(
            TASK_SCHEDULE_EXPAND, args=[name, run.slot], queue=QUEUE_SCHEDULES
        )
    else:  # this second's run exists already (a second run-now in the same second)
        raise ApiError(
            409,
            f"schedule {name!r} has a run for slot {run.slot} already; retry in a second",
            param="name",
            value=name,
            code="run_exists",
        )
    return RunOut(**run.model_dump())


@router.delete(
    "/{name}",
    status_code=204,
    responses=responses(400, 401, 404, 429),
    summary="Delete a schedule (its batches and images stay)",
)
def delete_schedule(name: Name, services: ServicesDep, key: KeyDep) -> Response:
    if not _ops(services).remove(name, scope_of(key)):
        raise _not_found(name)
    return Response(status_code=204)
