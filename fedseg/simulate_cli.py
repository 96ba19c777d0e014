"""``fedseg simulate``: a server and N hospitals on this machine, with synthetic data.

Everything is real: ``fedseg server init`` and ``serve`` (uvicorn on a free loopback
port), sites registered through the admin REST API and enrolled with ``fedseg client
enroll``, one ``fedseg client run`` process per site. The live view shows each
round and each site; at the end the Dice table, ``report.json`` and ``dice.png``
land in the work folder. Ctrl-C stops the run and every process it started.
``--privacy`` runs a DP mechanism (`fedseg.simulate_privacy`); ``--site-max-epsilon``
gives every site a budget, and a run the sites stop for budget ends
``budget_exhausted`` with each site's reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from fedseg import admin_views as views
from fedseg.console import MODEL_CHOICES, duration, errors_as_messages, stderr, stdout
from fedseg.report import (
    build_report,
    dice_table,
    epsilon_table,
    hd95_table,
    plot_dice,
    timing_table,
    write_report,
)
from fedseg.simulate import Federation, SimulationConfig, prepare_workdir
from fedseg.simulate_aggregation import parse_aggregation
from fedseg.simulate_privacy import parse_privacy, simulated_policy
from fedseg.simulate_procs import TerminationRequested, sigterm_as_interrupt
from shared import crypto, routes
from shared.bundle import open_bundle
from shared.errors import FedsegError, InvalidInput
from shared.schemas import RoundInfo, RunInfo

DEFAULT_WORKDIR = Path("simulate-out")


def register(app: typer.Typer) -> None:
    """Add the top-level ``simulate`` command to ``app``."""
    app.command("simulate")(simulate)


def simulate(
    sites: Annotated[int, typer.Option("--sites", min=1, max=26, help="Hospitals.")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = 5,
    size: Annotated[int, typer.Option("--size", min=24, help="Phantom edge in voxels.")] = 48,
    cases_per_site: Annotated[
        int, typer.Option("--cases-per-site", min=2, help="Phantom cases per site.")
    ] = 8,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Folder for data, server, logs and the report.")
    ] = DEFAULT_WORKDIR,
    baseline: Annotated[
        bool,
        typer.Option("--baseline", help="Also train centrally on all sites' data, same steps."),
    ] = False,
    local_steps: Annotated[
        int, typer.Option("--local-steps", min=1, help="Training steps per site per round.")
    ] = 50,
    model: Annotated[
        str, typer.Option("--model", help="Model from the registry.", metavar=MODEL_CHOICES)
    ] = ("segresnet-small"),
    model_param: Annotated[
        list[str] | None,
        typer.Option(
            "--model-param",
            help="Model parameter KEY=VALUE (JSON value), repeatable.",
            show_default="the model's own",
        ),
    ] = None,
    crop_size: Annotated[
        int, typer.Option("--crop-size", min=8, help="Side of the training crops (voxels).")
    ] = 32,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Crops per training step.")
    ] = 2,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", help="Adam learning rate at each site.")
    ] = 2e-3,
    sites_per_round: Annotated[
        int | None,
        typer.Option(
            "--sites-per-round",
            min=1,
            help="Sample this many sites each round (seeded, recorded; docs/strategies.md).",
            show_default="all sites",
        ),
    ] = None,
    min_sites: Annotated[
        int | None,
        typer.Option(
            "--min-sites",
            min=1,
            help="Quorum once a deadline passes.",
            show_default="all sites",
        ),
    ] = None,
    round_timeout: Annotated[
        float, typer.Option("--round-timeout", help="Round deadline in seconds.")
    ] = 900.0,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the data, the initial model and splits.")
    ] = 0,
    client_threads: Annotated[
        int, typer.Option("--client-threads", min=1, help="CPU threads per client process.")
    ] = 1,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Give up after this many seconds of run.",
            show_default="no limit",
        ),
    ] = None,
    heterogeneity: Annotated[
        str,
        typer.Option(
            "--heterogeneity",
            help="none, or strong: 4/12/30 cases per site (not --cases-per-site), "
            "tumour-size mix, label shift at the last site.",
        ),
    ] = "none",
    privacy: Annotated[
        str,
        typer.Option(
            "--privacy",
            help="A mechanism (none, dp_sgd, dp_fedavg, svt; phantom defaults, see "
            "docs/privacy.md) or a JSON/TOML file with the run's privacy block.",
            metavar="FILE|MECHANISM",
        ),
    ] = "none",
    aggregation: Annotated[
        str,
        typer.Option(
            "--aggregation",
            help="A strategy (fedavg, fedprox, fedavgm, fedadam, fedyogi, trimmed_mean, "
            "median; schema defaults, see docs/strategies.md) or a JSON/TOML file with the "
            "run's aggregation block.",
            metavar="FILE|STRATEGY",
        ),
    ] = "fedavg",
    site_max_epsilon: Annotated[
        float | None,
        typer.Option(
            "--site-max-epsilon",
            help="Each site's ε budget (its policy's max_epsilon; no plain rounds then).",
            show_default="no budget",
        ),
    ] = None,
) -> None:
    """Run a whole federation on this machine: server, sites, run, report and plot."""
    from fedseg.admin_cli import parse_param

    with errors_as_messages():
        params = dict(parse_param(item) for item in (model_param or []))
        config = SimulationConfig(
            workdir=workdir.resolve(),
            sites=sites,
            rounds=rounds,
            size=size,
            cases_per_site=cases_per_site,
            model=model,
            model_params=params,
            local_steps=local_steps,
            crop_size=crop_size,
            batch_size=batch_size,
            learning_rate=learning_rate,
            min_sites=min_sites,
            sites_per_round=sites_per_round,
            round_timeout_s=round_timeout,
            seed=seed,
            client_threads=client_threads,
            heterogeneity=heterogeneity,
            privacy=parse_privacy(privacy),
            aggregation=parse_aggregation(aggregation),
            site_max_epsilon=site_max_epsilon,
        )
        simulated_policy(site_max_epsilon)  # validate before starting anything
        config.run_config()
        _check_heterogeneity(heterogeneity)
        code = Simulation(config, baseline=baseline, timeout_s=timeout).main()
    raise typer.Exit(code)


def _check_heterogeneity(value: str) -> None:
    from client.phantoms import HETEROGENEITY

    if value not in HETEROGENEITY:
        raise InvalidInput(
            f"--heterogeneity {value!r} is unknown; use {' or '.join(HETEROGENEITY)}"
        )


def _cases_text(config: SimulationConfig) -> str:
    from client.phantoms import site_plans

    if config.heterogeneity != "strong":
        return str(config.cases_per_site)
    counts = [plan.cases for plan in site_plans(config.sites, heterogeneity="strong")]
    return "/".join(str(count) for count in counts)


class Simulation:
    """The steps of one ``fedseg simulate``, its live view and its report."""

    def __init__(
        self, config: SimulationConfig, *, baseline: bool, timeout_s: float | None
    ) -> None:
        self.config = config
        self.baseline = baseline
        self.timeout_s = timeout_s
        self.phases: dict[str, float] = {}
        self.started = time.monotonic()
        self.status_line = ""
        self.live: Live | None = None
        self.snapshot: tuple[RunInfo, list[RoundInfo]] | None = None
        self._closed_rounds: set[int] = set()

    # --- driver ---------------------------------------------------------------------------

    def main(self) -> int:
        """Run everything; return the exit code (0 when the run completed or ran out of ε)."""
        config = self.config
        prepare_workdir(config.workdir)
        federation = Federation(config)
        with sigterm_as_interrupt():
            try:
                return self._run(federation)
            except (KeyboardInterrupt, TerminationRequested):
                self._stop_live()
                stderr.print("[yellow]Interrupted:[/] stopping the run and every process…")
                if federation.run is not None:
                    with contextlib.suppress(FedsegError):
                        federation.admin.stop_run(federation.run.id)
                federation.close()
                stderr.print(f"Stopped. Logs are in {config.workdir / 'logs'}.", markup=False)
                return 130
            finally:
                self._stop_live()
                federation.close()

    def _phase(self, label: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        with stdout.status(label + "…"):
            result = step()
        took = time.monotonic() - started
        key = label.split(":")[0].lower().replace(" ", "_")
        self.phases[key] = round(took, 3)
        stdout.print(f"[green]✓[/] {label} [dim]({duration(took)})[/]")
        return result

    def _run(self, federation: Federation) -> int:
        config = self.config
        stdout.print(
            f"[bold]fedseg simulate[/]: {config.sites} sites × "
            f"{_cases_text(config)} cases at "
            f"{config.size}³, {config.rounds} rounds × {config.local_steps} local steps, "
            f"model {config.model}; work folder {config.workdir}"
        )
        self._phase(
            f"Phantom data: {config.sites} site styles in {config.workdir / 'sites'}",
            federation.make_data,
        )
        info = self._phase(
            "Server init: signing key, database, admin token", federation.init_server
        )
        self._phase("Server serve: uvicorn on loopback", federation.start_server)
        stdout.print(
            f"  server {federation.base_url}, key fingerprint {info.get('server_fingerprint')}",
            markup=False,
        )
        self._phase("Enroll sites through the admin API", federation.enroll_sites)
        run = self._phase("Create run", federation.create_run)
        self._write_admin_token(str(federation.init_info["admin_token"]))
        stdout.print(
            f"  run {run.id}: admin token in {config.workdir / 'admin-token'}; try "
            f"FEDSEG_ADMIN_TOKEN=$(cat {config.workdir / 'admin-token'}) fedseg admin runs "
            f"status {run.id} --server {federation.base_url}",
            markup=False,
        )
        stdout.print(
            f"  dashboard: {federation.admin.sign_in_link()} (one-time sign-in link; "
            f"afterwards sign in at {federation.base_url}{routes.UI} with the admin token)",
            markup=False,
        )
        since = datetime.now(UTC)
        self._phase("Start one client process per site", federation.start_clients)
        self._phase("Clients polling", lambda: federation.wait_sites_seen(since))
        federation.start_run()
        started = time.monotonic()
        self.live = Live(self._render(), console=stdout, refresh_per_second=4, transient=False)
        self.live.start()
        try:
            run, rounds = federation.wait_for_run(
                on_update=self._update, interval_s=1.0, timeout_s=self.timeout_s
            )
        finally:
            self._stop_live()
        self.phases["federation"] = round(time.monotonic() - started, 3)
        federation.wait_clients_exit(timeout_s=3 * config.poll_wait_s + 30)
        if run.status == "budget_exhausted":
            stdout.print(
                f"[yellow]The run stopped budget_exhausted[/] after round "
                f"{run.current_round or 0}: the sites' privacy budgets are spent."
            )
            self._finish(federation, run, rounds, final_eval=None, baseline=None)
            return 0
        if run.status != "completed":
            stderr.print(
                f"[bold red]The run ended {run.status}.[/] Logs: {config.workdir / 'logs'}"
            )
            self._finish(federation, run, rounds, final_eval=None, baseline=None)
            return 1
        stdout.print(f"[green]✓[/] Run completed in {duration(self.phases['federation'])}")
        final_eval, baseline = self._evaluate(federation, run)
        self._finish(federation, run, rounds, final_eval=final_eval, baseline=baseline)
        return 0

    def _write_admin_token(self, token: str) -> None:
        path = self.config.workdir / "admin-token"
        crypto.write_secret_file(path, (token + "\n").encode())

    # --- live view ------------------------------------------------------------------------

    def _update(self, run: RunInfo, rounds: list[RoundInfo]) -> None:
        self.snapshot = (run, rounds)
        if self.live is not None and self.live.is_started:
            self.live.update(self._render())
        if not stdout.is_terminal:
            for info in rounds:
                if info.closed_at is not None and info.round not in self._closed_rounds:
                    self._closed_rounds.add(info.round)
                    stdout.print(
                        f"round {info.round} {info.status} after "
                        f"{duration(_seconds(info.opened_at, info.closed_at))}",
                        markup=False,
                    )

    def _render(self) -> RenderableType:
        elapsed = duration(time.monotonic() - self.started)
        head = Text.from_markup(f"[dim]elapsed {elapsed}[/]")
        if self.snapshot is None:
            return Group(head, Text("starting the run…"))
        run, rounds = self.snapshot
        return Group(head, views.run_view(run, rounds))

    def _stop_live(self) -> None:
        if self.live is not None and self.live.is_started:
            self.live.stop()
            if not stdout.is_terminal:
                stdout.print()  # the last frame ends without a newline off a terminal
        self.live = None

    # --- results --------------------------------------------------------------------------

    def _evaluate(
        self, federation: Federation, run: RunInfo
    ) -> tuple[dict[str, dict[str, float]] | None, list[dict[str, dict[str, float]]] | None]:
        import torch

        from fedseg.simulate_eval import central_baseline, evaluate_on_sites, load_splits

        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        key = federation.server_key
        trusted = {crypto.key_id(key): key}
        config = run.config

        def fetch(version: int) -> Any:
            data = federation.admin.download_bundle(run.id, version)
            return data, open_bundle(data, trusted)

        final_bytes, final = fetch(config.rounds)
        (self.config.workdir / "final-model.tar").write_bytes(final_bytes)
        # the public half, so `fedseg predict --server-key` can verify the tar offline
        (self.config.workdir / "server-key.pem").write_bytes(crypto.public_key_pem(key))
        initial = fetch(0)[1] if self.baseline else None
        federation.children.stop_all()  # the server's work is done: free the CPU
        splits = self._phase(
            "Load each site's validation split",
            lambda: load_splits(
                {s.name: s.data_dir for s in federation.sites},
                config.training,
                caches={s.name: s.state_dir / "cache" for s in federation.sites},
            ),
        )
        final_eval = self._phase(
            f"Evaluate the final model (version {config.rounds}) on every site",
            lambda: evaluate_on_sites(
                model=final.manifest.model,
                model_params=final.manifest.model_params,
                weights=final.tensors,
                splits=splits,
                config=config.training,
            ),
        )
        if initial is None:
            return final_eval, None
        steps_per_round = len(config.sites) * config.training.local_steps

        def report(version: int, scores: dict[str, dict[str, float]]) -> None:
            mean = sum(s["dice_mean"] for s in scores.values()) / max(1, len(scores))
            stdout.print(
                f"  central baseline after {version * steps_per_round} steps: mean Dice {mean:.3f}",
                markup=False,
            )

        baseline = self._phase(
            f"Central baseline: {config.rounds} × {steps_per_round} steps on all sites' data",
            lambda: central_baseline(
                model=initial.manifest.model,
                model_params=initial.manifest.model_params,
                initial=initial.tensors,
                splits=splits,
                config=config.training,
                rounds=config.rounds,
                steps_per_round=steps_per_round,
                on_round=report,
            ),
        )
        return final_eval, baseline

    def _finish(
        self,
        federation: Federation,
        run: RunInfo,
        rounds: list[RoundInfo],
        *,
        final_eval: dict[str, dict[str, float]] | None,
        baseline: list[dict[str, dict[str, float]]] | None,
    ) -> None:
        headers: dict[int, dict[str, dict[str, Any]]] = {}
        receipts: dict[int, dict[str, dict[str, Any]]] = {}
        declines: dict[int, dict[str, dict[str, Any]]] = {}
        for info in rounds:
            for site in federation.sites:
                header = federation.read_header(site, info.round)
                receipt = federation.read_receipt(site, info.round)
                decline = federation.read_decline(site, info.round)
                if header is not None:
                    headers.setdefault(info.round, {})[site.name] = header
                if receipt is not None:
                    receipts.setdefault(info.round, {})[site.name] = receipt
                if decline is not None:
                    declines.setdefault(info.round, {})[site.name] = decline
        self.phases["total"] = round(time.monotonic() - self.started, 3)
        settings = {
            field.name: _setting(getattr(self.config, field.name))
            for field in dataclasses.fields(self.config)
        }
        settings["baseline"] = self.baseline
        report = build_report(
            run=run,
            rounds=rounds,
            headers=headers,
            receipts=receipts,
            final_eval=final_eval,
            baseline=baseline,
            baseline_steps_per_round=(
                len(run.config.sites) * run.config.training.local_steps if baseline else None
            ),
            phases=self.phases,
            settings=settings,
            declines=declines,
        )
        workdir = self.config.workdir
        write_report(report, workdir / "report.json")
        stdout.print(dice_table(report))
        if report.get("hd95_by_version"):
            stdout.print(hd95_table(report))
        stdout.print(timing_table(report))
        if report["privacy"]["mechanism"] != "none" or report["privacy"]["declines"]:
            stdout.print(epsilon_table(report))
        try:
            plot_dice(report, workdir / "dice.png")
        except (OSError, ValueError) as exc:
            stderr.print(f"could not draw dice.png: {exc}", markup=False)
        overhead = report.get("federation_overhead_fraction_mean")
        if overhead is not None:
            stdout.print(
                f"Federation overhead (download, verify, seal, upload, aggregate, sign): "
                f"{100 * overhead:.1f}% of the round time on average.",
                markup=False,
            )
        stdout.print(
            f"Report: {workdir / 'report.json'}  Plot: {workdir / 'dice.png'}  "
            f"Total: {duration(self.phases['total'])}",
            markup=False,
        )


def _setting(value: Any) -> Any:
    """A settings value as report.json holds it (paths as text, models as JSON)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
