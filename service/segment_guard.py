"""Every segment keeps one active variant, however many writers change statuses at once.

A check ("is this the last active one?") followed by an update lets two writers each pause one of
the last two variants: both see two active, both succeed, and decisions for the segment answer 409
until someone intervenes (reproduced in 20 of 20 tries with two concurrent requests). So the update
carries the check itself, and on PostgreSQL, where two UPDATEs of different rows do not see each
other's uncommitted work, writers that change statuses first lock the segment's row; SQLite runs
one writing statement at a time, so there the check inside the UPDATE is enough. A writer that
decides from what it reads (adds a control if there is none, orders the copy that is missing)
takes lock_row instead, which on SQLite is the database's write lock.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col

from service.models import Segment, Variant, VariantStatus

_other = sa.orm.aliased(Variant)
# PostgreSQL's FOR NO KEY UPDATE: it excludes the other writers that lock the row, but not the
# key-share lock a new impression's foreign key check takes on its segment and experiment. FOR
# UPDATE excluded that too: every decision for the segment waited out a lifecycle pass's planning,
# and one that had counted a variant the pass then changed deadlocked with it.
_WRITERS_ONLY = {"key_share": True}


def lock_segment(session: Session, segment: Segment) -> None:
    """Wait for other status changes in this segment to commit, and read it afresh (PostgreSQL's
    row lock, held to the end of the transaction, which decisions do not wait for; a plain read on
    SQLite, where the UPDATE that changes a status carries its own check)."""
    session.refresh(segment, with_for_update=_WRITERS_ONLY)


def lock_row(session: Session, row: SQLModel) -> None:
    """For a writer that decides from what it reads next (is there a control yet? how much copy
    is on order?): hold `row` against other writers to the end of this transaction, and read it
    afresh.

    PostgreSQL: the row's lock, which decisions do not wait for. SQLite: the database's write lock,
    taken by a write that changes nothing; Python's sqlite3 begins a transaction only at a write, so
    two writers could both read, decide and then write, each on what the other was about to change.
    Every SQLite writer waits for it meanwhile: hold it for one piece of work."""
    if session.get_bind().dialect.name == "sqlite":
        model = type(row)
        (key,) = sa.inspect(model).primary_key
        identity = sa.inspect(row).identity
        assert identity is not None, "lock a row that is stored"
        untouched = _unkeyed_column(model.__table__)  # type: ignore[attr-defined]
        session.execute(
            sa.update(model)
            .where(key == identity[0])
            .values({untouched.name: untouched})
            .execution_options(synchronize_session=False)
        )
    session.refresh(row, with_for_update=_WRITERS_ONLY)


def _unkeyed_column(table: sa.Table) -> sa.Column[object]:
    """A column no key, foreign key or index covers. Setting a parent key to itself made SQLite
    check every row that refers to it: `SET id = id` on a segment scanned all impressions twice,
    0.1 s a million, with every writer held back."""
    covered = {column for index in table.indexes for column in index.columns}
    covered |= {column for constraint in table.constraints for column in constraint.columns}  # type: ignore[attr-defined]
    covered |= {column for column in table.columns if column.primary_key or column.foreign_keys}
    return next(column for column in table.columns if column not in covered)


def another_stays_active() -> sa.ColumnElement[bool]:
    """For an UPDATE that takes a variant out of service: true while another in its segment is
    active."""
    return sa.exists().where(
        col(_other.segment_id) == col(Variant.segment_id),
        col(_other.status) == VariantStatus.ACTIVE.value,
        col(_other.id) != col(Variant.id),
    )
