"""A whole federation on one machine: a server, N sites, real processes, real REST.

`Federation` does the steps ``fedseg simulate`` shows and the integration tests
reuse: phantom data per site, ``fedseg server init`` and ``serve`` on a free
loopback port, sites registered through the admin API and enrolled with
``fedseg client enroll``, a run created and started, one ``fedseg client run``
process per site. It only orchestrates: every step is the real command or REST
call a person would use.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedseg.admin_client import AdminClient
from fedseg.simulate_procs import (
    Child,
    Children,
    child_environment,
    fedseg_command,
    free_port,
    run_command,
    wait_ready,
)
from shared import crypto
from shared.aggregation import AggregationConfig, FedAvg
from shared.errors import ConfigError, FedsegError, InvalidInput, Unavailable
from shared.schemas import (
    PlainPrivacy,
    PrivacyConfig,
    RoundInfo,
    RunConfig,
    RunInfo,
    TrainingConfig,
)

MARKER: Final = ".fedseg-simulate"
FINISHED: Final = frozenset({"completed", "failed", "cancelled", "budget_exhausted"})
SERVER_KEY_FILE: Final = Path("keys") / "server_ed25519.pem"


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate: sites, data, model and local training."""

    workdir: Path
    sites: int = 3
    rounds: int = 5
    size: int = 48
    cases_per_site: int = 8
    model: str = "segresnet-small"
    model_params: dict[str, Any] = field(default_factory=dict)
    local_steps: int = 50
    crop_size: int = 32
    batch_size: int = 2
    learning_rate: float = 2e-3
    val_fraction: float = 0.25
    eval_max_cases: int = 4
    round_timeout_s: float = 900.0
    min_sites: int | None = None
    sites_per_round: int | None = None  # partial participation: k sampled sites a round
    seed: int = 0
    client_threads: int = 1
    poll_wait_s: float = 5.0
    heterogeneity: str = "none"  # client.phantoms.HETEROGENEITY; strong: 4/12/30 cases…
    privacy: PrivacyConfig = field(default_factory=PlainPrivacy)  # the run's privacy block
    aggregation: AggregationConfig = field(default_factory=FedAvg)  # the run's strategy
    site_max_epsilon: float | None = None  # each simulated site's policy budget

    @property
    def site_names(self) -> list[str]:
        """``site-1`` … ``site-N``."""
        return [f"site-{index + 1}" for index in range(self.sites)]

    def run_config(self) -> RunConfig:
        """The run this simulation asks the server for."""
        return RunConfig(
            model=self.model,
            model_params=dict(self.model_params),
            rounds=self.rounds,
            sites=self.site_names,
            min_sites=self.min_sites,
            sites_per_round=self.sites_per_round,
            round_timeout_s=self.round_timeout_s,
            training=TrainingConfig(
                local_steps=self.local_steps,
                batch_size=self.batch_size,
                crop_size=min(self.crop_size, self.size),
                learning_rate=self.learning_rate,
                val_fraction=self.val_fraction,
                eval_max_cases=self.eval_max_cases,
                seed=self.seed,
            ),
            privacy=self.privacy,
            aggregation=self.aggregation,
            seed=self.seed,
        )


@dataclass(slots=True)
class SiteHandle:
    """One simulated hospital: its data, its client state and its process."""

    name: str
    index: int
    data_dir: Path
    state_dir: Path
    enrollment: dict[str, Any] = field(default_factory=dict)

    def ledger_dir(self, run_id: str) -> Path:
        """``STATE/ledger/<run>``: the site's own record of what it shared."""
        return self.state_dir / "ledger" / run_id

    def write_policy(self, max_epsilon: float | None) -> Path:
        """The simulated site's privacy policy (`fedseg.simulate_privacy.simulated_policy`)."""
        from client.privacy.policy import save_policy
        from fedseg.simulate_privacy import simulated_policy

        return save_policy(self.state_dir, simulated_policy(max_epsilon))


