"""An open round in memory, and the database row of the model version a round produces.

Intake checks updates against the live round, declines leave a site out of it,
closing sums it up; `verdict` says when (`settling`). A round waits only for its
participants (`participants`, ``sites_per_round``); a member sampled out owes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from server.db.models import ModelVersionRow, RoundRow
from server.services.aggregation import Accumulator
from server.services.norms import coordinates, norm_bound
from server.services.settling import Verdict, settle_verdict
from shared.bundle import Bundle
from shared.schemas import RunConfig, TensorSpec


@dataclass(slots=True)
class LiveRound:
    """An open round: its key, the model it trains from and the running sum.

    ``lock`` serialises adding to the sum, closing, ending and stopping the round.
    """

    round_id: int
    run_id: str
    number: int
    config: RunConfig
    members: dict[int, str]
    """Every member site of the run (id -> name): the next round samples from these."""
    participants: dict[int, str]
    """The members sampled into this round (``rounds.participants``): the ones it waits for."""
    private_key: X25519PrivateKey
    base_weights_sha256: str
    spec: list[TensorSpec]
    deadline: datetime
    accumulator: Accumulator
    norm_bound: float | None = None
    """The largest L2 norm an update's delta may have (`norms.norm_bound`), if any."""
    counted: set[int] = field(default_factory=set)
    declined: dict[int, str] = field(default_factory=dict)
    """Site id -> the reason code of its signed decline."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def complete(self) -> bool:
        """Every participant has uploaded (its update is in the sum) or declined."""
        return len(self.counted) + len(self.declined) >= len(self.participants)

    def verdict(self, moment: datetime) -> Verdict:
        """What to do with the round now (`settling.settle_verdict`)."""
        return settle_verdict(
            members=self.participants,
            uploaded=self.counted,
            declined=self.declined,
            quorum=self.config.quorum,
            deadline_passed=self.deadline <= moment,
        )


def live_round(
    row: RoundRow,
    config: RunConfig,
    members: dict[int, str],
    key: X25519PrivateKey,
    base: Bundle,
) -> LiveRound:
    """The live round of ``row``, training from ``base``, with an empty sum.

    Its participants are the members ``row.participants`` names (all for NULL).
    """
    assert row.deadline is not None
    sampled = None if row.participants is None else set(row.participants)
    chosen = {key: name for key, name in members.items() if sampled is None or name in sampled}
    return LiveRound(
        round_id=row.id,
        run_id=row.run_id,
        number=row.number,
        config=config,
        members=members,
        participants=chosen,
        private_key=key,
        base_weights_sha256=base.manifest.weights_sha256,
        spec=list(base.manifest.tensors),
        deadline=row.deadline,
        accumulator=Accumulator(list(base.manifest.tensors)),
        norm_bound=norm_bound(
            config.privacy, d=coordinates(list(base.manifest.tensors)), quorum=config.quorum
        ),
    )


def version_row(bundle: Bundle, moment: datetime) -> ModelVersionRow:
    """The database row of a stored bundle."""
    return ModelVersionRow(
        run_id=bundle.run_id,
        version=bundle.version,
        weights_sha256=bundle.manifest.weights_sha256,
        bundle=bundle.sha256,
        bundle_size=len(bundle.data),
        created_at=moment,
    )
