"""Making a race happen in a test: wait until another connection is stuck behind our lock."""

from __future__ import annotations

import time

import sqlalchemy as sa


def someone_waits_for_a_lock(engine: sa.Engine) -> bool:
    """PostgreSQL: whether a statement in this database waits for a lock now."""
    with engine.connect() as connection:
        waiting = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).scalar()
    return bool(waiting)


def wait_until_someone_waits_for_a_lock(engine: sa.Engine) -> None:
    """PostgreSQL tells when a statement waits for a row lock; SQLite does not, so there a
    fixed pause lets the other thread reach its write, which then waits for the file's lock."""
    if engine.dialect.name == "sqlite":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if someone_waits_for_a_lock(engine):
            return
        time.sleep(0.01)
    raise AssertionError("nothing came to wait for the lock")
