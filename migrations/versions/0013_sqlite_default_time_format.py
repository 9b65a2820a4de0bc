"""times SQLite fills in by default in the one text format every other row has

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 05:00:00

0012 gave assignment.last_used_at and generation_job.updated_at CURRENT_TIMESTAMP as their default,
which SQLite renders as "2026-12-06 04:52:25", where SQLAlchemy writes "2026-12-06 04:52:25.000000".
SQLite compares the text, so a job a server of the release before queued never matched its own
updated_at, and no lifecycle pass could give it up as interrupted: it stayed queued or running, and
its copy counted as on order, for good. The default now writes the fraction, and rows it filled in
are rewritten, as 0007 and 0008 rewrote times with an offset. PostgreSQL stores a timestamp:
nothing to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = [("assignment", "last_used_at"), ("generation_job", "updated_at")]
# "YYYY-MM-DD HH:MM:SS", CURRENT_TIMESTAMP's length.
_WHOLE_SECONDS = 19


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, column in _COLUMNS:
        op.execute(
            f"UPDATE {table} SET {column} = {column} || '.000000'"
            f" WHERE length({column}) = {_WHOLE_SECONDS}"
        )
    _set_server_default(sa.text("(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"))


def downgrade() -> None:
    """Back to 0012's default; the times it wrote stay in the one format."""
    if op.get_bind().dialect.name != "sqlite":
        return
    _set_server_default(sa.text("CURRENT_TIMESTAMP"))


def _set_server_default(default: sa.TextClause) -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                column,
                existing_type=sa.DateTime(timezone=True),
                existing_nullable=False,
                server_default=default,
            )
