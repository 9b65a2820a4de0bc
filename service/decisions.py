"""POST /v1/decide: pick a variant by Thompson sampling and record the impression durably."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from service.config import Settings
from service.db import insert_for, rows_changed
from service.errors import Conflict
from service.identity import hash_user_id, new_impression_id
from service.models import Assignment, Impression, Variant, utcnow
from service.schemas import DecideIn
from service.snapshot import SegmentArms, SnapshotCache

POLICY_THOMPSON = "thompson-v1"
# A sticky repeat is not a fresh draw: off-policy estimators must not treat it as one.
POLICY_STICKY = "sticky-v1"

# Built once: per request only the parameters change, so SQLAlchemy's compiled cache and the
# driver's statement cache (sqlite3's, psycopg's prepared statements) are hit every time. Core
# tables, not ORM entities: the ORM's bulk-statement machinery costs more than the SQL itself.
_impression = Impression.__table__  # type: ignore[attr-defined]
_variant = Variant.__table__  # type: ignore[attr-defined]
_RECORD_IMPRESSION = sa.insert(_impression)
_COUNT_IMPRESSION = (
    sa.update(_variant)
    .where(_variant.c.id == sa.bindparam("variant"))
    .values(impressions=_variant.c.impressions + 1)
)
# The fast path talks to the driver itself: SQLAlchemy's execution context, transaction and
# result objects cost more CPU than the two statements (most of a decision's time, profiled under
# gunicorn). Columns in _COLUMNS order; each driver's own placeholders.
_COLUMNS = (
    "id",
    "experiment_id",
    "segment_id",
    "variant_id",
    "propensity",
    "policy",
    "user_hash",
    "created_at",
)
_INSERT_SQLITE = f"INSERT INTO impression ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * 8)})"
_COUNT_SQLITE = "UPDATE variant SET impressions = impressions + 1 WHERE id = ?"
# PostgreSQL: the impression and its counter in one statement, run in autocommit. One statement is
# one atomic transaction, and one network round trip instead of BEGIN, INSERT, UPDATE, COMMIT;
# psycopg prepares it on the server after a few runs.
_RECORD_AND_COUNT_PG = (
    f"WITH shown AS (INSERT INTO impression ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * 8)}) RETURNING variant_id)"
    " UPDATE variant SET impressions = impressions + 1 WHERE id = (SELECT variant_id FROM shown)"
)


@dataclass(frozen=True)
class Decision:
    impression_id: str
    variant_id: int
    text: str
    segment: str
    propensity: float


def decide(
    *, session: Session, cache: SnapshotCache, settings: Settings, decide_in: DecideIn
) -> Decision:
    view = cache.get(session=session, experiment_id=decide_in.experiment)
    arms = view.segment(decide_in.segment)
    if not arms.variant_ids:
        raise Conflict(
            f"segment {arms.key!r} has no active variant", field="segment", code="no_active_variant"
        )
    user_hash = (
        hash_user_id(decide_in.user_id, key=settings.user_id_key)
        if decide_in.user_id is not None
        else None
    )
    sticky = view.sticky and user_hash is not None
    if sticky:
        arm, propensity, policy = _sticky_choice(
            session,
            cache,
            view.experiment_id,
            arms,
            user_hash,  # type: ignore[arg-type]
        )
    else:
        arm = cache.select(arms)
        propensity, policy = float(arms.propensities[arm]), POLICY_THOMPSON

    variant_id = arms.variant_ids[arm]
    impression_id = new_impression_id()
    row = {
        "id": impression_id,
        "experiment_id": view.experiment_id,
        "segment_id": arms.segment_id,
        "variant_id": variant_id,
        "propensity": propensity,
        "policy": policy,
        "user_hash": user_hash,
        "created_at": utcnow(),
    }
    bind = session.get_bind()
    if sticky or not isinstance(bind, sa.Engine):
        # The assignment written above commits with the impression, or neither does.
        _write(session.connection(), row)
        session.commit()
    else:
        _record(bind, row)
    cache.record_impression(arms, arm)
    return Decision(
        impression_id=impression_id,
        variant_id=variant_id,
        text=arms.texts[arm],
        segment=arms.key,
        propensity=propensity,
    )


def _record(engine: sa.Engine, row: dict[str, object]) -> None:
    """Write the impression and count it, committed before returning."""
    dialect = engine.dialect
    values = [row[column] for column in _COLUMNS]
    values[-1] = _created_at_processor(dialect)(row["created_at"])
    pooled = engine.raw_connection()
    driver: Any = pooled.driver_connection
    try:
        if dialect.name == "postgresql":
            driver.autocommit = True
            try:
                driver.execute(_RECORD_AND_COUNT_PG, values)
            finally:
                driver.autocommit = False
        else:
            driver.execute(_INSERT_SQLITE, values)
            driver.execute(_COUNT_SQLITE, (row["variant_id"],))
            driver.commit()
    except dialect.loaded_dbapi.Error as exc:
        if dialect.is_disconnect(exc, driver, None):
            # The server went away, so did every pooled connection: drop them all, as SQLAlchemy
            # does when its own statements meet a disconnect, and only this request fails.
            pooled.invalidate(exc)
            engine.dispose(close=False)
        else:
            driver.rollback()
        # As SQLAlchemy would have raised it: the error handlers answer an OperationalError 503.
        raise sa.exc.DBAPIError.instance(
            "decide: record impression", values, exc, dialect.loaded_dbapi.Error
        ) from exc
    finally:
        pooled.close()


@functools.cache
def _created_at_processor(dialect: sa.Dialect) -> Callable[[Any], Any]:
    """The timestamp column's own conversion (an aware UTC datetime to SQLite's text, say), so
    rows written here read back exactly like rows SQLAlchemy writes."""
    processor = _impression.c.created_at.type.bind_processor(dialect)
    return processor or (lambda value: value)


def _write(connection: sa.Connection, row: dict[str, object]) -> None:
    """The impression and its counter, in the caller's transaction."""
    connection.execute(_RECORD_IMPRESSION, row)
    connection.execute(_COUNT_IMPRESSION, {"variant": row["variant_id"]})


