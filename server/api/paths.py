"""Which routes a concrete path belongs to, asked of the app's own router.

FastAPI nests included routers, so a flat list of path patterns does not exist; the
router's ``matches`` is the one source of truth for "is this path ours, and with
which methods".
"""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Match
from starlette.types import Scope

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def route_pattern(template: str) -> re.Pattern[str]:
    """A regex matching the concrete paths of a route template like ``/runs/{run_id}``."""
    parts = re.split(r"(\{[^}]+\})", template)
    body = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(f"^{body}$")


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """Every method some route of ``app`` accepts on ``scope``'s path (empty: unknown path)."""
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in app.routes):
            allowed.append(method)
    return allowed


def is_known_path(app: Any, scope: Scope) -> bool:
    """Some route of ``app`` has this path (with any method)."""
    return any(route.matches(scope)[0] != Match.NONE for route in app.routes)
