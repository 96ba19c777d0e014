"""The simulation's figures: Dice per model version and the time split of each round.

Pure functions over what the server reported (rounds with per-site metrics) and what
each site recorded in its ledger (update headers with timings, receipts), plus the
in-process evaluation of the final model and the optional central baseline. Writes
``report.json`` and ``dice.png``; prints the Dice table.

With a privacy mechanism, each round carries every site's ε ledger entry (from the
signed update header the site recorded, else from what the server reports) and each
site's decline with its reason; ``dice.png`` gains a panel of Dice against
cumulative ε.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rich.table import Table

from fedseg.console import dice as fmt_dice
from fedseg.console import duration, seconds_between
from shared.schemas import RoundInfo, RunInfo

REGIONS: Final = ("tc", "wt", "et", "mean")
SiteMetrics = Mapping[str, float]


def region_scores(metrics: SiteMetrics, metric: str = "dice") -> dict[str, float] | None:
    """``{tc, wt, et, mean}`` from metrics named ``dice_tc`` (or ``hd95_tc``) … (None if absent)."""
    out = {
        region: float(metrics[f"{metric}_{region}"])
        for region in REGIONS
        if f"{metric}_{region}" in metrics
    }
    if not out:
        return None
    if "mean" not in out and all(region in out for region in ("tc", "wt", "et")):
        out["mean"] = (out["tc"] + out["wt"] + out["et"]) / 3
    return out


def mean_scores(by_site: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
    """Mean of each region over the sites that have it."""
    if not by_site:
        return None
    out: dict[str, float] = {}
    for region in REGIONS:
        values = [scores[region] for scores in by_site.values() if region in scores]
        if values:
            out[region] = sum(values) / len(values)
    return out or None


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def dice_by_version(
    run: RunInfo,
    rounds: Sequence[RoundInfo],
    final_eval: Mapping[str, SiteMetrics] | None,
    baseline: Sequence[Mapping[str, SiteMetrics]] | None = None,
    metric: str = "dice",
) -> list[dict[str, Any]]:
    """Dice (or HD95, ``metric="hd95"``) of each model version on each site's validation split.

    Version ``v`` (the consensus after round ``v``) is what the sites evaluated at
    the start of round ``v+1``; the last version comes from ``final_eval``.
    ``baseline[v]`` is the central model after the same number of steps.
    """
    by_round = {info.round: info for info in rounds}
    versions: list[dict[str, Any]] = []
    for version in range(run.config.rounds + 1):
        source = "sites"
        per_site: dict[str, dict[str, float]] = {}
        evaluated = by_round.get(version + 1)
        if evaluated is not None:
            for progress in evaluated.sites:
                scores = region_scores(progress.metrics, metric)
                if scores:
                    per_site[progress.site] = scores
        elif version == run.config.rounds and final_eval:
            source = "final-eval"
            for site, metrics in final_eval.items():
                scores = region_scores(metrics, metric)
                if scores:
                    per_site[site] = scores
        entry: dict[str, Any] = {
            "version": version,
            "source": source,
            "sites": per_site,
            "mean": mean_scores(per_site),
            "baseline": None,
        }
        if baseline is not None and version < len(baseline):
            base_sites = {
                site: scores
                for site, metrics in baseline[version].items()
                if (scores := region_scores(metrics, metric))
            }
            entry["baseline"] = {"sites": base_sites, "mean": mean_scores(base_sites)}
        if per_site or entry["baseline"]:
            versions.append(entry)
    return versions


def round_privacy(
    info: RoundInfo,
    headers: Mapping[str, Mapping[str, Any]],
    declines: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """ε per site this round (its ledger entry) and each site's decline, by site."""
    epsilon: dict[str, dict[str, Any]] = {}
    declined: dict[str, dict[str, Any]] = {}
    for site, header in headers.items():
        if isinstance(header.get("privacy"), Mapping):
            epsilon[site] = dict(header["privacy"])
    for site, decline in declines.items():
        declined[site] = {
            "reason": decline.get("reason"),
            "message": decline.get("message"),
            "cumulative_epsilon": decline.get("cumulative_epsilon"),
        }
    for progress in info.sites:  # what the server recorded fills what the site did not keep
        if progress.privacy is not None and progress.site not in epsilon:
            epsilon[progress.site] = progress.privacy.model_dump(mode="json")
        if progress.decline_reason and progress.site not in declined:
            declined[progress.site] = {
                "reason": progress.decline_reason,
                "message": progress.message,
                "cumulative_epsilon": None,
            }
    return epsilon, declined


