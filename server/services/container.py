"""The services one app instance uses, built together by `server.app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from server.metrics import Metrics
from server.services.audit import AuditService
from server.services.auth import AuthService
from server.services.declines import DeclineService
from server.services.intake import UpdateIntake
from server.services.operations import OperationsService
from server.services.rotations import KeyRotations
from server.services.rounds import Coordinator
from server.services.runs import RunService
from server.services.sites import SiteService
from server.services.tasks import TaskService
from server.services.tokens import TokenService


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a route may call; one instance per app."""

    auth: AuthService
    sites: SiteService
    runs: RunService
    coordinator: Coordinator
    intake: UpdateIntake
    declines: DeclineService
    tasks: TaskService
    operations: OperationsService
    metrics: Metrics
    tokens: TokenService
    audit: AuditService
    rotations: KeyRotations
