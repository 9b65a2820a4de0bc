"""impression times on SQLite in the one text format every other row has

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 10:10:00

Decisions recorded before this revision left the driver to render `impression.created_at` on
SQLite, as "2026-11-28 08:52:40.690560+00:00" (or without the fraction when it was zero), where
SQLAlchemy writes "2026-11-28 08:52:40.690560". SQLite compares the text, so equality and the
order against every other time need the one format. PostgreSQL stores a timestamp: nothing to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITHOUT_OFFSET = "substr(created_at, 1, length(created_at) - 6)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "UPDATE impression SET created_at = CASE"
        f" WHEN instr({_WITHOUT_OFFSET}, '.') = 0 THEN {_WITHOUT_OFFSET} || '.000000'"
        f" ELSE {_WITHOUT_OFFSET} END"
        " WHERE created_at LIKE '%+00:00'"
    )


def downgrade() -> None:
    """The offset was a bug of the writer, not a format to restore."""
