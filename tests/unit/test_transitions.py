"""The run and round state machines: every allowed move works, every other one is refused,
and no code in ``server/`` changes a run's or a round's status anywhere else."""

from __future__ import annotations

import ast
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.db.models import RoundRow, RunRow
from server.services.transitions import (
    ROUND_TRANSITIONS,
    RUN_TRANSITIONS,
    change_status,
    round_decided,
    run_finished,
)
from shared.errors import Conflict
from shared.schemas import RoundStatus, RunStatus

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 12, 2, tzinfo=UTC)


def _run(status: RunStatus) -> RunRow:
    return RunRow(id="run-1", name="r", status=status, config={}, created_at=AT)


def _round(status: RoundStatus) -> RoundRow:
    return RoundRow(run_id="run-1", number=1, status=status)


def test_the_tables_cover_every_status() -> None:
    assert set(RUN_TRANSITIONS) == set(RunStatus)
    assert set(ROUND_TRANSITIONS) == set(RoundStatus)
    for targets in (*RUN_TRANSITIONS.values(), *ROUND_TRANSITIONS.values()):
        assert targets <= set(RunStatus) or targets <= set(RoundStatus)


RUN_ALLOWED = [(a, b) for a, targets in RUN_TRANSITIONS.items() for b in targets]
RUN_FORBIDDEN = [
    (a, b) for a, b in itertools.product(RunStatus, RunStatus) if b not in RUN_TRANSITIONS[a]
]
ROUND_ALLOWED = [(a, b) for a, targets in ROUND_TRANSITIONS.items() for b in targets]
ROUND_FORBIDDEN = [
    (a, b) for a, b in itertools.product(RoundStatus, RoundStatus) if b not in ROUND_TRANSITIONS[a]
]


@pytest.mark.parametrize(("before", "after"), RUN_ALLOWED)
def test_allowed_run_transition(before: RunStatus, after: RunStatus) -> None:
    run = _run(before)
    change_status(run, after, at=AT)
    assert run.status == after
    assert (run.started_at == AT) == (after == RunStatus.RUNNING)
    assert (run.finished_at == AT) == run_finished(after)


@pytest.mark.parametrize(("before", "after"), RUN_FORBIDDEN)
def test_forbidden_run_transition(before: RunStatus, after: RunStatus) -> None:
    run = _run(before)
    with pytest.raises(Conflict) as raised:
        change_status(run, after, at=AT)
    assert raised.value.code == "run_state"
    assert run.status == before and run.started_at is None and run.finished_at is None


@pytest.mark.parametrize(("before", "after"), ROUND_ALLOWED)
def test_allowed_round_transition(before: RoundStatus, after: RoundStatus) -> None:
    row = _round(before)
    change_status(row, after, at=AT)
    assert row.status == after
    assert (row.closed_at == AT) == round_decided(after)


@pytest.mark.parametrize(("before", "after"), ROUND_FORBIDDEN)
def test_forbidden_round_transition(before: RoundStatus, after: RoundStatus) -> None:
    row = _round(before)
    with pytest.raises(Conflict) as raised:
        change_status(row, after, at=AT)
    assert raised.value.code == "round_state"
    assert row.status == before and row.closed_at is None


def test_decided_rounds_and_finished_runs_are_final() -> None:
    for status in (RoundStatus.CLOSED, RoundStatus.FAILED, RoundStatus.CANCELLED):
        assert round_decided(status) and not ROUND_TRANSITIONS[status]
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        assert run_finished(status) and not RUN_TRANSITIONS[status]
    assert RunStatus.BUDGET_EXHAUSTED in RUN_TRANSITIONS[RunStatus.RUNNING]


# Site statuses (pending, active, revoked) are another machine, kept by the sites service.
_OWNERS = {"server/services/transitions.py", "server/services/sites.py"}


def status_assignments(root: Path) -> list[str]:
    """``x.status = ...`` (also in tuples and augmented) anywhere but the owners."""
    found = []
    for path in sorted((root / "server").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative in _OWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                parts = target.elts if isinstance(target, ast.Tuple) else [target]
                for part in parts:
                    if isinstance(part, ast.Attribute) and part.attr == "status":
                        found.append(f"{relative}:{node.lineno}")
    return found


def test_no_status_is_assigned_outside_the_transition_function() -> None:
    assert status_assignments(REPO) == []


def test_the_status_check_finds_an_assignment(tmp_path: Path) -> None:
    module = tmp_path / "server" / "services" / "sneaky.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f(run, round_):\n    run.status = 'x'\n    round_.status, b = 1, 2\n")
    assert status_assignments(tmp_path) == [
        "server/services/sneaky.py:2",
        "server/services/sneaky.py:3",
    ]


def test_only_a_running_run_can_run_out_of_budget_and_that_is_final() -> None:
    """``running -> budget_exhausted`` is the one way in; nothing leads out of it."""
    run = _run(RunStatus.RUNNING)
    change_status(run, RunStatus.BUDGET_EXHAUSTED, at=AT)
    assert run.status == "budget_exhausted" and run.finished_at == AT
    assert run_finished(RunStatus.BUDGET_EXHAUSTED)
    for before in (RunStatus.CREATED, RunStatus.COMPLETED, RunStatus.FAILED):
        with pytest.raises(Conflict) as refused:
            change_status(_run(before), RunStatus.BUDGET_EXHAUSTED, at=AT)
        assert refused.value.code == "run_state"
    with pytest.raises(Conflict):
        change_status(run, RunStatus.RUNNING, at=AT)
