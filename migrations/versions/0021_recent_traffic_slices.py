"""recent_traffic counted in 5-minute slices, kept 14 hours, for the charts narrower than an hour

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 07:00:00

Charts of 5-, 15- and 30-minute buckets (a segment under 12 hours old) counted every row in their
window. The job now counts recent_traffic in slices of 5 minutes aligned to whole hours and keeps
them 14 hours behind the hourly mark, so those charts add slices up; hourly_traffic_mark's row
'recent_slices' (inserted by the job) says where the slices are whole from. No schema change:
going back deletes that row, and a release without it reads recent_traffic's rows from the hourly
mark on as before and deletes those before it. Coming up again, its recent rows are not whole
slices, so the row goes again in case a release that knew it left one.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM hourly_traffic_mark WHERE name = 'recent_slices'")


def downgrade() -> None:
    op.execute("DELETE FROM hourly_traffic_mark WHERE name = 'recent_slices'")
