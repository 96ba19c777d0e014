"""The dashboard's pure parts: what a page shows from rounds, chart scaling, sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.ui import charts, views
from server.ui.sessions import SessionStore
from shared.schemas import EpsilonEntry, RoundInfo, SiteProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def round_info(number: int, sites: list[SiteProgress], **values: object) -> RoundInfo:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "round": number,
        "status": "closed",
        "opened_at": T0 + timedelta(minutes=number),
        "deadline": T0 + timedelta(minutes=number, seconds=30),
        "closed_at": T0 + timedelta(minutes=number, seconds=20),
        "weights_sha256": None,
        "sites": sites,
    }
    fields.update(values)
    return RoundInfo.model_validate(fields)


def uploaded(site: str, seconds: float, **metrics: float) -> SiteProgress:
    return SiteProgress(
        site=site, state="uploaded", metrics=metrics, updated_at=T0 + timedelta(seconds=seconds)
    )


def test_dice_of_version_v_comes_from_round_v_plus_one_with_a_mean_line() -> None:
    rounds = [
        round_info(2, [uploaded("b", 1, dice_wt=0.6), uploaded("a", 1, dice_wt=0.4)]),
        round_info(1, [uploaded("a", 1, dice_wt=0.1)]),
    ]
    series = {line.label: line.points for line in views.dice_series(rounds, "wt")}
    assert series == {"a": [(0, 0.1), (1, 0.4)], "b": [(1, 0.6)], "mean": [(0, 0.1), (1, 0.5)]}


def test_the_mean_region_is_computed_when_a_site_sends_only_the_three() -> None:
    assert views.region_value({"dice_tc": 0.3, "dice_wt": 0.6, "dice_et": 0.9}, "mean") == (
        pytest.approx(0.6)
    )
    assert views.region_value({"dice_tc": 0.3}, "mean") is None


def test_the_timeline_splits_the_round_of_the_site_that_arrived_last() -> None:
    first = uploaded("a", 5, time_train=3.0, time_seal=0.5)
    last = uploaded("b", 9, time_train=7.0, time_download=1.0)
    (row,) = views.timeline([round_info(1, [first, last])])
    assert row.critical_site == "b"
    assert row.parts == {"download": 1.0, "train": 7.0}
    assert row.wall_s == 20.0 and row.other_s == 12.0


def test_the_live_round_marks_sites_late_only_after_the_deadline() -> None:
    sites = [uploaded("a", 1), SiteProgress(site="b", state="training")]
    info = round_info(3, sites, status="open", closed_at=None)
    before = views.live_round([info], T0 + timedelta(minutes=3, seconds=10))
    after = views.live_round([info], T0 + timedelta(minutes=4))
    assert before is not None and after is not None
    assert before.seconds_left == 20 and not any(site.late for site in before.sites)
    assert [site.late for site in after.sites] == [False, True] and after.seconds_left == 0
    assert after.done == 1


def test_declines_and_epsilon_are_read_from_the_sites_progress() -> None:
    entry = EpsilonEntry(
        run_id="run-1",
        round=1,
        mechanism="dp_sgd",
        accountant="rdp",
        epsilon=0.5,
        cumulative_epsilon=0.5,
        delta=1e-5,
        noise_multiplier=1.1,
        clip=1.0,
        sample_rate=0.25,
        steps=4,
    )
    declined = SiteProgress(
        site="c", state="declined", decline_reason="budget_exhausted", message="over budget"
    )
    plain = uploaded("b", 1, epsilon=9.0)  # a metric named epsilon is not a ledger entry
    rounds = [
        round_info(1, [uploaded("a", 1).model_copy(update={"privacy": entry}), plain, declined])
    ]
    assert [(number, item.site) for number, item in views.declines(rounds)] == [(1, "c")]
    assert [(line.label, line.points) for line in views.epsilon_series(rounds)] == [
        ("a", [(1, 0.5)])
    ]


def test_charts_scale_into_the_plot_area_and_clamp() -> None:
    chart = charts.line_chart(
        [views.Series("a", [(0, 0.0), (4, 1.0), (5, 2.0)])], x_title="v", y_title="d", y_max=1.0
    )
    (line,) = chart.lines
    assert line.dots[0] == (chart.left, chart.bottom)
    assert line.dots[1][1] == chart.top and line.dots[2] == (chart.right, chart.top)
    assert charts.line_chart([], x_title="v", y_title="d").empty


def test_sessions_expire_links_work_once_and_memory_is_bounded() -> None:
    store = SessionStore(ttl_s=0.0, max_entries=2)
    session_id, _ = store.open("fsa_x")
    assert store.get(session_id) is None
    live = SessionStore(max_entries=2)
    ids = [live.open(f"fsa_{n}")[0] for n in range(3)]
    assert live.get(ids[0]) is None and live.get(ids[2]) is not None
    code = live.mint_link("fsa_admin")
    assert live.redeem_link(code) == "fsa_admin"
    assert live.redeem_link(code) is None
    session = live.get(ids[2])
    assert session is not None and session.csrf_matches(session.csrf)
    assert not session.csrf_matches("forged") and not session.csrf_matches(None)
