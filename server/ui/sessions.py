"""Dashboard sign-in: a pasted token becomes a random session id in an HttpOnly cookie.

The cookie never holds the token. The token stays in this process's memory and is
checked again by the auth service on every request, so revoking it ends the session
at once; a server restart signs everyone out. Each session has its own CSRF token,
compared in constant time. One-time sign-in links (printed by ``fedseg simulate``)
are minted by an admin, live a few minutes and work once. Memory is bounded: the
oldest sessions and links are dropped first.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, TypeVar

SESSION_COOKIE: Final = "fedseg_ui"
_Entry = TypeVar("_Entry")


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the bearer token it acts with and its CSRF token."""

    token: str
    csrf: str
    expires_at: float

    def csrf_matches(self, candidate: str | None) -> bool:
        """Whether a submitted form carries this session's CSRF token."""
        return candidate is not None and hmac.compare_digest(candidate, self.csrf)


class SessionStore:
    """Sessions and one-time sign-in links, in memory, with expiry and a size cap."""

    def __init__(
        self, *, ttl_s: float = 8 * 3600, link_ttl_s: float = 600, max_entries: int = 1000
    ) -> None:
        self._ttl_s = ttl_s
        self._link_ttl_s = link_ttl_s
        self._max = max_entries
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._links: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def open(self, token: str) -> tuple[str, Session]:
        """A new session for ``token``; returns its id (the cookie value) and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(
            token=token,
            csrf=secrets.token_urlsafe(32),
            expires_at=time.monotonic() + self._ttl_s,
        )
        self._sessions[session_id] = session
        _trim(self._sessions, self._max)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, if any."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= time.monotonic():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        """Sign out: the session id stops working."""
        if session_id:
            self._sessions.pop(session_id, None)

    def mint_link(self, token: str) -> str:
        """A one-time code that opens a session for ``token``."""
        code = secrets.token_urlsafe(32)
        self._links[code] = (token, time.monotonic() + self._link_ttl_s)
        _trim(self._links, self._max)
        return code

    def redeem_link(self, code: str) -> str | None:
        """The token behind a one-time code; the code is spent whether or not it expired."""
        entry = self._links.pop(code, None)
        if entry is None:
            return None
        token, expires_at = entry
        return token if expires_at > time.monotonic() else None


def _trim(entries: OrderedDict[str, _Entry], limit: int) -> None:
    while len(entries) > limit:
        entries.popitem(last=False)
