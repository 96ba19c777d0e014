"""participants: the sites a round sampled (``sites_per_round``)

Revision ID: 0006_participants
Revises: 0005_server_state
Create Date: 2026-12-10 10:00:00

A run with ``sites_per_round`` samples k of its member sites into each round. The
round keeps the sampled names in ``rounds.participants`` (a JSON list), written when
the round opens, so the sample is on record and a restarted server waits for the
same sites. NULL means every member: every run without ``sites_per_round`` and every
round from before this migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_participants"
down_revision: str | None = "0005_server_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("participants", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("participants")
