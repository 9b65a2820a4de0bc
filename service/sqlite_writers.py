"""Writers to one SQLite file take turns on a kernel lock, not in SQLite's busy handler.

SQLite lets one connection write at a time. Another that tries meanwhile gets SQLITE_BUSY, and
the busy handler behind `busy_timeout` sleeps 1, 2, 5, 10 ms and longer between retries, while a
decision holds the lock for a tenth of a millisecond. Two gunicorn workers deciding under load
collide often, so one sat asleep for a millisecond after the lock it wanted had been freed. An
exclusive `flock` on a file beside the database queues them instead: the kernel wakes the next
writer when the lock is released.

Only the hot writes (decisions, event batches) take a turn, and only when their connection holds
no transaction yet; every other writer still meets SQLite's own lock, so correctness never depends
on this one. Where the lock file cannot be opened the writes go ahead without it.

The commit that fills the write-ahead log past 1,000 pages checkpoints it inside the turn (about
4 ms, every couple of hundred decisions), so the other writers wait for it. That is what lets the
log start over: a checkpoint running beside writers never catches up with them, and with one in a
background thread the log grew to 579 MB in 8 s of decisions.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

LOCK_SUFFIX = "-writer.lock"


class _Turn:
    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self.fd)
        # flock excludes other open files, not other threads sharing this one.
        self.threads = threading.Lock()


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
        return _Turn(database + LOCK_SUFFIX)
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
    with turn.threads:
        fcntl.flock(turn.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(turn.fd, fcntl.LOCK_UN)
