"""What the dashboard shows, computed from the API's own schemas: no SQL, no HTML.

Model version ``v`` is the consensus after round ``v``; the sites evaluate it at the
start of round ``v+1`` and report Dice as ``dice_<region>`` metrics, so the Dice of
version ``v`` is read from round ``v+1``. Round timing comes from the metrics a site
sends with its update (``time_download``, ``time_evaluate``, ``time_train``,
``time_seal``) for the site whose update arrived last (the critical path).
Privacy figures are read from metrics named ``epsilon`` (cumulative ε at the site).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from shared.schemas import RoundInfo, RunConfig, RunInfo, SiteProgress

REGIONS: Final = ("mean", "tc", "wt", "et")
TIMING_PARTS: Final = (
    ("download", "time_download"),
    ("evaluate", "time_evaluate"),
    ("train", "time_train"),
    ("seal", "time_seal"),
)
OPEN_STATES: Final = frozenset({"created", "open", "aggregating"})
DONE_SITE_STATES: Final = frozenset({"uploaded", "declined", "sampled_out"})


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a chart: a label and its (x, y) points."""

    label: str
    points: list[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One round's duration and how the critical site spent it."""

    number: int
    status: str
    wall_s: float | None
    parts: dict[str, float] = field(default_factory=dict)
    critical_site: str | None = None

    @property
    def other_s(self) -> float | None:
        """Wall time not covered by the named parts: waiting, upload, aggregation."""
        if self.wall_s is None or not self.parts:
            return None
        return max(0.0, self.wall_s - sum(self.parts.values()))


@dataclass(frozen=True, slots=True)
class SiteLive:
    """Where one site stands in the current round."""

    site: str
    state: str
    message: str | None
    updated_at: datetime | None
    late: bool


@dataclass(frozen=True, slots=True)
class LiveRound:
    """The current (or last) round of a run, for the live panel."""

    number: int
    status: str
    deadline: datetime | None
    seconds_left: float | None
    sites: list[SiteLive]

    @property
    def done(self) -> int:
        """How many sites have uploaded or declined."""
        return sum(1 for site in self.sites if site.state in DONE_SITE_STATES)


def privacy_label(config: RunConfig) -> str:
    """The run's privacy mechanism in a few words."""
    privacy: Any = config.privacy
    mechanism = getattr(privacy, "mechanism", None)
    if mechanism and mechanism != "none":
        return str(mechanism)
    clip = getattr(privacy, "clip_norm", None)
    return f"clip {clip:g}" if clip else "none"


def progress_label(run: RunInfo) -> str:
    """``round k of n`` while running, else the number of rounds."""
    if run.status == "running" and run.current_round:
        return f"round {run.current_round} of {run.config.rounds}"
    return f"{run.config.rounds} rounds"


def region_value(metrics: dict[str, float], region: str) -> float | None:
    """Dice of one region (``mean`` of the three when not sent)."""
    value = metrics.get(f"dice_{region}")
    if value is not None:
        return float(value)
    if region == "mean":
        parts = [metrics.get(f"dice_{name}") for name in ("tc", "wt", "et")]
        if all(part is not None for part in parts):
            return sum(float(part) for part in parts if part is not None) / 3
    return None


def dice_series(rounds: Sequence[RoundInfo], region: str) -> list[Series]:
    """Dice per site and the mean over sites, against the model version."""
    by_site: dict[str, list[tuple[float, float]]] = {}
    means: list[tuple[float, float]] = []
    for info in sorted(rounds, key=lambda item: item.round):
        version = info.round - 1
        values = []
        for progress in info.sites:
            value = region_value(progress.metrics, region)
            if value is not None:
                by_site.setdefault(progress.site, []).append((version, value))
                values.append(value)
        if values:
            means.append((version, sum(values) / len(values)))
    series = [Series(label=site, points=points) for site, points in sorted(by_site.items())]
    if means:
        series.append(Series(label="mean", points=means))
    return series


def epsilon_series(rounds: Sequence[RoundInfo]) -> list[Series]:
    """Cumulative ε per site against the round, from the ε ledger entry of each update."""
    by_site: dict[str, list[tuple[float, float]]] = {}
    for info in sorted(rounds, key=lambda item: item.round):
        for progress in info.sites:
            if progress.privacy is not None:
                value = progress.privacy.cumulative_epsilon
                by_site.setdefault(progress.site, []).append((info.round, float(value)))
    return [Series(label=site, points=points) for site, points in sorted(by_site.items())]


def declines(rounds: Sequence[RoundInfo]) -> list[tuple[int, SiteProgress]]:
    """Every (round, site) a site declined; the reason code is in ``decline_reason``."""
    return [
        (info.round, progress)
        for info in sorted(rounds, key=lambda item: item.round)
        for progress in info.sites
        if progress.state == "declined"
    ]


def timeline(rounds: Sequence[RoundInfo]) -> list[TimelineRow]:
    """Each round's wall time, split for the site on the critical path."""
    rows = []
    for info in sorted(rounds, key=lambda item: item.round):
        wall = _seconds(info.opened_at, info.closed_at)
        uploaded = [site for site in info.sites if site.state == "uploaded" and site.updated_at]
        critical = max(uploaded, key=lambda site: site.updated_at or datetime.min, default=None)
        parts: dict[str, float] = {}
        if critical is not None:
            parts = {
                name: float(critical.metrics[key])
                for name, key in TIMING_PARTS
                if key in critical.metrics
            }
        rows.append(
            TimelineRow(
                number=info.round,
                status=info.status,
                wall_s=wall,
                parts=parts,
                critical_site=critical.site if critical else None,
            )
        )
    return rows


def live_round(rounds: Sequence[RoundInfo], moment: datetime) -> LiveRound | None:
    """The newest round and what each member site is doing in it."""
    if not rounds:
        return None
    info = max(rounds, key=lambda item: item.round)
    is_open = info.status in OPEN_STATES
    left = (info.deadline - moment).total_seconds() if info.deadline and is_open else None
    sites = [
        SiteLive(
            site=progress.site,
            state=progress.state,
            message=progress.message,
            updated_at=progress.updated_at,
            late=bool(left is not None and left <= 0 and progress.state not in DONE_SITE_STATES),
        )
        for progress in info.sites
    ]
    return LiveRound(
        number=info.round,
        status=info.status,
        deadline=info.deadline,
        seconds_left=max(0.0, left) if left is not None else None,
        sites=sites,
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())
