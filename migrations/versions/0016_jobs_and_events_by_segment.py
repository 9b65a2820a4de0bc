"""generation jobs and lifecycle events indexed by segment

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-09 11:00:00

A pass reads each segment's latest finished jobs (service.copy_backoff, service.long_briefs) and
the regenerate rows that ordered them. With no index on the segment, the jobs were read by scanning
the table back from its newest row until 32 of the segment's were found, the whole table for a
segment with fewer (both databases), and the events by their experiment, every discount fold and
retirement of every segment of it; PostgreSQL scanned the whole table there too.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_generation_job_segment_id", "generation_job", ["segment_id"], unique=False)
    op.create_index(
        "ix_lifecycle_event_segment_id_action",
        "lifecycle_event",
        ["segment_id", "action"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_lifecycle_event_segment_id_action", table_name="lifecycle_event")
    op.drop_index("ix_generation_job_segment_id", table_name="generation_job")
