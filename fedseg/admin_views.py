"""Rich tables for the admin API's answers, shared by ``fedseg admin`` and ``simulate``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fedseg.console import dice, duration, first_line, seconds_between, styled, when
from shared.schemas import (
    AuditEvent,
    ModelVersion,
    RoundInfo,
    RunInfo,
    SiteInfo,
    SiteProgress,
    TokenInfo,
)

FINISHED_RUN = frozenset({"completed", "failed", "cancelled"})


def sites_table(sites: Sequence[SiteInfo]) -> Table:
    """Registered sites."""
    table = Table(title="Sites", title_justify="left")
    for column in ("site", "status", "fingerprint", "created", "enrolled", "last seen"):
        table.add_column(column)
    for site in sites:
        status = styled(site.status) + (f" {styled('offline')}" if site.offline else "")
        table.add_row(
            escape(site.name),
            status,
            escape(_short_fingerprint(site.fingerprint)),
            when(site.created_at),
            when(site.enrolled_at),
            when(site.last_seen_at),
        )
    return table


def _short_fingerprint(value: str | None) -> str:
    if not value:
        return "-"
    groups = value.split()
    return " ".join(groups[:4]) + (" …" if len(groups) > 4 else "")


def runs_table(runs: Sequence[RunInfo]) -> Table:
    """Runs, newest last."""
    table = Table(title="Runs", title_justify="left")
    for column in ("id", "name", "status", "round", "model", "sites", "created", "finished"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            escape(run.id),
            escape(run.name),
            styled(run.status),
            _round_of(run),
            escape(run.config.model),
            str(len(run.config.sites)),
            when(run.created_at),
            when(run.finished_at),
        )
    return table


def _round_of(run: RunInfo) -> str:
    current = "-" if run.current_round is None else str(run.current_round)
    return f"{current}/{run.config.rounds}"


def run_summary(run: RunInfo) -> Text:
    """One line that says what a run is and where it stands."""
    config = run.config
    text = Text.from_markup(
        f"[bold]{escape(run.name)}[/] ({escape(run.id)})  {styled(run.status)}  "
        f"round {_round_of(run)}  model {escape(config.model)}  "
        f"{len(config.sites)} sites (quorum {config.quorum})  "
        f"{config.training.local_steps} local steps"
    )
    elapsed = seconds_between(run.started_at, run.finished_at or datetime.now(UTC))
    if run.started_at is not None:
        text.append(f"  {duration(elapsed)}")
    return text


def site_cell(progress: SiteProgress | None) -> str:
    """A site's state, the Dice it reported in one round, its decline reason and its ε."""
    if progress is None:
        return "[dim]-[/]"
    score = progress.metrics.get("dice_mean")
    tail = f" {dice(score)}" if score is not None else ""
    hd95 = progress.metrics.get("hd95_mean")
    tail += f" [dim]HD95 {hd95:.1f}[/]" if hd95 is not None else ""
    if progress.state == "offline" and progress.last_seen_at is not None:
        tail += f" [dim](seen {when(progress.last_seen_at)})[/]"
    if progress.decline_reason:
        tail += f" [yellow]{escape(progress.decline_reason)}[/]"
    if progress.privacy is not None:
        tail += f" [dim]ε {progress.privacy.cumulative_epsilon:.3g}[/]"
    return f"{styled(progress.state)}{tail}"


def mean_dice(round_info: RoundInfo, key: str = "dice_mean") -> float | None:
    """Mean over the sites that reported ``key`` in this round."""
    values = [site.metrics[key] for site in round_info.sites if key in site.metrics]
    return sum(values) / len(values) if values else None


