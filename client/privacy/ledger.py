"""The site's ε ledger: one entry per (run, round) it shared, kept in its state directory.

``privacy/ledger.json`` holds every `EpsilonEntry` the site has recorded, for all runs:
the same data answers every run, so the site's budget (its policy's ``max_epsilon``)
is checked against the composition of all of them, while each entry's
``cumulative_epsilon`` is that run's alone (what the run's ``max_epsilon`` and the
admin see). The file is rewritten whole through `write_atomic` (temp file, fsync,
rename), so a kill -9 leaves the old or the new ledger, never half of one.

Invariant: a round is counted once. `record` of a (run, round) already in the ledger
returns the entry it holds and changes nothing, whatever the caller passes, so a
restart that re-does or re-sends a round never spends its ε a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, ValidationError

from client.privacy.accountant import GaussianAccountant, Spend, total_epsilon
from shared.errors import ConfigError
from shared.files import write_atomic
from shared.privacy import EpsilonEntry

LEDGER_FILE: Final = Path("privacy/ledger.json")


class _LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    entries: list[EpsilonEntry] = []


@dataclass(frozen=True, slots=True)
class Projection:
    """What the ledger would say after one more round: ε of the round, of the run, overall."""

    epsilon: float
    run_epsilon: float
    site_epsilon: float


def spend_of(entry: EpsilonEntry) -> Spend:
    """The accountant's inputs an entry was priced from."""
    if entry.accountant == "pure":
        return Spend(mechanism=entry.mechanism, pure_epsilon=entry.epsilon, steps=entry.steps)
    return Spend(
        mechanism=entry.mechanism,
        noise_multiplier=entry.noise_multiplier,
        sample_rate=entry.sample_rate,
        steps=entry.steps,
        clip=entry.clip,
    )


class EpsilonLedger:
    """Reads and appends the site's ε ledger under ``state_dir``."""

    def __init__(self, state_dir: Path, *, accountant: GaussianAccountant = "rdp") -> None:
        self.path = state_dir / LEDGER_FILE
        self.accountant = accountant

    def entries(self) -> list[EpsilonEntry]:
        """Every recorded entry, oldest first."""
        if not self.path.exists():
            return []
        try:
            return _LedgerFile.model_validate_json(self.path.read_bytes()).entries
        except (OSError, ValidationError) as exc:
            raise ConfigError(
                f"the ε ledger {self.path} is unreadable ({type(exc).__name__}); restore it "
                "from a backup: without it the site cannot know what it has spent"
            ) from None

    def get(self, run_id: str, round_number: int) -> EpsilonEntry | None:
        """The entry of (run, round), if that round was recorded."""
        for entry in self.entries():
            if (entry.run_id, entry.round) == (run_id, round_number):
                return entry
        return None

    def spent(self, *, delta: float, run_id: str | None = None) -> float:
        """ε at ``delta`` composed over the ledger (one run's entries with ``run_id``)."""
        history = [spend_of(e) for e in self.entries() if run_id in (None, e.run_id)]
        return total_epsilon(history, delta=delta, accountant=self.accountant)

    def project(self, run_id: str, spend: Spend, *, delta: float) -> Projection:
        """ε if ``spend`` were added for ``run_id``: asked before training, never after."""
        entries = self.entries()
        run = [spend_of(e) for e in entries if e.run_id == run_id]
        site = [spend_of(e) for e in entries]
        before = total_epsilon(run, delta=delta, accountant=self.accountant)
        after = total_epsilon([*run, spend], delta=delta, accountant=self.accountant)
        overall = total_epsilon([*site, spend], delta=delta, accountant=self.accountant)
        return Projection(epsilon=after - before, run_epsilon=after, site_epsilon=overall)

    def record(self, run_id: str, round_number: int, spend: Spend, *, delta: float) -> EpsilonEntry:
        """Add the round's entry once; a round already recorded is returned unchanged."""
        entries = self.entries()
        for entry in entries:
            if (entry.run_id, entry.round) == (run_id, round_number):
                return entry
        projection = self.project(run_id, spend, delta=delta)
        entry = EpsilonEntry(
            run_id=run_id,
            round=round_number,
            mechanism=spend.mechanism,
            accountant="pure" if not spend.is_gaussian else self.accountant,
            epsilon=projection.epsilon,
            cumulative_epsilon=projection.run_epsilon,
            delta=delta,
            noise_multiplier=spend.noise_multiplier,
            clip=spend.clip,
            sample_rate=spend.sample_rate,
            steps=spend.steps,
        )
        document = _LedgerFile(entries=[*entries, entry])
        write_atomic(self.path, document.model_dump_json(indent=2).encode())
        return entry
