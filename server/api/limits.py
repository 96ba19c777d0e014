"""A request-body limit for every route but the update upload, as pure ASGI middleware.

The limit is enforced twice: a declared ``Content-Length`` over it is refused with
413 before a byte of the body is read, and the bytes actually pulled from the
connection are counted, so a chunked (or lying) body is cut off as soon as it passes
the limit. Memory therefore never holds more than the limit, whoever is calling.
The upload route streams to disk and checks its own, larger limit
(``max_update_bytes``) in the coordinator, so it is the one exception.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.paths import route_pattern
from server.api.problems import note_scope_refusal, problem_response
from shared import routes

LimitFor = Callable[[str, str], int | None]


_UPLOAD = route_pattern(routes.UPDATES)


def body_limits(*, max_body_bytes: int, max_enroll_bytes: int) -> LimitFor:
    """The limit for ``(method, path)``: small for enrollment, none for the upload."""

    def limit_for(method: str, path: str) -> int | None:
        if method == "PUT" and _UPLOAD.match(path):
            return None
        if path == routes.ENROLL:
            return max_enroll_bytes
        return max_body_bytes

    return limit_for


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the counted body passes the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyLimit:
    """Refuse bodies over the route's limit, by ``Content-Length`` and by counting."""

    def __init__(self, app: ASGIApp, *, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a counting ``receive``, or refuse it unread."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(scope, receive, send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            # Digits only and a sane length, so int() never sees thousands of digits.
            return int(text) if text.isdigit() and len(text) <= 18 else 1 << 62
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    note_scope_refusal(scope, 413, "payload_too_large")
    response = problem_response(
        413,
        "payload_too_large",
        f"the request body is larger than {limit} bytes",
        instance=scope["path"],
    )
    response.headers["Connection"] = "close"
    await response(scope, receive, send)
