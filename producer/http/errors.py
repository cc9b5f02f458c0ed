"""Error bodies of the HTTP API: one shape, OpenAI's, for every 4xx and 5xx.

``{"error": {"message", "type", "param", "code", "value", "allowed"}}``: ``param`` is the
field at fault (OpenAI's name for it), ``value`` what was sent, ``allowed`` what the field
accepts; the message says all three in words (the job contract's messages). The official
``openai`` client reads ``message``, ``type``, ``param`` and ``code`` from it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lcm_fleet.contract import ALLOWED
from lcm_fleet.errors import InvalidJob

#: OpenAI's error types by status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    #: The field at fault, if one is.
    param: str | None = None
    code: str | None = None
    #: The value sent (shortened), if a field is at fault.
    value: Any = None
    #: What the field allows.
    allowed: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer other than success, with the body's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        value: Any = None,
        allowed: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.value = value
        self.allowed = allowed
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(
                message=self.message,
                type=_TYPES.get(self.status, "api_error" if self.status >= 500 else "error"),
                param=self.param,
                code=self.code,
                value=shorten(self.value),
                allowed=self.allowed,
            )
        )

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.body().model_dump(mode="json"), status_code=self.status, headers=self.headers
        )


def shorten(value: Any, limit: int = 200) -> Any:
    """The value as it may appear in an error body: JSON-able, at most ``limit`` characters."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_of(loc: tuple[Any, ...]) -> str:
    """``('body', 'jobs', 3, 'steps')`` -> ``jobs[3].steps``; the request part is dropped."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or (str(loc[0]) if loc else "body")


def _problem(error: dict[str, Any], allowed_of: dict[str, str]) -> ApiError:
    loc = tuple(error.get("loc", ()))
    field = _field_of(loc)
    leaf = next((str(p) for p in reversed(loc) if isinstance(p, str)), field)
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    kind = error.get("type")
    allowed = allowed_of.get(leaf)
    if kind == "missing":
        text = f"field '{field}' is required"
    elif kind == "extra_forbidden":
        text = f"field '{field}' is not accepted here"
        allowed = "the fields of the schema (see /openapi.json)"
    elif kind in ("json_invalid", "model_attributes_type", "dict_type", "list_type") and not leaf:
        text = f"the request body is not valid: {msg}"
    else:
        text = f"field '{field}' got {shorten(error.get('input'))!r}: {msg}"
    if allowed is None and kind not in ("missing",):
        allowed = msg
    return ApiError(
        400,
        text + (f"; allowed: {allowed}" if allowed and kind != "extra_forbidden" else ""),
        param=field,
        value=None if kind == "missing" else error.get("input"),
        allowed=allowed,
        code=str(kind) if kind else None,
    )


def from_validation(
    errors: list[dict[str, Any]], allowed_of: dict[str, str] | None = None
) -> ApiError:
    """One 400 for a list of pydantic errors: the first names param/value/allowed, the
    message lists them all."""
    allowed_of = {**ALLOWED, **(allowed_of or {})}
    problems = [_problem(e, allowed_of) for e in errors] or [
        ApiError(400, "the request is not valid", param="body")
    ]
    first = problems[0]
    if len(problems) > 1:
        first.message = "; ".join(p.message for p in problems)
    return first


def from_invalid_job(error: InvalidJob, prefix: str = "") -> ApiError:
    """The contract's rejection (its message names field, value and what is allowed)."""
    cause = error.__cause__
    if isinstance(cause, ValidationError) and cause.errors():
        first = cause.errors()[0]
        loc = tuple(first.get("loc", ()))
        field = str(loc[0]) if loc else None
        return ApiError(
            400,
            f"{prefix}{error}",
            param=f"{prefix.rstrip(': ')}.{field}" if prefix and field else field,
            value=first.get("input") if field else None,
            allowed=ALLOWED.get(field or ""),
            code=str(first.get("type")),
        )
    return ApiError(400, f"{prefix}{error}", param=prefix.rstrip(": ") or None)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return from_validation(list(exc.errors())).response()


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    carried = getattr(exc, "api_error", None)
    if isinstance(carried, ApiError):
        return carried.response()
    return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()


async def invalid_job_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidJob)
    return from_invalid_job(exc).response()


_DESCRIPTIONS = {
    400: "A field is not valid: the body names it, the value and what is allowed",
    401: "No API key, or not a valid one",
    404: "No such record for this key",
    409: "The request conflicts with the record's state",
    413: "The request body is too large",
    429: "Over the key's request rate or jobs in flight (see Retry-After)",
    500: "The job failed on the worker",
    503: "Redis or the queue is unreachable",
    504: "The job did not finish within the wait timeout",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of the error statuses a route may answer."""
    return {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS.get(code, "Error")}
        for code in codes
    }
