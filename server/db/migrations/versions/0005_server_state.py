"""server_state: the server optimiser's state after each round

Revision ID: 0005_server_state
Revises: 0004_privacy
Create Date: 2026-12-08 10:00:00

A run with a server optimiser (``fedavgm``, ``fedadam``, ``fedyogi``) carries its
moments from round to round. The round that produced them keeps the blob key (the
sha256) of `ServerState.to_bytes` in ``rounds.server_state``, committed with the
round's close, so a restarted server continues with exactly the same state. NULL
for every other strategy and for rounds from before this migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_server_state"
down_revision: str | None = "0004_privacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("server_state", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("server_state")
