"""Authentication at the edge, before any body is read, with a limit on failures per address.

Every path under ``/api/v1`` but ``/enroll`` and the server's public key (and its
rotation statements) needs a credential. This pure ASGI
middleware checks it from the headers alone and stores the `Principal` in the
request state, so FastAPI has not read (let alone parsed) a byte of the body when an
unauthenticated request is refused with 401. Failed authentications and failed
enrollments are counted per client address (`AddressWindow`); an address over the
limit gets 429 with ``Retry-After`` until its window ends, whatever it sends, so
tokens cannot be guessed at speed.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.paths import is_known_path
from server.api.problems import note_scope_refusal, problem_response
from server.api.throttle import AddressWindow
from shared import routes
from shared.errors import AuthError

PRINCIPAL_STATE_KEY = "principal"


def client_address(scope: Scope) -> str:
    """The peer's address as the server saw it (no proxy headers are trusted here)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


PUBLIC_PATHS = frozenset({routes.ENROLL, routes.SERVER_KEY, routes.KEY_ROTATIONS})


def needs_credential(scope: Scope) -> bool:
    """Every API route but enrollment and the server's public key data.

    Operations, the docs and unknown paths (404) are not gated either.
    """
    path: str = scope["path"]
    if not path.startswith(routes.PREFIX + "/") or path in PUBLIC_PATHS:
        return False
    return is_known_path(scope["app"], scope)


class AuthGate:
    """Authenticate from the headers before the app runs; throttle failing addresses."""

    def __init__(self, app: ASGIApp, *, failures: AddressWindow) -> None:
        self.app = app
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse with 429 or 401 unread, or run the app with the principal in the state."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        gated = needs_credential(scope)
        if not gated and path != routes.ENROLL:  # enrollment is throttled though public
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        wait = self.failures.retry_after(address)
        if wait is not None:
            await _too_many(scope, receive, send, wait)
            return
        if not gated:
            await self.app(scope, receive, self._count_failed_enrollment(address, send))
            return
        services = getattr(scope["app"].state, "services", None)
        if services is not None:
            try:
                principal = await services.auth.authenticate(_header(scope, b"authorization"))
            except AuthError as exc:
                self.failures.add(address)
                note_scope_refusal(scope, exc.http_status, exc.code)
                response = problem_response(exc.http_status, exc.code, exc.message, instance=path)
                await response(scope, receive, send)
                return
            state: dict[str, Any] = scope.setdefault("state", {})
            state[PRINCIPAL_STATE_KEY] = principal
        await self.app(scope, receive, send)

    def _count_failed_enrollment(self, address: str, send: Send) -> Send:
        async def counting_send(message: Message) -> None:
            status = message.get("status", 0) if message["type"] == "http.response.start" else 0
            if 400 <= status < 500 and status != 429:
                self.failures.add(address)
            await send(message)

        return counting_send


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _too_many(scope: Scope, receive: Receive, send: Send, wait: int) -> None:
    response = problem_response(
        429,
        "rate_limited",
        f"too many failed attempts from this address; retry in {wait} s",
        instance=scope["path"],
    )
    response.headers["Retry-After"] = str(wait)
    await response(scope, receive, send)
