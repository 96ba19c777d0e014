"""one name for the weights' hash: rounds.weights_sha256, model_versions.weights_sha256

Revision ID: 0002_coord_weights_sha256
Revises: 0001
Create Date: 2026-12-02 01:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_coord_weights_sha256"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.alter_column("model_sha256", new_column_name="weights_sha256")
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("sha256", new_column_name="weights_sha256")


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("weights_sha256", new_column_name="sha256")
    with op.batch_alter_table("rounds") as batch:
        batch.alter_column("weights_sha256", new_column_name="model_sha256")
