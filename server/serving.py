"""How uvicorn serves the app: TLS, slow-connection protection and connection limits.

What uvicorn offers is used as it is: ``timeout_keep_alive`` closes idle keep-alive
connections, ``h11_max_incomplete_event_size`` bounds the request line and headers,
``limit_concurrency`` answers 503 beyond that many connections and tasks, and
``ssl_*`` serves HTTPS (with client certificates when a client CA is given).
uvicorn has no deadline for a request's headers, so a client that opens a
connection and sends nothing, or drips a header a byte at a time, would hold it
forever: `GuardedH11Protocol` closes such a connection after ``header_timeout_s``.
A body is read only after the headers authenticated (server/api/gate.py) and is
bounded (server/api/limits.py).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.settings import Settings


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers."""

    header_timeout_s: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        """Stop the clock once the headers are in (h11 left its IDLE state)."""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        """Restart the clock for the next request on a kept-alive connection."""
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing to wait for any more."""
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete headers in time")
            self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """`GuardedH11Protocol` with its deadline set (uvicorn instantiates the class)."""
    return type("GuardedH11", (GuardedH11Protocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_config(app: Any, settings: Settings, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration ``fedseg server serve`` runs ``app`` with."""
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        if settings.tls_client_ca is not None:
            tls["ssl_ca_certs"] = str(settings.tls_client_ca)
            tls["ssl_cert_reqs"] = (
                ssl.CERT_REQUIRED if settings.tls_client_cert_required else ssl.CERT_OPTIONAL
            )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=guarded_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_concurrency,
        timeout_graceful_shutdown=5,
        # The throttle keys on the client address: only named proxies may set it.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        **tls,
    )
