"""A real federation for the integration tier, shared by the tests of one session.

One server (``fedseg server serve`` on loopback) and three real client processes
run one small run to completion; the tests then read what the server reports, what
it stored and what each site recorded in its ledger. The same server later hosts
the run in which a site is killed mid-round.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedseg.simulate import Federation, SimulationConfig, prepare_workdir
from shared.schemas import RoundInfo, RunInfo

SITES = 3
ROUNDS = 2
RUN_TIMEOUT_S = 240.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def small_config(workdir: Path, **overrides: object) -> SimulationConfig:
    """The smallest federation that still trains a real network: seconds per round."""
    values: dict[str, object] = {
        "workdir": workdir,
        "sites": SITES,
        "rounds": ROUNDS,
        "size": 24,
        "cases_per_site": 4,
        "model": "segresnet-small",
        "model_params": {"init_filters": 8},
        "local_steps": 2,
        "crop_size": 16,
        "batch_size": 1,
        "learning_rate": 1e-3,
        "val_fraction": 0.25,
        "eval_max_cases": 1,
        "round_timeout_s": 300.0,
        "poll_wait_s": 2.0,
    }
    values.update(overrides)
    return SimulationConfig(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FinishedRun:
    """A federation whose first run has ended, and what the server said about it."""

    federation: Federation
    run: RunInfo
    rounds: list[RoundInfo]


@contextmanager
def enrolled_federation(config: SimulationConfig) -> Iterator[Federation]:
    """Data made, server up, every site enrolled, no run yet; every process stopped after."""
    prepare_workdir(config.workdir)
    fed = Federation(config)
    try:
        fed.make_data()
        fed.init_server()
        fed.start_server()
        fed.enroll_sites()
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Server up, three sites enrolled, no run yet; every process stopped at the end."""
    with enrolled_federation(small_config(tmp_path_factory.mktemp("federation"))) as fed:
        yield fed


@pytest.fixture(scope="session")
def finished_run(federation: Federation) -> FinishedRun:
    """The first run, ``ROUNDS`` rounds with all three sites, driven to its end."""
    from datetime import UTC, datetime

    federation.create_run("integration")
    since = datetime.now(UTC)
    federation.start_clients()
    federation.wait_sites_seen(since)
    federation.start_run()
    run, rounds = federation.wait_for_run(interval_s=0.5, timeout_s=RUN_TIMEOUT_S)
    assert federation.wait_clients_exit(timeout_s=60), "clients did not exit after the run"
    return FinishedRun(federation=federation, run=run, rounds=rounds)
