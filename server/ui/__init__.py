"""The research admins' dashboard, served by the coordination server under ``/ui``."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from server.ui.routes import STATIC_DIR, links, pages
from server.ui.security import DashboardHeaders
from server.ui.sessions import SessionStore


def install(app: FastAPI) -> None:
    """Mount the pages, the static files and the security headers on ``app``."""
    app.state.ui_sessions = SessionStore()
    app.include_router(pages)
    app.include_router(links)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_middleware(DashboardHeaders)
