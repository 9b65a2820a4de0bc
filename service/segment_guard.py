"""Every segment keeps one active variant, however many writers change statuses at once.

A check ("is this the last active one?") followed by an update lets two writers each pause one of
the last two variants: both see two active, both succeed, and decisions for the segment answer 409
until someone intervenes (reproduced in 20 of 20 tries with two concurrent requests). So the update
carries the check itself, and on PostgreSQL, where two UPDATEs of different rows do not see each
other's uncommitted work, writers that change statuses first lock the segment's row; SQLite runs
one writing statement at a time, so there the check inside the UPDATE is enough.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, col

from service.models import Segment, Variant, VariantStatus

_other = sa.orm.aliased(Variant)


def lock_segment(session: Session, segment: Segment) -> None:
    """Wait for other status changes in this segment to commit, and read it afresh (PostgreSQL's
    row lock, held to the end of the transaction; a plain read on SQLite)."""
    session.refresh(segment, with_for_update=True)


def another_stays_active() -> sa.ColumnElement[bool]:
    """For an UPDATE that takes a variant out of service: true while another in its segment is
    active."""
    return sa.exists().where(
        col(_other.segment_id) == col(Variant.segment_id),
        col(_other.status) == VariantStatus.ACTIVE.value,
        col(_other.id) != col(Variant.id),
    )
