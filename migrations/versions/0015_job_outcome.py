"""generation jobs say how they ended in a column of their own

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-09 10:00:00

The lifecycle's backoff (service.copy_backoff) told a job that failed for the model from one that
was interrupted or found its brief too long by its error's first words, and a job whose every line
was refused by its message: rewording either changed which orders waited. A job now writes its
outcome as it ends (service.models.JobOutcome); rows stored before are given theirs here by those
same text rules. A job a server of the release before still running ends meanwhile keeps a NULL
outcome, which the backoff passes over as it does an interrupted job: one failure uncounted at most.
On SQLite the table is rebuilt (batch mode) for the CHECK constraint; going back drops the column.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONSTRAINT = "ck_generation_job_outcome_allowed"
_OUTCOMES = ("wrote", "wrote_none", "failed", "interrupted", "cancelled", "too_long")
# The rules the backoff read the text by, as of 0014: substr, not LIKE, whose '_' is a wildcard
# and which SQLite compares without case, where the backoff compared exactly.
_BACKFILL = """
UPDATE generation_job SET outcome = CASE
    WHEN status = 'succeeded' AND message = 'done: 0 new variants' THEN 'wrote_none'
    WHEN status = 'succeeded' THEN 'wrote'
    WHEN status = 'cancelled' THEN 'cancelled'
    WHEN substr(error, 1, 13) = 'interrupted: ' THEN 'interrupted'
    WHEN substr(error, 1, 15) = 'PromptTooLong: ' THEN 'too_long'
    ELSE 'failed'
END
WHERE status IN ('succeeded', 'failed', 'cancelled')
"""


def upgrade() -> None:
    listed = ", ".join(f"'{outcome}'" for outcome in _OUTCOMES)
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))
        batch_op.create_check_constraint(op.f(_CONSTRAINT), f"outcome IN ({listed})")
    op.execute(_BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.drop_constraint(op.f(_CONSTRAINT), type_="check")
        batch_op.drop_column("outcome")
