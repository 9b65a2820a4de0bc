"""Writers to one SQLite file take turns on a kernel lock, not in SQLite's busy handler.

SQLite lets one connection write at a time. Another that tries meanwhile gets SQLITE_BUSY, and
the busy handler behind `busy_timeout` sleeps 1, 2, 5, 10 ms and longer between retries, while a
decision holds the lock for a tenth of a millisecond. Two gunicorn workers deciding under load
collide often, so one sat asleep for a millisecond after the lock it wanted had been freed. They
take turns on an exclusive `flock` of a file beside the database instead, asked for without
blocking (a blocking flock has no time limit) every 20 µs at first, doubling to 1 ms: a writer
starts within about a decision's time of the turn being freed. One that has not had its turn in
TURN_WAIT_SECONDS writes without it.

Only the hot writes (decisions, event batches) take a turn, and only when their connection holds
no transaction yet; every other writer still meets SQLite's own lock, so correctness never depends
on this one. Where the lock file cannot be opened the writes go ahead without it.

Checkpoints (copying the write-ahead log into the database file, and syncing both) run after a
response has gone out, by a process that has written since it last looked and finds the log at
`CHECKPOINT_AT_BYTES` (SQLite's own default, 1,000 pages) or more, in two steps. The first runs
beside the other writers and does nearly all of the copying and syncing; the second, in a turn,
copies only what they wrote meanwhile, and being complete it lets the next writer start the log
over. The turn is held for part of what SQLite's own checkpoint would do in it, never more. Left
to SQLite, the commit that crossed the line ran the whole checkpoint inside its turn: 4 to 16 ms
measured, every other writer waiting behind it. A checkpoint beside the writers alone never
catches up with them: with one in a background thread the log grew to 579 MB in 8 s of
decisions. SQLite's own checkpoint stays as a backstop for writers that send no responses (the
scheduler, the CLI), at a longer log (`db.py`).

Whether the log is that long is read off the size of the log file, not its index: opening and
closing any file SQLite holds POSIX locks on drops every one of them this process holds on it
(https://www.sqlite.org/howtocorrupt.html, 2.2). Reading the index ("-shm") that way dropped the
lock that tells a newly started process the index is in use; that process then rebuilt the index
under the others, which could die of SIGBUS (5 processes of 60, started in pairs on one file).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

LOCK_SUFFIX = "-writer.lock"
# How long a writer waits for its turn before it writes without one, meeting SQLite's own lock and
# busy_timeout (service.db) as other writers do. A turn is held by a writer that may itself wait out
# its busy_timeout (another process holds SQLite's lock for long), so waiting for turns without a
# limit, the writers queued behind it waited for each one's timeout in a row, past gunicorn's.
TURN_WAIT_SECONDS = 2.0
# While the turn is taken, how often to ask again: from a few decisions' time up to a millisecond.
_FIRST_PAUSE_SECONDS = 0.00002
_LONGEST_PAUSE_SECONDS = 0.001
# SQLite's own default, 1,000 pages of 4 KiB: the log file is a 32-byte header, then per page
# written its 24-byte frame header and the page (https://www.sqlite.org/walformat.html).
CHECKPOINT_AT_BYTES = 32 + 1000 * (24 + 4096)
# SQLite reuses the log file from its start once a checkpoint has copied all of it, and never
# shrinks it, unless journal_size_limit is set: then the first commit of the new log truncates the
# file to that limit (or to what the commit wrote, if more). One byte short of the threshold, the
# file reaches it only when the log does, and its blocks are written over as before.
LOG_FILE_LIMIT_BYTES = CHECKPOINT_AT_BYTES - 1


class _Turn:
    def __init__(self, database: str) -> None:
        self.pid = os.getpid()
        self.database = database
        self.fd = os.open(database + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self.fd)
        # flock excludes other open files, not other threads sharing this one.
        self.threads = threading.Lock()
        # Only a process that wrote since it last looked can have made a checkpoint due.
        self.wrote = False


# Per engine and process: a lock file opened before a fork would be shared with the parent, and a
# flock held through one open file excludes nobody else who shares it.
_turns: weakref.WeakKeyDictionary[sa.Engine, _Turn | None] = weakref.WeakKeyDictionary()


def _turn_for(engine: sa.Engine) -> _Turn | None:
    if engine not in _turns:
        _turns[engine] = _open(engine)
    turn = _turns[engine]
    if turn is not None and turn.pid != os.getpid():
        turn = _turns[engine] = _open(engine)
    return turn


def _open(engine: sa.Engine) -> _Turn | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a URI filename: not a plain path to put a file beside
        return None
    try:
        return _Turn(database)
    except OSError:
        return None


@contextmanager
def writer_turn(engine: sa.Engine, driver_connection: Any) -> Iterator[None]:
    """Wait for this process's turn to write to `engine`'s SQLite file, then hold it until the
    block ends (the transaction must commit or roll back inside it)."""
    turn = _turn_for(engine)
    # Already in a transaction, the connection may hold SQLite's write lock: waiting for the turn
    # then could wait on a writer that waits on us.
    if turn is None or driver_connection.in_transaction:
        yield
        return
    with _holding(turn):
        turn.wrote = True
        yield


@contextmanager
def _holding(turn: _Turn) -> Iterator[None]:
    """The turn, or after TURN_WAIT_SECONDS none."""
    deadline = time.monotonic() + TURN_WAIT_SECONDS
    if not turn.threads.acquire(timeout=TURN_WAIT_SECONDS):
        yield
        return
    try:
        if not _take(turn.fd, deadline):
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(turn.fd, fcntl.LOCK_UN)
    finally:
        turn.threads.release()


def _take(fd: int, deadline: float) -> bool:
    """Whether this open file took the lock before `deadline`. A blocking flock has no time
    limit, so it is asked for without blocking, pausing between tries."""
    pause = _FIRST_PAUSE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE_SECONDS)


def checkpoint_due(engine: sa.Engine) -> bool:
    """Whether this process wrote to `engine` since it last asked, and the log has grown long."""
    turn = _turns.get(engine)
    if turn is None or not turn.wrote or turn.pid != os.getpid():
        return False
    turn.wrote = False
    return log_bytes(turn.database) >= CHECKPOINT_AT_BYTES


def log_bytes(database: str) -> int:
    """The size of `database`'s write-ahead log file (0 when it has none), read without opening
    it. With LOG_FILE_LIMIT_BYTES set, it reaches the threshold only when the log does."""
    try:
        return os.stat(database + "-wal").st_size
    except OSError:  # SQLite deletes it when the last connection closes
        return 0


def checkpoint(engine: sa.Engine) -> None:
    """Copy the write-ahead log into the database: the bulk beside the other writers, what they
    added meanwhile in a turn. For after a response, when no one waits on this process."""
    turn = _turn_for(engine)
    if turn is None:
        return
    pooled = engine.raw_connection()
    try:
        driver: Any = pooled.driver_connection
        driver.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        with _holding(turn):
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
    finally:
        pooled.close()
