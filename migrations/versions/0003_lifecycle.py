"""lifecycle

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 01:20:52.638085
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("holder", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_lease")),
    )
    op.create_table(
        "lifecycle_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=True),
        sa.Column("variant_id", sa.Integer(), nullable=True),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiment.id"],
            name=op.f("fk_lifecycle_event_experiment_id_experiment"),
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segment.id"], name=op.f("fk_lifecycle_event_segment_id_segment")
        ),
        sa.ForeignKeyConstraint(
            ["variant_id"], ["variant.id"], name=op.f("fk_lifecycle_event_variant_id_variant")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifecycle_event")),
    )
    with op.batch_alter_table("lifecycle_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_lifecycle_event_experiment_id"), ["experiment_id"], unique=False
        )

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=True))

    with op.batch_alter_table("segment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("winner_variant_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("winner_declared_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("segment", schema=None) as batch_op:
        batch_op.drop_column("winner_declared_at")
        batch_op.drop_column("winner_variant_id")

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("policy")

    with op.batch_alter_table("lifecycle_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lifecycle_event_experiment_id"))

    op.drop_table("lifecycle_event")
    op.drop_table("scheduler_lease")
