"""generation jobs may end cancelled

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 10:00:00

A job can be cancelled (the API, the dashboard, Ctrl-C in `copybandit generate`), and its row then
says so: the status column's CHECK constraint takes 'cancelled'. On SQLite the table is rebuilt
(batch mode). Going back, a cancelled job reads failed, the nearest the release before knows, with
its message as the error; the constraint of 0002 would refuse the row otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONSTRAINT = "ck_generation_job_status_allowed"
_BEFORE = ("queued", "running", "succeeded", "failed")


def upgrade() -> None:
    _allow((*_BEFORE, "cancelled"))


def downgrade() -> None:
    op.execute(
        "UPDATE generation_job SET status = 'failed', error = message WHERE status = 'cancelled'"
    )
    _allow(_BEFORE)


def _allow(statuses: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{status}'" for status in statuses)
    with op.batch_alter_table("generation_job", schema=None) as batch_op:
        batch_op.drop_constraint(op.f(_CONSTRAINT), type_="check")
        batch_op.create_check_constraint(op.f(_CONSTRAINT), f"status IN ({listed})")
