"""identity: token expiry, the audit hash chain and its head row

Revision ID: 0003_identity
Revises: 0002_coord_weights_sha256
Create Date: 2026-12-02 01:20:00

Admin and viewer tokens get an expiry; tokens minted before it expire 90 days
after this migration runs (expiry is on by default). Audit events get their place
in the hash chain (``seq``, ``prev_hash``, ``hash``); rows from before are chained
by the server at start (they arrive unsealed, like every new row).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0003_identity"
down_revision: str | None = "0002_coord_weights_sha256"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
LEGACY_TOKEN_DAYS = 90


def upgrade() -> None:
    with op.batch_alter_table("admin_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
    expires = (datetime.now(UTC) + timedelta(days=LEGACY_TOKEN_DAYS)).replace(tzinfo=None)
    op.execute(
        sa.text("UPDATE admin_tokens SET expires_at = :at WHERE expires_at IS NULL").bindparams(
            at=expires
        )
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_audit_events_seq", ["seq"])
    chain = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(chain, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_seq", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
    with op.batch_alter_table("admin_tokens") as batch:
        batch.drop_column("expires_at")
