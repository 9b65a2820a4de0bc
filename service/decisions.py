"""POST /v1/decide: pick a variant by Thompson sampling and record the impression durably."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.config import Settings
from service.db import insert_for, rows_changed
from service.errors import Conflict, quoted
from service.identity import hash_user_id, new_impression_id
from service.models import (
    ASSIGNMENT_USE_NOTED_EVERY,
    Assignment,
    Impression,
    Variant,
    VariantStatus,
    utcnow,
)
from service.schemas import DecideIn
from service.snapshot import SegmentArms, SnapshotCache
from service.sqlite_writers import writer_turn

POLICY_THOMPSON = "thompson-v1"
# A sticky repeat is not a fresh draw: off-policy estimators must not treat it as one.
POLICY_STICKY = "sticky-v1"

_impression = Impression.__table__  # type: ignore[attr-defined]
# Plain SQL in each driver's own placeholders, built once: the fast path hands it to the driver
# itself, because SQLAlchemy's execution context, transaction and result objects cost more CPU than
# the two statements (most of a decision's time, profiled under gunicorn); the sticky path runs the
# same SQL in the session's transaction. Parameters in _COLUMNS order.
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
    policy: str


def decide(
    *,
    session: Callable[[], Session],
    bind: sa.Engine | sa.Connection,
    cache: SnapshotCache,
    settings: Settings,
    decide_in: DecideIn,
) -> Decision:
    """`session` opens (or returns) the caller's session; `bind` is where it writes. Most
    decisions need no session: opening and closing one was 7% of a decision's time in process."""
    view = cache.fresh(decide_in.experiment) or cache.get(
        session=session(), experiment_id=decide_in.experiment
    )
    arms = view.segment(decide_in.segment)
    if not arms.variant_ids:
        message = f"segment {quoted(arms.key)} has no active variant"
        if decide_in.segment is not None and decide_in.segment != arms.key:
            message = (
                f"neither segment {quoted(decide_in.segment)} nor the default segment"
                f" {quoted(arms.key)} has an active variant"
            )
        # A request that named no segment sent no field at fault: its experiment has no live copy.
        at_fault = "segment" if decide_in.segment is not None else None
        raise Conflict(message, field=at_fault, code="no_active_variant")
    user_hash = (
        hash_user_id(decide_in.user_id, key=settings.user_id_key)
        if decide_in.user_id is not None
        else None
    )
    sticky = view.sticky and user_hash is not None
    if sticky:
        arms, arm, propensity, policy = _sticky_choice(
            session(),
            cache,
            view.experiment_id,
            arms,
            user_hash,  # type: ignore[arg-type]
        )
    else:
        arm, propensity = cache.choose(arms)
        policy = POLICY_THOMPSON

    variant_id = arms.variant_ids[arm]
    impression_id = new_impression_id()
    statements = _impression_statements(
        bind.dialect,
        (
            impression_id,
            view.experiment_id,
            arms.segment_id,
            variant_id,
            propensity,
            policy,
            user_hash,
            utcnow(),
        ),
    )
    if sticky or not isinstance(bind, sa.Engine):
        # The assignment written above commits with the impression, or neither does.
        current = session()
        connection = current.connection()
        for sql, parameters in statements:
            connection.exec_driver_sql(sql, parameters)
        current.commit()
    else:
        _record(bind, statements)
    cache.record_impression(arms, arm)
    return Decision(
        impression_id=impression_id,
        variant_id=variant_id,
        text=arms.texts[arm],
        segment=arms.key,
        propensity=propensity,
        policy=policy,
    )


def _impression_statements(
    dialect: sa.Dialect, values: tuple[Any, ...]
) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL that stores an impression and counts it: `values` in _COLUMNS order."""
    *columns, created_at = values
    values = (*columns, _created_at_processor(dialect)(created_at))
    if dialect.name == "postgresql":
        return [(_RECORD_AND_COUNT_PG, values)]
    return [(_INSERT_SQLITE, values), (_COUNT_SQLITE, (values[_COLUMNS.index("variant_id")],))]


def _record(engine: sa.Engine, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Run them and commit before returning (PostgreSQL's one statement in autocommit)."""
    dialect = engine.dialect
    pooled = _connect(engine)
    driver: Any = pooled.driver_connection
    try:
        if dialect.name == "postgresql":
            driver.autocommit = True
            try:
                for sql, parameters in statements:
                    driver.execute(sql, parameters)
            finally:
                # On a connection the server ended, this raised "the connection is lost" in place
                # of the error that says why (terminating connection due to administrator
                # command); such a connection is invalidated below, never used again.
                if not driver.broken:
                    driver.autocommit = False
        else:
            with writer_turn(engine, driver):
                for sql, parameters in statements:
                    driver.execute(sql, parameters)
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
            "decide: record impression", statements, exc, dialect.loaded_dbapi.Error
        ) from exc
    finally:
        pooled.close()


