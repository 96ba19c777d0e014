"""A site killed mid-round: the round closes at its deadline once min_sites still holds."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

from shared.schemas import RunConfig
from tests.integration.conftest import FinishedRun
from tests.integration.helpers import (
    assert_close,
    ledger_update,
    open_version,
    weighted_consensus,
)

ROUND_TIMEOUT_S = 30.0
BUSY = {"downloading", "evaluating", "training", "sealing"}


def test_round_closes_at_deadline_without_the_killed_site(finished_run: FinishedRun):
    fed = finished_run.federation  # the first run is over: its clients have exited
    victim = fed.sites[-1]
    survivors = [site for site in fed.sites if site is not victim]
    base = fed.config.run_config()
    config = RunConfig.model_validate(
        {
            **base.model_dump(),
            "rounds": 1,
            "min_sites": len(survivors),
            "round_timeout_s": ROUND_TIMEOUT_S,
            # enough local work that the victim is surely still busy when it is killed
            "training": {**base.training.model_dump(), "local_steps": 20},
        }
    )
    run = fed.create_run("site-killed", config)
    since = datetime.now(UTC)
    fed.start_clients()
    assert fed.wait_sites_seen(since), "clients never polled"
    fed.start_run()

    # kill the victim (SIGKILL, no chance to clean up) while it works on round 1
    deadline = time.monotonic() + 15
    state = None
    while time.monotonic() < deadline:
        info = fed.admin.get_round(run.id, 1)
        state = next((p.state for p in info.sites if p.site == victim.name), None)
        if state in BUSY:
            break
        time.sleep(0.05)
    fed.children.signal(victim.name, signal.SIGKILL)
    fed.children[victim.name].popen.wait(timeout=10)
    assert fed.read_receipt(victim, 1) is None, (
        f"the victim finished round 1 before it was killed (state {state})"
    )

    run, rounds = fed.wait_for_run(interval_s=0.5, timeout_s=ROUND_TIMEOUT_S + 90)
    assert run.status == "completed", run
    (info,) = rounds
    assert info.status == "closed"
    uploaded = {p.site for p in info.sites if p.state == "uploaded"}
    assert uploaded == {site.name for site in survivors}
    # it waited for the deadline (the victim might have come back), then closed on quorum
    assert info.deadline is not None and info.closed_at is not None
    assert info.closed_at >= info.deadline
    # and the consensus is the weighted mean of the survivors' deltas only
    _, previous = open_version(fed, run.id, 0)
    _, bundle = open_version(fed, run.id, 1)
    updates = []
    for site in survivors:
        header, delta = ledger_update(fed.ledger_entry(site, 1))
        updates.append((int(header["num_samples"]), delta))
    assert_close(bundle.tensors, weighted_consensus(previous.tensors, updates), what="version 1")
    assert fed.wait_clients_exit(timeout_s=60)
