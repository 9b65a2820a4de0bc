"""Engine per app, one Session per request, closed at teardown."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from flask import Flask, Response, current_app, g
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from service import sqlite_writers
from service.config import Settings

log = logging.getLogger(__name__)


def make_engine(settings: Settings) -> sa.Engine:
    if settings.is_sqlite:
        return _sqlite_engine(settings.database_url)
    return sa.create_engine(
        settings.database_url,
        pool_pre_ping=settings.database_pre_ping == "on",
        # Servers and proxies drop idle connections; replace them before that happens.
        pool_recycle=1800,
        pool_size=5,
        max_overflow=10,
        # The connection used last is the warm one (psycopg prepares statements per connection),
        # and spares go idle for the server to drop.
        pool_use_lifo=True,
    )


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database."""
    parsed = sa.engine.make_url(url)
    database = parsed.database
    if database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    return Path(database)


def _sqlite_engine(url: str) -> sa.Engine:
    database = sqlite_file(url)
    in_memory = database is None
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    # A file gets a queue of connections; take the last one returned. A SQLite connection drops
    # its whole page cache when another connection has committed since its last transaction, so
    # a pool that rotated between two made each decision read its ~15 B-tree pages again (15.2
    # pread64 per decision; last in, first out: 0.4). In memory there is one connection anyway.
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        **({} if in_memory else {"pool_use_lifo": True}),
    )

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the one writer; synchronous=NORMAL in WAL mode survives a
        # process crash (only an OS crash or power loss can drop the last commits).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # The web app checkpoints after its responses (service.sqlite_writers); SQLite's own, run
        # inside the commit that crosses this many pages, is the backstop for other writers.
        cursor.execute("PRAGMA wal_autocheckpoint=4000")
        # So the log file's size tells how long the log is (service.sqlite_writers).
        cursor.execute(f"PRAGMA journal_size_limit={sqlite_writers.LOG_FILE_LIMIT_BYTES}")
        cursor.close()

    return engine


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["copybandit.engine"] = make_engine(settings)
    app.teardown_appcontext(_close_session)
    if settings.is_sqlite:
        app.after_request(_checkpoint_once_answered)


def _checkpoint_once_answered(response: Response) -> Response:
    """When a checkpoint is due, run it as the response closes: after its last byte is sent."""
    bound = engine()
    if sqlite_writers.checkpoint_due(bound):
        response.call_on_close(functools.partial(_checkpoint, bound))
    return response


def _checkpoint(bound: sa.Engine) -> None:
    try:
        sqlite_writers.checkpoint(bound)
    except Exception:  # the client has its answer; SQLite's own checkpoint will still run
        log.warning("checkpoint after a response failed", exc_info=True)


def engine() -> sa.Engine:
    return current_app.extensions["copybandit.engine"]


def session() -> Session:
    """The request's session, opened on first use."""
    if "db_session" not in g:
        g.db_session = Session(engine(), expire_on_commit=False)
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    db_session: Session | None = g.pop("db_session", None)
    if db_session is None:
        return
    try:
        db_session.close()
    except sa.exc.DBAPIError:
        # The answer is built, and what it reports may have committed on another connection (a
        # decision's impression): the session's own ROLLBACK meeting a connection the server
        # dropped must not turn it into gunicorn's 500. Drop the connection instead of pooling it.
        log.warning("closing the request's database session failed", exc_info=True)
        db_session.invalidate()


def insert_for(session: Session) -> Any:
    """The dialect's `insert`: SQLite's and PostgreSQL's both have `on_conflict_do_*`."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def rows_changed(session: Session, statement: sa.Executable) -> int:
    """How many rows an UPDATE matched, or an INSERT wrote (0 when ON CONFLICT skipped it)."""
    # Without preserve_rowcount, SQLAlchemy 2.1 reports -1 for a psycopg INSERT.
    result = session.execute(statement, execution_options={"preserve_rowcount": True})
    return cast("sa.CursorResult[Any]", result).rowcount
