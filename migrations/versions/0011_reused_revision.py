"""the revision id two migrations were shipped under; it changes nothing on the way up

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 22:00:00

"0011" was first an index on impression (experiment_id, segment_id) for `copybandit ope`, reverted
because every decision paid for it, and then the column generation_job.updated_at. A database
migrated while the index was out has the index and not the column, and read as up to date. No
database at 0011 runs this revision's upgrade again, whichever of the two it ran, so 0012 sets both
histories straight (it drops the index and adds the column where missing); here a database at 0010
has nothing to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STRAY_INDEX = "ix_impression_experiment_id_segment_id"


def upgrade() -> None:
    pass


def downgrade() -> None:
    # Back to 0010's schema from either 0011 a database may be at. The column is dropped here, not
    # in 0012's downgrade: the release before 0012 knew 0011 as the migration adding it.
    bind = op.get_bind()
    if any(index["name"] == _STRAY_INDEX for index in sa.inspect(bind).get_indexes("impression")):
        op.drop_index(_STRAY_INDEX, table_name="impression")
    if any(
        column["name"] == "updated_at" for column in sa.inspect(bind).get_columns("generation_job")
    ):
        with op.batch_alter_table("generation_job", schema=None) as batch_op:
            batch_op.drop_column("updated_at")
