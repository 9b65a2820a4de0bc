"""sticky assignments note when a decision last used them, so purge can delete the unused

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 01:00:00

Assignments stored before this revision cannot tell when they were last used: they count as used
at the moment of the migration, so `copybandit purge` deletes them once that is older than its
age, unless a decision has used them since.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("assignment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    # Bound through the column's type, so SQLite stores the text format every other time has.
    assignment = sa.table("assignment", sa.column("last_used_at", sa.DateTime(timezone=True)))
    op.execute(assignment.update().values(last_used_at=datetime.now(UTC)))
    with op.batch_alter_table("assignment", schema=None) as batch_op:
        batch_op.alter_column(
            "last_used_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        batch_op.create_index(
            batch_op.f("ix_assignment_last_used_at"), ["last_used_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("assignment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assignment_last_used_at"))
        batch_op.drop_column("last_used_at")
