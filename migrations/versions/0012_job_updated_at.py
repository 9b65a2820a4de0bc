"""generation jobs note their last write, so a running job is given up by its silence

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:00:00

A running job was given up as interrupted an hour after it started, even while its worker still
wrote progress; a pass then ordered its copy again. Jobs stored before this revision count as last
written when they last changed: finished, started or queued.

This was released as revision 0011, an id an earlier migration had already used (see 0011), so a
database may have the column already: it is added only where it is missing. A database that ran the
earlier 0011 has its index on impression instead, dropped here.

It also gives generation_job.updated_at and assignment.last_used_at (0010) the database's current
time as their default, so a server of the release before, still running while this migrates, can
insert the rows it knows without them (its first sticky decision and every job it queued failed
NOT NULL). The code sets both itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STRAY_INDEX = "ix_impression_experiment_id_segment_id"


def upgrade() -> None:
    bind = op.get_bind()
    if any(index["name"] == _STRAY_INDEX for index in sa.inspect(bind).get_indexes("impression")):
        op.drop_index(_STRAY_INDEX, table_name="impression")
    if not any(c["name"] == "updated_at" for c in sa.inspect(bind).get_columns("generation_job")):
        _add_updated_at()
    _set_server_default(sa.text("CURRENT_TIMESTAMP"))


def _set_server_default(default: sa.TextClause | None) -> None:
    # On SQLite each table is rebuilt (batch mode), as 0010 and the earlier 0011 rebuilt them.
    for table, column in [("assignment", "last_used_at"), ("generation_job", "updated_at")]:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                column,
                existing_type=sa.DateTime(timezone=True),
                existing_nullable=False,
                server_default=default,
            )


def _add_updated_at() -> None:
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
    _set_server_default(None)
    # The column stays: the release before this one knew it as revision 0011, and its code needs
    # it there. 0011's downgrade drops it.
