"""HTTP routes: parse, call one service, return a shared schema."""

from __future__ import annotations

from fastapi import APIRouter

from server.api import admin, keys, operations, site

ROUTERS: tuple[APIRouter, ...] = (
    operations.router,
    keys.router,
    site.router,
    site.bundles,
    admin.sites,
    admin.runs,
    admin.audit,
    admin.tokens,
)
