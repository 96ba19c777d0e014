"""Which member sites a round samples (``sites_per_round``): seeded, so it can be checked.

The sample is a pure function of the run's seed, the run id and the round number:
each member's name is ranked by ``sha256(f"{seed}/{run_id}/{round}/{name}")`` and the
first ``k`` are taken. Anyone who knows the run config can recompute it; it is not
secret and not meant to be: the server chooses (and records it on the round row), so
no privacy amplification by sampling is claimed (docs/privacy.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from server.db.models import RoundRow
from shared.errors import Conflict
from shared.schemas import RunConfig


def _rank(seed: int, run_id: str, round_number: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}/{run_id}/{round_number}/{name}".encode()).digest()


def participants(
    members: Iterable[str], k: int | None, *, seed: int, run_id: str, round_number: int
) -> list[str]:
    """The sorted names of the ``k`` members sampled into a round; every member for None.

    A ``k`` at or above the number of members samples all of them.
    """
    names = sorted(set(members))
    if k is None or k >= len(names):
        return names
    if k < 1:
        raise ValueError("a round samples at least one site")
    ranked = sorted(names, key=lambda name: _rank(seed, run_id, round_number, name))
    return sorted(ranked[:k])


def round_sample(
    config: RunConfig, members: Iterable[str], *, run_id: str, round_number: int
) -> list[str] | None:
    """What ``rounds.participants`` records for a new round: None when every member takes part."""
    if config.sites_per_round is None:
        return None
    return participants(
        members, config.sites_per_round, seed=config.seed, run_id=run_id, round_number=round_number
    )


def takes_part(row: RoundRow, site: str) -> bool:
    """Whether ``site`` was sampled into the round of ``row`` (NULL: every member is)."""
    return row.participants is None or site in row.participants


def require_participant(row: RoundRow, site: str) -> None:
    """`Conflict` (``not_a_participant``) for a member site sampled out of this round."""
    if not takes_part(row, site):
        raise Conflict(
            f"site {site} was not sampled into round {row.number}: it owes nothing",
            code="not_a_participant",
        )
