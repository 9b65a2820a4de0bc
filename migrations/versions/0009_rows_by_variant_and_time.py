"""impressions and events indexed by variant and time together

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:40:00

The dashboard asks for one segment's variants over a span of time: the oldest impression, and the
rows per bucket since the chart's start. With an index on the variant alone, or on the time alone,
each of those read every row of the other experiments too (2,000,000 impressions: 266 ms per
segment, three segments a page). The composite indexes answer them from the variant's own rows,
and serve every lookup by variant the single-column indexes served, so those go.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("impression", "event")


def upgrade() -> None:
    for table in _TABLES:
        op.create_index(
            f"ix_{table}_variant_id_created_at", table, ["variant_id", "created_at"], unique=False
        )
        op.drop_index(f"ix_{table}_variant_id", table_name=table)


def downgrade() -> None:
    for table in _TABLES:
        op.create_index(f"ix_{table}_variant_id", table, ["variant_id"], unique=False)
        op.drop_index(f"ix_{table}_variant_id_created_at", table_name=table)
