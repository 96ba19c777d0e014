"""``fedseg admin runs status`` text: a declined site shows its reason, a DP site its ε."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from fedseg import admin_views as views
from shared.schemas import EpsilonEntry, RoundInfo, RunConfig, RunInfo, SiteProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _text(renderable: object) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_runs_status_shows_epsilon_per_site_and_declines_with_their_reason() -> None:
    run = RunInfo(
        id="run-1",
        name="dp",
        status="budget_exhausted",
        config=RunConfig(sites=["site-a", "site-b"]),
        current_round=2,
        created_at=T0,
    )
    spent = EpsilonEntry(
        run_id="run-1",
        round=1,
        mechanism="dp_sgd",
        accountant="rdp",
        epsilon=1.25,
        cumulative_epsilon=1.25,
        delta=1e-5,
        steps=20,
    )
    rounds = [
        RoundInfo(
            run_id="run-1",
            round=1,
            status="closed",
            opened_at=T0,
            deadline=T0,
            closed_at=T0,
            weights_sha256=None,
            sites=[
                SiteProgress(site="site-a", state="uploaded", privacy=spent),
                SiteProgress(site="site-b", state="uploaded", privacy=spent),
            ],
        ),
        RoundInfo(
            run_id="run-1",
            round=2,
            status="cancelled",
            opened_at=T0,
            deadline=T0,
            closed_at=T0,
            weights_sha256=None,
            sites=[
                SiteProgress(site="site-a", state="declined", decline_reason="budget_exhausted"),
                SiteProgress(site="site-b", state="declined", decline_reason="too_few_cases"),
            ],
        ),
    ]
    text = _text(views.rounds_table(run, rounds))
    assert text.count("uploaded ε 1.25") == 2
    assert "declined (budget_exhausted)" in text and "declined (too_few_cases)" in text
    assert "budget_exhausted" in _text(views.run_summary(run))
    assert "budget_exhausted" in views.FINISHED_RUN  # ``runs watch`` stops on it
