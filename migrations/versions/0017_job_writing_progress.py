"""generation jobs say which segment they are writing and how many of its lines passed so far

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-10 10:00:00

A job stores a segment's lines only when the segment ends, so a running one-segment job read "0 of
4 lines" on the dashboard, and had no lines in its API result, until it was done, while its message
said "3/4 accepted". Its progress writes now also record the segment it is writing and the lines
accepted there (service.generation_jobs). Rows stored before get no segment and 0, which is what a
job of the release before, still running meanwhile, shows until it ends: no worse than before.
A server of the release before that cancels or gives up a new server's job leaves them set; they
are read only while the job runs. Plain added columns, no table rebuild on SQLite; going back
drops them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("generation_job", sa.Column("writing_segment_id", sa.Integer(), nullable=True))
    op.add_column(
        "generation_job",
        sa.Column("writing_accepted", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.drop_column("writing_accepted")
        batch_op.drop_column("writing_segment_id")
