"""discounting

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 01:29:05.707205
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("variant", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("decayed_successes", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("decayed_failures", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("folded_impressions", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("folded_conversions", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("folded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("variant", schema=None) as batch_op:
        batch_op.drop_column("folded_at")
        batch_op.drop_column("folded_conversions")
        batch_op.drop_column("folded_impressions")
        batch_op.drop_column("decayed_failures")
        batch_op.drop_column("decayed_successes")
