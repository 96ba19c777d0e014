"""The run views show a site's decline reason and its cumulative ε in each round."""

from __future__ import annotations

from fedseg.admin_views import site_cell
from shared.schemas import EpsilonEntry, SiteProgress


def test_a_site_cell_shows_the_decline_reason_and_the_cumulative_epsilon() -> None:
    declined = SiteProgress(site="a", state="declined", decline_reason="budget_exhausted")
    assert site_cell(declined) == "[yellow]declined[/] (budget_exhausted)"
    entry = EpsilonEntry(
        run_id="r",
        round=1,
        mechanism="dp_sgd",
        accountant="rdp",
        epsilon=1.2,
        cumulative_epsilon=3.456,
        delta=1e-5,
        steps=2,
    )
    trained = SiteProgress(site="a", state="uploaded", privacy=entry)
    assert site_cell(trained) == "[green]uploaded[/] ε 3.46"
