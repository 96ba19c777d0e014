"""Queries for signed declines: a second small repository module beside `repositories`.

The functions take the `Repository` of the caller's transaction, so a decline is
recorded in the same transaction as its audit event.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from server.db.models import DeclineRow
from server.db.repositories import Repository


async def add_decline(repo: Repository, row: DeclineRow) -> None:
    """Insert a site's decline of a round."""
    repo.session.add(row)
    await repo.session.flush()


async def decline_of(repo: Repository, round_id: int, site_id: int) -> DeclineRow | None:
    """The decline a site sent for a round, if any."""
    return await repo.session.scalar(
        select(DeclineRow).where(DeclineRow.round_id == round_id, DeclineRow.site_id == site_id)
    )


async def declines_of_round(repo: Repository, round_id: int) -> Sequence[DeclineRow]:
    """Every decline of a round, in arrival order."""
    return (
        await repo.session.scalars(
            select(DeclineRow).where(DeclineRow.round_id == round_id).order_by(DeclineRow.id)
        )
    ).all()
