"""Engine per app, one Session per request, closed at teardown."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any, TypeGuard, cast

import sqlalchemy as sa
from flask import Flask, Response, current_app, g
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from service import sqlite_writers
from service.config import Settings

log = logging.getLogger(__name__)

# How long a web request's statement waits for a lock another writer holds (a long maintenance
# transaction, a migration) before the request answers 503: well inside the worker timeout that
# `copybandit serve` gives gunicorn, which kills a worker it finds busier than that and answers
# 500 HTML. SQLite's busy_timeout had been 30 s, gunicorn's default timeout, and PostgreSQL waited
# as long as the lock was held.
LOCK_WAIT_SECONDS = 10.0
# Commands (migrate, purge, lifecycle) may wait longer: no worker timeout or client waits on them.
_COMMAND_SQLITE_WAIT_SECONDS = 30.0


def make_engine(settings: Settings, *, lock_wait: float | None = None) -> sa.Engine:
    """`lock_wait`: seconds a statement waits for another writer's lock; None waits as commands
    do (SQLite 30 s, PostgreSQL as long as it takes)."""
    if settings.is_sqlite:
        return _sqlite_engine(settings.database_url, lock_wait or _COMMAND_SQLITE_WAIT_SECONDS)
    engine = sa.create_engine(
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
    if lock_wait is not None:
        _set_lock_timeout(engine, lock_wait)
    return engine


def _set_lock_timeout(engine: sa.Engine, seconds: float) -> None:
    """Each new PostgreSQL connection gives up on a lock after `seconds` (LockNotAvailable, an
    OperationalError: the error handlers answer 503)."""

    @sa.event.listens_for(engine, "connect")
    def _lock_timeout(dbapi_connection: Any, _record: Any) -> None:
        # In autocommit, so that the pool's first ROLLBACK does not undo it.
        dbapi_connection.autocommit = True
        dbapi_connection.execute(f"SET lock_timeout = {round(seconds * 1000)}")
        dbapi_connection.autocommit = False


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database."""
    parsed = sa.engine.make_url(url)
    database = parsed.database
    if database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        return None
    return Path(database)


def _create_owner_only(database: Path) -> None:
    """Create a new database file readable by its owner alone (0600), before SQLite makes it
    with the umask's 0644: it holds marketers' password hashes and the digests of sessions and
    keys, and SQLite gives the -wal and -shm files beside it the database file's mode. A file
    that exists keeps the mode it has. One that cannot be made (its folder gone or closed) is
    left to SQLite's connect, whose error the handlers know (503); this one's was a 500."""
    with contextlib.suppress(OSError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _sqlite_engine(url: str, lock_wait: float) -> sa.Engine:
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
        connect_args={"check_same_thread": False, "timeout": lock_wait},
        **({} if in_memory else {"pool_use_lifo": True}),
    )
    if database is not None:
        # As SQLite does, only when a connection is opened: an engine that never connects (an
        # app made only to be inspected) leaves no empty file behind.
        sa.event.listen(engine, "do_connect", lambda *_: _create_owner_only(database))

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the one writer; synchronous=NORMAL in WAL mode survives a
        # process crash (only an OS crash or power loss can drop the last commits).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={round(lock_wait * 1000)}")
        # The web app checkpoints after its responses (service.sqlite_writers); SQLite's own, run
        # inside the commit that crosses this many pages, is the backstop for other writers.
        cursor.execute("PRAGMA wal_autocheckpoint=4000")
        # So the log file's size tells how long the log is (service.sqlite_writers).
        cursor.execute(f"PRAGMA journal_size_limit={sqlite_writers.LOG_FILE_LIMIT_BYTES}")
        cursor.close()

    return engine


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["copybandit.engine"] = make_engine(settings, lock_wait=LOCK_WAIT_SECONDS)
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
    except sa.exc.DBAPIError as exc:
        # The answer is built, and what it reports may have committed on another connection (a
        # decision's impression): the session's own ROLLBACK meeting a connection the server
        # dropped must not turn it into gunicorn's 500. Drop the connection instead of pooling it.
        # One line: a restart met this in request after request, a traceback each.
        log.warning("closing the request's database session failed: %s", exc.orig)
        db_session.invalidate()


def roll_back() -> None:
    """Roll the request's session back after a failure. Its connection may be as dead as the one
    that failed: a decision reads its snapshot in the session and writes on a pooled connection
    of its own, and a server restart ends both, but only the write saw it, so the session's
    ROLLBACK raised inside the error handler and a 503 became a 500. Such a connection is
    dropped instead of pooled."""
    current = session()
    try:
        current.rollback()
    except sa.exc.DBAPIError as exc:
        log.warning("rolling back the request's database session failed: %s", exc.orig)
        current.invalidate()


# SQLite's primary result codes for a file it cannot reach or write: PERM, BUSY, LOCKED, READONLY,
# IOERR, FULL, CANTOPEN, PROTOCOL. It raises OperationalError for a missing table or column and
# for a syntax error too: those are bugs to trace, not outages to wait out.
_SQLITE_UNAVAILABLE = frozenset({3, 5, 6, 8, 10, 13, 14, 15})
# PostgreSQL's read_only_sql_transaction: a hot standby that a failover left the URL pointing at,
# or default_transaction_read_only set for maintenance. psycopg raises it as an InternalError,
# which read as a bug (500 and a traceback a request) while SQLite's read-only file was a 503.
_POSTGRES_READ_ONLY = "25006"


def database_unavailable(exc: BaseException) -> TypeGuard[sa.exc.DBAPIError]:
    """The database could not be reached or written (a lost server, a lock held too long, a
    read-only file): a condition to report and retry, not a bug to trace. Any exception may be
    asked about: the handlers that catch everything ask it too."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if getattr(exc.orig, "sqlstate", None) == _POSTGRES_READ_ONLY:
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    return sqlite_code is None or sqlite_code & 0xFF in _SQLITE_UNAVAILABLE


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
