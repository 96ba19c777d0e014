"""Response headers that pin the dashboard down: a strict CSP and no framing.

Scripts and styles come only from ``/ui/static`` (no inline code, no eval), charts
are inline SVG drawn with presentation attributes, forms post only to this origin,
and no page can be framed. Applied to every ``/ui`` response, errors included.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes form posts send Origin: null
    "Cross-Origin-Opener-Policy": "same-origin",
}


class DashboardHeaders:
    """Pure ASGI middleware: adds `HEADERS` to responses under ``/ui``."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through; add the headers when a ``/ui`` response starts."""
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/ui"):
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
            await send(message)

        await self._app(scope, receive, send_with_headers)