def rounds_table(run: RunInfo, rounds: Sequence[RoundInfo]) -> Table:
    """Rounds with each site's state and the Dice of the model it received."""
    table = Table(
        title="Rounds (Dice: the received model on each site's validation split)",
        title_justify="left",
    )
    table.add_column("round", justify="right")
    table.add_column("status")
    table.add_column("opened")
    table.add_column("took", justify="right")
    names = list(run.config.sites)
    extra = sorted({p.site for r in rounds for p in r.sites} - set(names))
    for name in [*names, *extra]:
        table.add_column(escape(name))
    table.add_column("mean Dice", justify="right")
    for info in sorted(rounds, key=lambda item: item.round):
        by_site = {progress.site: progress for progress in info.sites}
        took = seconds_between(
            info.opened_at, info.closed_at or (datetime.now(UTC) if info.opened_at else None)
        )
        table.add_row(
            str(info.round),
            styled(info.status),
            when(info.opened_at),
            duration(took),
            *[site_cell(by_site.get(name)) for name in [*names, *extra]],
            dice(mean_dice(info)),
        )
    return table


def progress_table(
    run: RunInfo, current: RoundInfo | None, last_dice: Mapping[str, float]
) -> Table:
    """The current round, one row per site: state, message, last Dice, last change."""
    title = "Current round" if current is None else f"Round {current.round}"
    if current is not None and current.deadline is not None and current.closed_at is None:
        left = seconds_between(datetime.now(UTC), current.deadline)
        if left is not None:
            title += f"  (deadline in {duration(max(left, 0.0))})"
    table = Table(title=title, title_justify="left")
    for column in ("site", "state", "message", "last Dice", "updated"):
        table.add_column(column)
    by_site = {p.site: p for p in current.sites} if current is not None else {}
    for name in run.config.sites:
        progress = by_site.get(name)
        table.add_row(
            escape(name),
            styled(progress.state) if progress else "[dim]-[/]",
            escape(first_line(progress.message if progress else None)),
            dice(last_dice.get(name)),
            when(progress.updated_at if progress else None),
        )
    return table


def last_dice_by_site(rounds: Sequence[RoundInfo]) -> dict[str, float]:
    """Each site's most recent reported ``dice_mean``."""
    out: dict[str, float] = {}
    for info in sorted(rounds, key=lambda item: item.round):
        for progress in info.sites:
            if "dice_mean" in progress.metrics:
                out[progress.site] = progress.metrics["dice_mean"]
    return out


def run_view(run: RunInfo, rounds: Sequence[RoundInfo]) -> RenderableType:
    """What ``runs watch`` and ``simulate`` show live."""
    current = max(rounds, key=lambda item: item.round) if rounds else None
    if run.current_round is not None:
        current = next((r for r in rounds if r.round == run.current_round), current)
    parts: list[RenderableType] = [run_summary(run)]
    parts.append(progress_table(run, current, last_dice_by_site(rounds)))
    if rounds:
        parts.append(rounds_table(run, rounds))
    return Group(*parts)


def models_table(models: Sequence[ModelVersion]) -> Table:
    """Signed model versions of a run."""
    table = Table(title="Model versions", title_justify="left")
    for column in ("version", "weights_sha256", "created"):
        table.add_column(column)
    for model in sorted(models, key=lambda item: item.version):
        table.add_row(str(model.version), model.weights_sha256, when(model.created_at))
    return table


def audit_table(events: Sequence[AuditEvent]) -> Table:
    """Audit log entries."""
    table = Table(title="Audit log", title_justify="left")
    for column in ("id", "at", "actor", "action", "target", "detail"):
        table.add_column(column)
    for event in events:
        detail = ", ".join(f"{key}={value}" for key, value in sorted(event.detail.items()))
        table.add_row(
            str(event.id),
            when(event.at),
            escape(event.actor),
            escape(event.action),
            escape(event.target),
            escape(first_line(detail, 80)),
        )
    return table


def tokens_table(tokens: Sequence[TokenInfo]) -> Table:
    """Admin and viewer tokens (never their secrets)."""
    table = Table(title="Tokens", title_justify="left")
    for column in ("id", "role", "label", "status", "created", "expires", "revoked"):
        table.add_column(column)
    for token in tokens:
        table.add_row(
            str(token.id),
            token.role,
            escape(token.label),
            styled(token.status),
            when(token.created_at),
            when(token.expires_at),
            when(token.revoked_at),
        )
    return table