def _sticky_choice(
    session: Session, cache: SnapshotCache, experiment_id: int, arms: SegmentArms, user_hash: str
) -> tuple[int, float, str]:
    key = (experiment_id, arms.segment_id, user_hash)
    existing = session.get(Assignment, key)
    if existing is not None and existing.variant_id in arms.arm_of:
        return arms.arm_of[existing.variant_id], existing.propensity, POLICY_STICKY

    arm = cache.select(arms)
    propensity = float(arms.propensities[arm])
    values = {"variant_id": arms.variant_ids[arm], "propensity": propensity}
    if existing is None:
        inserted = rows_changed(
            session,
            insert_for(session)(Assignment)
            .values(
                experiment_id=experiment_id,
                segment_id=arms.segment_id,
                user_hash=user_hash,
                **values,
            )
            .on_conflict_do_nothing(),
        )
    else:
        # Replace only the stale assignment we saw; a concurrent replacement wins instead.
        inserted = rows_changed(
            session,
            sa.update(Assignment)
            .where(
                col(Assignment.experiment_id) == experiment_id,
                col(Assignment.segment_id) == arms.segment_id,
                col(Assignment.user_hash) == user_hash,
                col(Assignment.variant_id) == existing.variant_id,
            )
            .values(**values),
        )
    if inserted == 1:
        return arm, propensity, POLICY_THOMPSON
    # Another request assigned this user first: serve what it chose, if still servable.
    session.expire_all()
    winner = session.get(Assignment, key)
    if winner is not None and winner.variant_id in arms.arm_of:
        return arms.arm_of[winner.variant_id], winner.propensity, POLICY_STICKY
    return arm, propensity, POLICY_THOMPSON