def _connect(engine: sa.Engine) -> sa.PoolProxiedConnection:
    """A pooled connection; one that cannot be made is raised as a Session raises it."""
    dialect = engine.dialect
    try:
        return engine.raw_connection()
    except dialect.loaded_dbapi.Error as exc:
        # The pool hands the driver's own error on (psycopg's OperationalError when the server is
        # down or the database gone), which the error handlers answered 500; wrapped, it is 503.
        raise sa.exc.DBAPIError.instance(
            "decide: connect",
            None,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=dialect.is_disconnect(exc, None, None),
        ) from exc


@functools.cache
def _created_at_processor(dialect: sa.Dialect) -> Callable[[Any], Any]:
    """The timestamp column's own conversion (an aware UTC datetime to SQLite's text, say), so
    rows written here are stored exactly like rows SQLAlchemy writes."""
    # The dialect's variant of the type: the generic one's processor stops at the decorator and
    # left the driver to render the time (sqlite3 appends "+00:00", which no other row has).
    processor = _impression.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


def _sticky_choice(
    session: Session, cache: SnapshotCache, experiment_id: int, arms: SegmentArms, user_hash: str
) -> tuple[SegmentArms, int, float, str]:
    """The arms to serve from (reloaded when the user's variant is newer than them), the arm, its
    propensity and the policy to log it under."""
    key = (experiment_id, arms.segment_id, user_hash)
    existing = session.get(Assignment, key)
    if existing is not None:
        serving = _arms_serving(session, cache, experiment_id, arms, existing.variant_id)
        if existing.variant_id in serving.arm_of:
            _note_use(session, existing)
            return serving, serving.arm_of[existing.variant_id], existing.propensity, POLICY_STICKY

    arm, propensity = cache.choose(arms)
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
            .values(**values, last_used_at=utcnow()),
        )
    if inserted == 1:
        return arms, arm, propensity, POLICY_THOMPSON
    # Another request assigned this user first: serve what it chose, if still servable.
    session.expire_all()
    winner = session.get(Assignment, key)
    if winner is not None:
        serving = _arms_serving(session, cache, experiment_id, arms, winner.variant_id)
        if winner.variant_id in serving.arm_of:
            return serving, serving.arm_of[winner.variant_id], winner.propensity, POLICY_STICKY
    return arms, arm, propensity, POLICY_THOMPSON


def _arms_serving(
    session: Session, cache: SnapshotCache, experiment_id: int, arms: SegmentArms, variant_id: int
) -> SegmentArms:
    """`arms`, or the segment's arms from a reloaded snapshot when `variant_id` is active but newer
    than this worker's snapshot. A snapshot is up to the TTL old and does not list copy added,
    approved or resumed since (by this worker's peers, say); judged by it alone, a user assigned
    that copy elsewhere was moved off it for good. Only an assignment the snapshot lacks pays for
    the look-up."""
    if variant_id in arms.arm_of or not _is_active_in(session, variant_id, arms.segment_id):
        return arms
    cache.invalidate(experiment_id)
    return cache.get(session=session, experiment_id=experiment_id).segment(arms.key)


def _is_active_in(session: Session, variant_id: int, segment_id: int) -> bool:
    found = session.exec(
        select(Variant.id).where(
            Variant.id == variant_id,
            Variant.segment_id == segment_id,
            Variant.status == VariantStatus.ACTIVE,
        )
    ).first()
    return found is not None


def _note_use(session: Session, assignment: Assignment) -> None:
    """Keep `last_used_at` within ASSIGNMENT_USE_NOTED_EVERY of the last use, for `copybandit
    purge`; it commits with the impression."""
    now = utcnow()
    if now - assignment.last_used_at < ASSIGNMENT_USE_NOTED_EVERY:
        return
    session.execute(
        sa.update(Assignment)
        .where(
            col(Assignment.experiment_id) == assignment.experiment_id,
            col(Assignment.segment_id) == assignment.segment_id,
            col(Assignment.user_hash) == assignment.user_hash,
        )
        .values(last_used_at=now)
    )