def prepare_workdir(workdir: Path) -> None:
    """Make ``workdir`` ready: empty, or a previous simulation's folder (cleared).

    Refuses a non-empty folder that no simulation made, so it never deletes
    anything it did not create.
    """
    if workdir.exists() and not workdir.is_dir():
        raise InvalidInput(f"{workdir} exists and is not a folder")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise InvalidInput(
                f"{workdir} is not empty and was not made by fedseg simulate; "
                "choose another --workdir"
            )
        for entry in workdir.iterdir():
            if entry.name in (MARKER, ".gitignore"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by fedseg simulate; its contents are replaced on rerun\n")
    # Generated data, keys and databases never belong in a repository.
    (workdir / ".gitignore").write_text("*\n")


class Federation:
    """A server and its sites as child processes, driven through the admin API."""

    def __init__(self, config: SimulationConfig, *, children: Children | None = None) -> None:
        self.config = config
        self.workdir = config.workdir
        self.server_dir = self.workdir / "server"
        self.children = children or Children(self.workdir / "logs")
        self.sites = [
            SiteHandle(
                name=name,
                index=index,
                data_dir=self.workdir / "sites" / name / "data",
                state_dir=self.workdir / "sites" / name / "state",
            )
            for index, name in enumerate(config.site_names)
        ]
        self.base_url = ""
        self.init_info: dict[str, Any] = {}
        self._admin: AdminClient | None = None
        self.run: RunInfo | None = None
        self.started_at: float | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every child process and close the API client."""
        self.children.stop_all()
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def admin(self) -> AdminClient:
        """The admin API client (after `init_server`)."""
        if self._admin is None:
            raise ConfigError("the server is not initialised yet")
        return self._admin

    @property
    def server_key(self) -> Ed25519PublicKey:
        """The server's public signing key, read from its key file."""
        return crypto.load_signing_key(self.server_dir / SERVER_KEY_FILE).public_key()

    # --- steps ----------------------------------------------------------------------------

    def make_data(self) -> None:
        """Phantom data per site, each with its own site style and seed (`site_plans`)."""
        from client.phantoms import generate, site_plans, site_seed

        plans = site_plans(
            len(self.sites),
            heterogeneity="strong" if self.config.heterogeneity == "strong" else "none",
            cases_per_site=self.config.cases_per_site,
        )
        for site, plan in zip(self.sites, plans, strict=True):
            generate(
                site.data_dir,
                cases=plan.cases,
                size=self.config.size,
                seed=site_seed(self.config.seed, site.index),
                style=plan.style,
            )

    def init_server(self) -> dict[str, Any]:
        """``fedseg server init --json``: keys, database, the first admin token."""
        out = run_command(
            [*fedseg_command(), "server", "init", "--data-dir", str(self.server_dir), "--json"],
            env=child_environment(),
            what="fedseg server init",
            timeout_s=120,
        )
        self.init_info = _last_json_object(out, "fedseg server init --json")
        token = self.init_info.get("admin_token")
        if not isinstance(token, str) or not token:
            raise Unavailable("fedseg server init --json printed no admin_token")
        return self.init_info

    def start_server(self, *, port: int | None = None, ready_timeout_s: float = 90.0) -> Child:
        """``fedseg server serve`` on a free loopback port; waits for ``/readyz``."""
        attempts = 1 if port is not None else 3
        last: FedsegError | None = None
        for _ in range(attempts):
            chosen = port or free_port()
            self.base_url = f"http://127.0.0.1:{chosen}"
            child = self.children.start(
                "server",
                [
                    *fedseg_command(),
                    "server",
                    "serve",
                    "--data-dir",
                    str(self.server_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(chosen),
                ],
                env=child_environment({"FEDSEG_DATA_DIR": str(self.server_dir)}, threads=1),
            )
            try:
                wait_ready(self.base_url, child, timeout_s=ready_timeout_s)
            except Unavailable as exc:  # e.g. the port was taken in between: try another
                last = exc
                self.children.stop(["server"], grace_s=5)
                continue
            if self._admin is not None:
                self._admin.close()
            self._admin = AdminClient(self.base_url, str(self.init_info["admin_token"]))
            return child
        assert last is not None
        raise last

    def restart_server(self) -> Child:
        """Stop the server and start it again on the same port."""
        port = int(self.base_url.rsplit(":", 1)[1])
        self.children.stop(["server"])
        return self.start_server(port=port)

    def enroll_sites(self) -> None:
        """Register each site through the admin API, then enroll every client at once."""
        tokens = {
            site.name: self.admin.create_site(site.name).enrollment_token for site in self.sites
        }

        def enroll(site: SiteHandle) -> dict[str, Any]:
            out = run_command(
                [
                    *fedseg_command(),
                    "client",
                    "enroll",
                    "--server",
                    self.base_url,
                    "--token",
                    tokens[site.name],
                    "--state-dir",
                    str(site.state_dir),
                    "--json",
                ],
                env=child_environment(),
                what=f"fedseg client enroll ({site.name})",
                timeout_s=120,
            )
            return _last_json_object(out, "fedseg client enroll --json")

        with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
            for site, enrollment in zip(self.sites, pool.map(enroll, self.sites), strict=True):
                site.enrollment = enrollment
        for site in self.sites:  # phantom sites train: their policy takes a handful of cases
            site.write_policy(self.config.site_max_epsilon)

    def create_run(self, name: str = "simulation", config: RunConfig | None = None) -> RunInfo:
        """Create the run (not started yet)."""
        self.run = self.admin.create_run(name, config or self.config.run_config())
        return self.run

    def start_clients(self, *, extra_args: list[str] | None = None) -> None:
        """One ``fedseg client run --exit-when-done`` per site, one thread each."""
        for site in self.sites:
            self.start_client(site, extra_args=extra_args)

    def start_client(self, site: SiteHandle, *, extra_args: list[str] | None = None) -> Child:
        """Start (or restart) one site's client process."""
        return self.children.start(
            site.name,
            [
                *fedseg_command(),
                "client",
                "run",
                "--state-dir",
                str(site.state_dir),
                "--data",
                str(site.data_dir),
                "--device",
                "cpu",
                "--exit-when-done",
                "--poll-wait",
                f"{self.config.poll_wait_s:g}",
                *(extra_args or []),
            ],
            env=child_environment(
                {"FEDSEG_SERVER_URL": self.base_url}, threads=self.config.client_threads
            ),
        )

    def wait_sites_seen(self, since: datetime, timeout_s: float = 45.0) -> bool:
        """Wait until every site has polled the server after ``since`` (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        names = {site.name for site in self.sites}
        while time.monotonic() < deadline:
            seen = {
                info.name
                for info in self.admin.list_sites()
                if info.last_seen_at is not None and _aware(info.last_seen_at) >= since
            }
            if names <= seen:
                return True
            self.check_children()
            time.sleep(0.5)
        return False

    def start_run(self) -> RunInfo:
        """Start the created run: round 1 opens."""
        if self.run is None:
            raise ConfigError("create the run first")
        self.run = self.admin.start_run(self.run.id)
        self.started_at = time.monotonic()
        return self.run

    def check_children(self) -> None:
        """Raise `Unavailable` if the server died, or too few clients live for a quorum."""
        if "server" in self.children and self.children["server"].returncode is not None:
            server = self.children["server"]
            raise Unavailable(f"the server exited with {server.returncode}:\n{server.log_tail()}")

    def dead_clients(self) -> list[Child]:
        """Client processes that exited with a failure."""
        return [
            self.children[site.name]
            for site in self.sites
            if site.name in self.children and self.children[site.name].returncode not in (None, 0)
        ]

    def poll(self) -> tuple[RunInfo, list[RoundInfo]]:
        """The run and its rounds as the server sees them now."""
        if self.run is None:
            raise ConfigError("create the run first")
        self.run = self.admin.get_run(self.run.id)
        return self.run, self.admin.list_rounds(self.run.id)

    def wait_for_run(
        self,
        *,
        on_update: Callable[[RunInfo, list[RoundInfo]], None] | None = None,
        interval_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> tuple[RunInfo, list[RoundInfo]]:
        """Poll until the run ends; fail early when the federation cannot finish.

        Raises `Unavailable` when the server dies or fewer clients live than the
        quorum needs (the run is stopped first), or on ``timeout_s``.
        """
        if self.run is None:
            raise ConfigError("create the run first")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        quorum = self.run.config.quorum
        while True:
            self.check_children()
            run, rounds = self.poll()
            if on_update is not None:
                on_update(run, rounds)
            if run.status in FINISHED:
                return run, rounds
            alive = [
                site.name
                for site in self.sites
                if site.name in self.children and self.children[site.name].returncode is None
            ]
            if len(alive) < quorum:
                # Clients leave by themselves once the run is over: look once more.
                time.sleep(min(interval_s, 1.0))
                run, rounds = self.poll()
                if run.status in FINISHED:
                    if on_update is not None:
                        on_update(run, rounds)
                    return run, rounds
                dead = self.dead_clients()
                detail = "".join(
                    f"\n--- {child.name} (exit {child.returncode}) ---\n{child.log_tail(12)}"
                    for child in dead
                )
                self._stop_run_quietly()
                raise Unavailable(
                    f"only {len(alive)} of {len(self.sites)} clients are running and the run "
                    f"needs {quorum}; stopped the run{detail}"
                )
            if deadline is not None and time.monotonic() > deadline:
                self._stop_run_quietly()
                raise Unavailable(f"the run did not finish within {timeout_s:.0f}s; stopped it")
            time.sleep(interval_s)

    def _stop_run_quietly(self) -> None:
        if self.run is None:
            return
        with contextlib.suppress(FedsegError):
            self.run = self.admin.stop_run(self.run.id)

    def wait_clients_exit(self, timeout_s: float = 60.0) -> bool:
        """Wait for the clients to leave by themselves (``--exit-when-done``)."""
        names = [site.name for site in self.sites if site.name in self.children]
        return self.children.wait(names, timeout_s)

    # --- reading what happened ------------------------------------------------------------

    def ledger_entry(self, site: SiteHandle, round_number: int) -> Path:
        """``STATE/ledger/<run>/<round:04d>``."""
        if self.run is None:
            raise ConfigError("create the run first")
        return site.ledger_dir(self.run.id) / f"{round_number:04d}"

    def read_header(self, site: SiteHandle, round_number: int) -> dict[str, Any] | None:
        """The update header a site recorded for a round, if it sent one."""
        return _read_json(self.ledger_entry(site, round_number) / "header.json")

    def read_receipt(self, site: SiteHandle, round_number: int) -> dict[str, Any] | None:
        """The server's receipt a site recorded for a round, if acknowledged."""
        return _read_json(self.ledger_entry(site, round_number) / "receipt.json")

    def read_decline(self, site: SiteHandle, round_number: int) -> dict[str, Any] | None:
        """The decline a site signed for a round, if it declined it (the decline only)."""
        signed = _read_json(self.ledger_entry(site, round_number) / "decline.json")
        decline = (signed or {}).get("decline")
        return decline if isinstance(decline, dict) else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_json_object(text: str, what: str) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed (its last one, if it logged more)."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
        start = stripped.rfind("\n{")
        candidates = [stripped[start + 1 :]] if start >= 0 else []
        if stripped.startswith("{"):
            candidates.append(stripped)
        for candidate in candidates:
            try:
                data = json.loads(candidate)
                break
            except ValueError:
                continue
    if not isinstance(data, dict):
        raise Unavailable(f"{what} did not print a JSON object: {stripped[-300:]!r}")
    return data
