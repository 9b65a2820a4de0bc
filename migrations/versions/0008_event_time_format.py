"""event times on SQLite in the one text format every other row has

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 11:20:00

Conversions recorded before this revision bound `event.created_at` without its column type, so on
SQLite the driver rendered it as "2026-11-28 11:16:59.987570+00:00" (or without the fraction when
it was zero), where SQLAlchemy writes "2026-11-28 11:16:59.987570". Revision 0007 mended the same
fault in impressions; this one mends events. PostgreSQL stores a timestamp: nothing to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITHOUT_OFFSET = "substr(created_at, 1, length(created_at) - 6)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "UPDATE event SET created_at = CASE"
        f" WHEN instr({_WITHOUT_OFFSET}, '.') = 0 THEN {_WITHOUT_OFFSET} || '.000000'"
        f" ELSE {_WITHOUT_OFFSET} END"
        " WHERE created_at LIKE '%+00:00'"
    )


def downgrade() -> None:
    """The offset was a bug of the writer, not a format to restore."""
