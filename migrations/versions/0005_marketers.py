"""marketers: dashboard accounts and their sign-in sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 02:39:03.893453
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "marketer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketer")),
        sa.UniqueConstraint("email", name=op.f("uq_marketer_email")),
    )
    op.create_table(
        "marketer_session",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("marketer_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["marketer_id"],
            ["marketer.id"],
            name=op.f("fk_marketer_session_marketer_id_marketer"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketer_session")),
    )
    op.create_index(
        op.f("ix_marketer_session_marketer_id"), "marketer_session", ["marketer_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_marketer_session_marketer_id"), table_name="marketer_session")
    op.drop_table("marketer_session")
    op.drop_table("marketer")
