"""generation: brand voice, auto-approve, variant audit, jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:58:07.394712
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generation_job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_generation_job_status_allowed"),
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiment.id"],
            name=op.f("fk_generation_job_experiment_id_experiment"),
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segment.id"], name=op.f("fk_generation_job_segment_id_segment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_job")),
    )
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_generation_job_experiment_id"), ["experiment_id"], unique=False
        )

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("brand_voice", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True)
        )
        batch_op.add_column(
            sa.Column("auto_approve", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    with op.batch_alter_table("variant", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audit", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("variant", schema=None) as batch_op:
        batch_op.drop_column("audit")

    with op.batch_alter_table("experiment", schema=None) as batch_op:
        batch_op.drop_column("auto_approve")
        batch_op.drop_column("brand_voice")

    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generation_job_experiment_id"))

    op.drop_table("generation_job")