def cumulative_epsilon(round_entries: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Each site's cumulative ε after each round (model version), 0 at version 0.

    A round a site declined or missed keeps its previous figure: it spent nothing.
    """
    out: dict[int, dict[str, float]] = {0: {}}
    current: dict[str, float] = {}
    for entry in sorted(round_entries, key=lambda item: item["round"]):
        for site, ledger in (entry.get("epsilon") or {}).items():
            current[site] = float(ledger["cumulative_epsilon"])
        out[entry["round"]] = dict(current)
    return out


def round_timing(
    info: RoundInfo,
    headers: Mapping[str, Mapping[str, Any]],
    receipts: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Split one round's wall time into local work and federation overhead.

    The round lasts from ``opened_at`` to ``closed_at``. Its critical path runs
    through the site whose update arrived last: waiting for the task, download and
    verify (``time_download``), evaluation, local training, computing and serialising
    the delta (``time_seal``), then from the header's creation to the server's
    receipt: encryption, signing, the ledger write, the transfer and the server's
    checks and store (``upload_s``); last the server's aggregation and signing (last
    receipt to close). Federation overhead = download + verify + seal + upload +
    aggregate + sign. Waiting covers task polling and process scheduling.
    """
    wall = seconds_between(info.opened_at, info.closed_at)
    sites: dict[str, dict[str, Any]] = {}
    for site, header in headers.items():
        metrics = header.get("metrics") or {}
        received = _parse_time((receipts.get(site) or {}).get("received_at"))
        created = _parse_time(header.get("created_at"))
        entry: dict[str, Any] = {
            "num_samples": header.get("num_samples"),
            "train_loss": metrics.get("train_loss"),
            **{key: float(value) for key, value in metrics.items() if key.startswith("time_")},
            "created_at": created.isoformat() if created else None,
            "received_at": received.isoformat() if received else None,
        }
        upload = seconds_between(created, received)
        if upload is not None:
            entry["upload_s"] = max(0.0, upload)
        sites[site] = entry
    timing: dict[str, Any] = {"wall_s": wall, "sites": sites}
    arrived = [
        (site, _parse_time(entry["received_at"]))
        for site, entry in sites.items()
        if entry.get("received_at")
    ]
    if wall is None or not arrived:
        return timing
    critical, last_received = max(
        arrived, key=lambda pair: pair[1] or datetime.min.replace(tzinfo=UTC)
    )
    entry = sites[critical]
    parts = {
        "download_verify_s": float(entry.get("time_download", 0.0))
        + float(entry.get("time_verify", 0.0)),
        "evaluate_s": float(entry.get("time_evaluate", 0.0)),
        "local_training_s": float(entry.get("time_train", 0.0)),
        "seal_s": float(entry.get("time_seal", 0.0)),
        "upload_s": float(entry.get("upload_s", 0.0)),
        "aggregate_sign_s": max(0.0, seconds_between(last_received, info.closed_at) or 0.0),
    }
    overhead = (
        parts["download_verify_s"] + parts["seal_s"] + parts["upload_s"] + parts["aggregate_sign_s"]
    )
    timing.update(
        critical_site=critical,
        **parts,
        waiting_s=max(0.0, wall - sum(parts.values())),
        federation_overhead_s=overhead,
        federation_overhead_fraction=overhead / wall if wall > 0 else None,
    )
    return timing


def build_report(
    *,
    run: RunInfo,
    rounds: Sequence[RoundInfo],
    headers: Mapping[int, Mapping[str, Mapping[str, Any]]],
    receipts: Mapping[int, Mapping[str, Mapping[str, Any]]],
    final_eval: Mapping[str, SiteMetrics] | None,
    baseline: Sequence[Mapping[str, SiteMetrics]] | None,
    baseline_steps_per_round: int | None,
    phases: Mapping[str, float],
    settings: Mapping[str, Any],
    declines: Mapping[int, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Everything ``report.json`` holds."""
    round_entries: list[dict[str, Any]] = []
    for info in sorted(rounds, key=lambda item: item.round):
        timing = round_timing(info, headers.get(info.round, {}), receipts.get(info.round, {}))
        epsilon, declined = round_privacy(
            info, headers.get(info.round, {}), (declines or {}).get(info.round, {})
        )
        per_site = {
            progress.site: scores
            for progress in info.sites
            if (scores := region_scores(progress.metrics))
        }
        round_entries.append(
            {
                "round": info.round,
                "status": info.status,
                "opened_at": info.opened_at.isoformat() if info.opened_at else None,
                "closed_at": info.closed_at.isoformat() if info.closed_at else None,
                "weights_sha256": info.weights_sha256,
                "updates": sorted(
                    progress.site for progress in info.sites if progress.state == "uploaded"
                ),
                "dice_of_received_model": {"sites": per_site, "mean": mean_scores(per_site)},
                "epsilon": epsilon,
                "declines": declined,
                "time": timing,
            }
        )
    fractions = [
        entry["time"]["federation_overhead_fraction"]
        for entry in round_entries
        if entry["time"].get("federation_overhead_fraction") is not None
    ]
    versions = dice_by_version(run, rounds, final_eval, baseline)
    spent = cumulative_epsilon(round_entries)
    for version in versions:  # the ε the sites had spent to make this model
        version["epsilon"] = spent.get(version["version"], {})
    return {
        "format_version": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "settings": dict(settings),
        "run": run.model_dump(mode="json"),
        "phases_s": dict(phases),
        "privacy": privacy_summary(run, round_entries),
        "dice_by_version": versions,
        "hd95_by_version": dice_by_version(run, rounds, final_eval, baseline, metric="hd95"),
        "baseline": None
        if baseline is None
        else {"steps_per_round": baseline_steps_per_round, "versions": len(baseline)},
        "rounds": round_entries,
        "federation_overhead_fraction_mean": sum(fractions) / len(fractions) if fractions else None,
    }


def privacy_summary(run: RunInfo, round_entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's mechanism, each site's final cumulative ε, and every decline."""
    final: dict[str, float] = {}
    for figures in cumulative_epsilon(round_entries).values():
        final.update(figures)
    declines = [
        {"round": entry["round"], "site": site, **decline}
        for entry in round_entries
        for site, decline in sorted((entry.get("declines") or {}).items())
    ]
    return {
        "mechanism": run.config.privacy.mechanism,
        "config": run.config.privacy.model_dump(mode="json"),
        "final_epsilon": final,
        "declines": declines,
    }


def write_report(report: Mapping[str, Any], path: Path) -> None:
    """Write ``report.json`` (atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def dice_table(report: Mapping[str, Any]) -> Table:
    """Validation Dice per model version: the mean over sites, each site, the baseline."""
    return _by_version_table(
        report["dice_by_version"],
        title="Validation Dice of the consensus model after each round (mean over sites)",
        show=fmt_dice,
    )


def hd95_table(report: Mapping[str, Any]) -> Table:
    """The Dice table's companion: HD95 in millimetres per model version (lower is better)."""
    return _by_version_table(
        report.get("hd95_by_version") or [],
        title="Validation HD95 (mm; 374 when a region is missed or invented) after each round",
        show=_mm,
    )


def _by_version_table(
    versions: Sequence[Mapping[str, Any]], *, title: str, show: Callable[[float | None], str]
) -> Table:
    """One row per model version: the regions' means over sites, each site, the baseline."""
    sites = sorted({site for entry in versions for site in entry["sites"]})
    has_baseline = any(entry.get("baseline") for entry in versions)
    table = Table(title=title, title_justify="left")
    table.add_column("round", justify="right", no_wrap=True)
    for region in ("TC", "WT", "ET", "mean"):
        table.add_column(region, justify="right")
    for site in sites:
        table.add_column(site, justify="right")
    if has_baseline:
        table.add_column("central", justify="right")
    for entry in versions:
        mean = entry["mean"] or {}
        label = str(entry["version"]) + (" (init)" if entry["version"] == 0 else "")
        row = [label, *(show(mean.get(region)) for region in REGIONS)]
        row += [show((entry["sites"].get(site) or {}).get("mean")) for site in sites]
        if has_baseline:
            row.append(show(((entry.get("baseline") or {}).get("mean") or {}).get("mean")))
        table.add_row(*row)
    return table


def epsilon_table(report: Mapping[str, Any]) -> Table:
    """ε per site per round (cumulative over the run, δ) and the rounds a site declined."""
    rounds = report["rounds"]
    sites = sorted(
        {site for entry in rounds for site in (entry.get("epsilon") or {})}
        | {site for entry in rounds for site in (entry.get("declines") or {})}
    )
    mechanism = report["privacy"]["mechanism"]
    table = Table(
        title=f"Privacy: each site's cumulative ε over the run ({mechanism}); declines by reason",
        title_justify="left",
    )
    table.add_column("round", justify="right", no_wrap=True)
    for site in sites:
        table.add_column(site, justify="right")
    for entry in rounds:
        cells = []
        for site in sites:
            ledger = (entry.get("epsilon") or {}).get(site)
            decline = (entry.get("declines") or {}).get(site)
            if ledger is not None:
                cells.append(f"{ledger['cumulative_epsilon']:.3g} (δ {ledger['delta']:g})")
            elif decline is not None:
                cells.append(f"declined: {decline['reason']}")
            else:
                cells.append("-")
        table.add_row(str(entry["round"]), *cells)
    return table


def _mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def timing_table(report: Mapping[str, Any]) -> Table:
    """Each round's wall time: local work against federation overhead."""
    table = Table(
        title="Round time on the critical path (download includes verify; aggregate, sign)",
        title_justify="left",
    )
    columns = ("round", "wall", "train", "eval", "download", "seal", "upload", "aggregate")
    for column in (*columns, "wait", "overhead"):
        table.add_column(column, justify="right", no_wrap=True)
    for entry in report["rounds"]:
        time = entry["time"]
        fraction = time.get("federation_overhead_fraction")
        table.add_row(
            str(entry["round"]),
            duration(time.get("wall_s")),
            duration(time.get("local_training_s")),
            duration(time.get("evaluate_s")),
            _small(time.get("download_verify_s")),
            _small(time.get("seal_s")),
            _small(time.get("upload_s")),
            _small(time.get("aggregate_sign_s")),
            duration(time.get("waiting_s")),
            "-" if fraction is None else f"{100 * fraction:.1f}%",
        )
    return table


def _small(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _dice_axis(axis: Any, *, title: str, xs: list[int]) -> None:
    """Title, labels, Dice range, round ticks, grid and legend of one `plot_dice` panel."""
    axis.set(title=title, xlabel="round", ylabel="Dice", ylim=(0, 1))
    axis.set_xticks(xs)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def plot_dice(report: Mapping[str, Any], path: Path) -> None:
    """``dice.png``: mean Dice per round (each site, their mean, the baseline) and by region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = report["dice_by_version"]
    xs = [entry["version"] for entry in versions]
    sites = sorted({site for entry in versions for site in entry["sites"]})
    private = (report.get("privacy") or {}).get("mechanism", "none") != "none"
    figure, axes = plt.subplots(
        1, 3 if private else 2, figsize=(16.5 if private else 11, 4.2), constrained_layout=True
    )
    left, right = axes[0], axes[1]
    for site in sites:
        points = [
            (entry["version"], entry["sites"][site]["mean"])
            for entry in versions
            if site in entry["sites"] and "mean" in entry["sites"][site]
        ]
        if points:
            left.plot(*zip(*points, strict=True), marker=".", linewidth=1, alpha=0.6, label=site)
    mean_points = [
        (entry["version"], entry["mean"]["mean"])
        for entry in versions
        if entry["mean"] and "mean" in entry["mean"]
    ]
    if mean_points:
        left.plot(
            *zip(*mean_points, strict=True),
            marker="o",
            linewidth=2.5,
            color="black",
            label="federated (mean)",
        )
    base_points = [
        (entry["version"], entry["baseline"]["mean"]["mean"])
        for entry in versions
        if entry.get("baseline") and entry["baseline"].get("mean")
    ]
    if base_points:
        left.plot(
            *zip(*base_points, strict=True),
            marker="s",
            linestyle="--",
            linewidth=2,
            color="tab:red",
            label="central baseline",
        )
    _dice_axis(left, title="Mean Dice on each site's validation split", xs=xs)
    for region, colour in (("tc", "tab:orange"), ("wt", "tab:green"), ("et", "tab:purple")):
        points = [
            (entry["version"], entry["mean"][region])
            for entry in versions
            if entry["mean"] and region in entry["mean"]
        ]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", color=colour, label=region.upper())
    _dice_axis(right, title="Federated model by region (mean over sites)", xs=xs)
    if private:
        _epsilon_panel(axes[2], versions, sites, str(report["privacy"]["mechanism"]))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)


def _epsilon_panel(
    axis: Any, versions: Sequence[Mapping[str, Any]], sites: Sequence[str], mechanism: str
) -> None:
    """Dice of each model version against the cumulative ε its sites had spent for it."""
    for site in sites:
        points = [
            (float(entry["epsilon"].get(site, 0.0)), entry["sites"][site]["mean"])
            for entry in versions
            if site in entry["sites"] and "mean" in entry["sites"][site]
        ]
        if points:
            axis.plot(*zip(*points, strict=True), marker=".", linewidth=1, alpha=0.6, label=site)
    mean_points = []
    for entry in versions:
        spent = list((entry.get("epsilon") or {}).values())
        if entry["mean"] and "mean" in entry["mean"]:
            mean_points.append((sum(spent) / len(spent) if spent else 0.0, entry["mean"]["mean"]))
    if mean_points:
        axis.plot(
            *zip(*mean_points, strict=True),
            marker="o",
            linewidth=2.5,
            color="black",
            label="federated (mean)",
        )
    axis.set(
        title=f"Mean Dice against cumulative ε ({mechanism})",
        xlabel="cumulative ε of the site (run)",
        ylabel="Dice",
        ylim=(0, 1),
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
