"""The one place a run's or a round's status changes, guarded by a table of allowed moves.

Every status change of a `RunRow` or a `RoundRow` goes through `change_status`,
which refuses a move the tables below do not list (`Conflict`, ``run_state`` or
``round_state``) and stamps the matching time. A row is *created* with its first
status; nothing else in ``server/`` assigns ``.status`` (a test greps for it).

To add a state (a secure-aggregation step, ``budget_exhausted``), add it to the
enum in `shared.schemas` and one line here; the tests walk these tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from server.db.models import RoundRow, RunRow
from shared.errors import Conflict
from shared.schemas import RoundStatus, RunStatus

RUN_TRANSITIONS: Final[Mapping[RunStatus, frozenset[RunStatus]]] = {
    RunStatus.CREATED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
            RunStatus.BUDGET_EXHAUSTED,
        }
    ),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.BUDGET_EXHAUSTED: frozenset(),
}
"""Where a run may go from each status; a run with no way out is finished."""

ROUND_TRANSITIONS: Final[Mapping[RoundStatus, frozenset[RoundStatus]]] = {
    RoundStatus.CREATED: frozenset({RoundStatus.OPEN, RoundStatus.CANCELLED}),
    RoundStatus.OPEN: frozenset(
        {RoundStatus.AGGREGATING, RoundStatus.FAILED, RoundStatus.CANCELLED}
    ),
    # back to open: a close that failed half-way, retried by the ticker or by `resume`
    RoundStatus.AGGREGATING: frozenset(
        {RoundStatus.CLOSED, RoundStatus.OPEN, RoundStatus.FAILED, RoundStatus.CANCELLED}
    ),
    RoundStatus.CLOSED: frozenset(),
    RoundStatus.FAILED: frozenset(),
    RoundStatus.CANCELLED: frozenset(),
}
"""Where a round may go from each status; a round with no way out is decided."""


def run_finished(status: str) -> bool:
    """True once a run can change no more (completed, failed, cancelled, ...)."""
    return not RUN_TRANSITIONS[RunStatus(status)]


def round_decided(status: str) -> bool:
    """True once a round can change no more (closed, failed, cancelled)."""
    return not ROUND_TRANSITIONS[RoundStatus(status)]


def change_status(row: RunRow | RoundRow, to: RunStatus | RoundStatus, *, at: datetime) -> None:
    """Move ``row`` to status ``to`` if the table allows it, and stamp the time.

    A run gets ``started_at`` when it starts and ``finished_at`` when it finishes; a
    round gets ``closed_at`` when it is decided. Raises `Conflict` otherwise.
    """
    if isinstance(row, RunRow):
        run_from = RunStatus(row.status)
        run_to = RunStatus(to)
        if run_to not in RUN_TRANSITIONS[run_from]:
            raise Conflict(
                f"run {row.id} is {run_from}, it cannot become {run_to}", code="run_state"
            )
        row.status = run_to.value  # a plain str: psycopg would store an enum's name
        if run_to == RunStatus.RUNNING:
            row.started_at = at
        elif run_finished(run_to):
            row.finished_at = at
        return
    round_from = RoundStatus(row.status)
    round_to = RoundStatus(to)
    if round_to not in ROUND_TRANSITIONS[round_from]:
        raise Conflict(
            f"round {row.number} of {row.run_id} is {round_from}, it cannot become {round_to}",
            code="round_state",
        )
    row.status = round_to.value
    if round_decided(round_to):
        row.closed_at = at
