"""lifecycle events indexed by experiment, action and id, for the audit trail

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-11 10:00:00

The audit trail's page (GET /v1/experiments/<id>/audit, the dashboard's audit page, whose default
leaves out discount folds) read an experiment's rows newest first, through every discount fold
(one per segment and pass) to find a page of the other actions; PostgreSQL walked the whole table
back by id, every experiment's rows, to do so: 0.2 s at 590,000 rows, more each pass. Each action's
newest rows are now one range of this index (service.lifecycle.audit_trail). It begins with the
experiment, so it also serves what the index on the experiment alone did, which it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_lifecycle_event_experiment_id_action_id",
        "lifecycle_event",
        ["experiment_id", "action", "id"],
        unique=False,
    )
    op.drop_index("ix_lifecycle_event_experiment_id", table_name="lifecycle_event")


def downgrade() -> None:
    op.create_index(
        "ix_lifecycle_event_experiment_id", "lifecycle_event", ["experiment_id"], unique=False
    )
    op.drop_index("ix_lifecycle_event_experiment_id_action_id", table_name="lifecycle_event")
