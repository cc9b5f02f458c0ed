"""Size limits of request bodies: 413 before the app reads more than it allows."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from producer.http.errors import ApiError


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` (an HTTPException, so FastAPI's body parsing passes it on)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(413, error.message)
        self.api_error = error


class BodyLimitMiddleware:
    """Refuses bodies over ``max_body_bytes`` (``max_upload_bytes`` for multipart uploads),
    by Content-Length when given, else while the body streams in."""

    def __init__(self, app: Any, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def _refusal(self, limit: int, got: int | None) -> ApiError:
        said = f"{got} bytes" if got is not None else f"more than {limit} bytes"
        return ApiError(
            413,
            f"the request body has {said}; allowed: at most {limit} bytes",
            param="body",
            value=got,
            allowed=f"at most {limit} bytes",
            code="body_too_large",
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        limit = self.max_upload_bytes if multipart else self.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await self._refusal(limit, int(length)).response()(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(self._refusal(limit, None))
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if not started:
                await e.api_error.response()(scope, receive, send)
