"""Signed declines: a site's refusal to train one round, recorded once and never silent.

Fail closed and cheapest first: the signature is checked with the site's enrolled key
before anything in the decline is believed; then the decline must name the run and
round of its path and the authenticated site; then the run, the membership and the
round are read. A decline is recorded once per site and round (the same reason again
gets the same receipt, even after the round is decided; another reason is
``decline_conflict``), audited ``site.declined``, and the round is settled again
(`Coordinator.decide`): it goes on without the site, or ends when the quorum is out
of reach.
"""

from __future__ import annotations

import base64
import logging
import math

from server.db.declines import add_decline, decline_of
from server.db.engine import Database
from server.db.models import DeclineRow
from server.db.repositories import Repository
from server.metrics import Metrics
from server.services.auth import Principal, now
from server.services.live import LiveRound
from server.services.participants import require_participant
from server.services.rounds import Coordinator, find_run
from shared import crypto
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound
from shared.privacy import Decline, DeclineReceipt, SignedDecline, verify_decline
from shared.schemas import RoundStatus, RunStatus

log = logging.getLogger(__name__)


class DeclineService:
    """Records the declines of the live rounds the `Coordinator` owns."""

    def __init__(self, *, db: Database, rounds: Coordinator, metrics: Metrics) -> None:
        self._db = db
        self._rounds = rounds
        self._metrics = metrics

    async def decline(
        self, site: Principal, run_id: str, number: int, signed: SignedDecline
    ) -> DeclineReceipt:
        """Verify, check, record and audit one decline; idempotent per site and round."""
        site_id = site.require_site()
        decline = await self._verified(site_id, signed)
        _check_names(decline, site=site.name, run_id=run_id, number=number)
        async with self._db.read() as repo:
            previous = await self._precheck(repo, site_id, run_id, number, decline)
        if previous is not None:
            return previous
        live = self._rounds.live_round(run_id, number)
        if live is None:
            raise Conflict(f"round {number} of {run_id} is closed", code="round_closed")
        async with live.lock:
            receipt, recorded = await self._record(live, site, site_id, decline, signed)
            if recorded:
                try:
                    await self._rounds.decide(live)  # on without the site, or the end
                except Exception:  # the decline is recorded; the ticker decides again
                    log.exception("settling round %s/%s failed", live.run_id, live.number)
            return receipt

    async def _verified(self, site_id: int, signed: SignedDecline) -> Decline:
        """The decline, once the site's enrolled key has verified its signature."""
        async with self._db.read() as repo:
            row = await repo.site_by_id(site_id)
        assert row is not None and row.signing_public_key is not None
        key = crypto.ed25519_public_from_bytes(base64.b64decode(row.signing_public_key))
        decline = verify_decline(signed, key)
        if "\x00" in decline.message:
            raise InvalidInput("the decline's message holds a NUL character")
        if decline.cumulative_epsilon is not None and not math.isfinite(decline.cumulative_epsilon):
            raise InvalidInput("the decline's cumulative_epsilon must be finite")
        return decline

    async def _precheck(
        self, repo: Repository, site_id: int, run_id: str, number: int, decline: Decline
    ) -> DeclineReceipt | None:
        """Run, membership, round, an earlier decline or update: a read, before any write."""
        run = await find_run(repo, run_id)
        if not await repo.is_member(run_id, site_id):
            raise Forbidden(f"this site is not a member of run {run_id}")
        row = await repo.round(run_id, number)
        if row is None:
            if 1 <= number <= run.config.get("rounds", 0) and run.status in (
                RunStatus.CREATED,
                RunStatus.RUNNING,
            ):
                raise Conflict(f"round {number} is not open yet", code="round_not_open")
            raise NotFound(f"run {run_id} has no round {number}", code="unknown_round")
        earlier = await decline_of(repo, row.id, site_id)
        if earlier is not None:
            return _same(earlier, decline, run_id, number)
        me = await repo.site_by_id(site_id)
        assert me is not None
        require_participant(row, me.name)
        if await repo.update_of(row.id, site_id) is not None:
            raise Conflict(
                f"this site already sent an update for round {number}", code="decline_conflict"
            )
        if row.status == RoundStatus.CREATED:
            raise Conflict(f"round {number} is not open yet", code="round_not_open")
        if row.status != RoundStatus.OPEN:
            raise Conflict(f"round {number} of {run_id} is {row.status}", code="round_closed")
        return None

    async def _record(
        self,
        live: LiveRound,
        site: Principal,
        site_id: int,
        decline: Decline,
        signed: SignedDecline,
    ) -> tuple[DeclineReceipt, bool]:
        """Under the round lock: re-check, insert, audit, commit, then leave the site out.

        Returns the receipt and whether this call recorded the decline.
        """
        moment = now()
        async with self._db.transaction() as repo:
            row = await repo.round(live.run_id, live.number)
            assert row is not None
            earlier = await decline_of(repo, row.id, site_id)
            if earlier is not None:
                return _same(earlier, decline, live.run_id, live.number), False
            if await repo.update_of(row.id, site_id) is not None:
                raise Conflict(
                    f"this site already sent an update for round {live.number}",
                    code="decline_conflict",
                )
            self._rounds.require_open(row, live)
            await add_decline(
                repo,
                DeclineRow(
                    round_id=row.id,
                    site_id=site_id,
                    reason=decline.reason,
                    message=decline.message,
                    cumulative_epsilon=decline.cumulative_epsilon,
                    key_id=signed.key_id,
                    signature=signed.signature,
                    signed=signed.model_dump(mode="json"),
                    recorded_at=moment,
                ),
            )
            await repo.audit(
                actor=site.actor,
                action="site.declined",
                target=f"run:{live.run_id}/round:{live.number}",
                now=moment,
                reason=decline.reason,
                message=decline.message[:500],
                cumulative_epsilon=decline.cumulative_epsilon,
            )
        live.declined[site_id] = decline.reason
        self._metrics.declines.labels(reason=decline.reason).inc()
        if decline.cumulative_epsilon is not None:
            self._metrics.record_epsilon(
                live.run_id, site.name, {"cumulative_epsilon": decline.cumulative_epsilon}
            )
        receipt = DeclineReceipt(
            run_id=live.run_id,
            round=live.number,
            site=site.name,
            reason=decline.reason,
            recorded_at=moment,
        )
        return receipt, True


def _check_names(decline: Decline, *, site: str, run_id: str, number: int) -> None:
    """The signed decline names the authenticated site and the run and round of its path."""
    if decline.site != site:
        raise Forbidden(f"the decline names site {decline.site}, not {site}", code="wrong_site")
    if decline.run_id != run_id or decline.round != number:
        raise InvalidInput(
            f"the decline is for {decline.run_id} round {decline.round}, "
            f"but was sent to {run_id} round {number}"
        )


def _same(earlier: DeclineRow, decline: Decline, run_id: str, number: int) -> DeclineReceipt:
    """The same reason again: the first receipt. Another reason: `decline_conflict`."""
    if earlier.reason != decline.reason:
        raise Conflict(
            f"this site already declined round {number} for {earlier.reason}",
            code="decline_conflict",
        )
    return DeclineReceipt.model_validate(
        {
            "run_id": run_id,
            "round": number,
            "site": decline.site,
            "reason": earlier.reason,
            "recorded_at": earlier.recorded_at,
        }
    )
