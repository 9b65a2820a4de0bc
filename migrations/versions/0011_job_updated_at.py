"""generation jobs note their last write, so a running job is given up by its silence

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 22:00:00

A running job was given up as interrupted an hour after it started, even while its worker still
wrote progress; a pass then ordered its copy again. Jobs stored before this revision count as last
written when they last changed: finished, started or queued.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    # Copied from the row's own times, so SQLite keeps the text format they are stored in.
    op.execute(
        "UPDATE generation_job SET updated_at = coalesce(finished_at, started_at, created_at)"
    )
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.alter_column(
            "updated_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
