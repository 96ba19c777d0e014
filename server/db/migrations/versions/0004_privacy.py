"""privacy: signed declines, and each update's ε ledger entry

Revision ID: 0004_privacy
Revises: 0003_identity
Create Date: 2026-12-04 18:20:00

A site that will not train a round sends a signed decline: one row per run, round
and site, with the signature kept so the record can be checked again later. An
update keeps the `EpsilonEntry` of its header in ``updates.privacy`` (NULL for a
plain run and for updates from before this migration).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_privacy"
down_revision: str | None = "0003_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "declines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("cumulative_epsilon", sa.Float(), nullable=True),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("signed", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"]),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", "site_id", name="uq_declines_round_site"),
    )
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("privacy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("privacy")
    op.drop_table("declines")
