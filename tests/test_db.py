"""The engine each app builds (service.db)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, select

from service import db
from service.config import load_settings
from service.db import make_engine
from service.models import LifecycleEvent, UtcDateTime


def test_the_pool_hands_out_the_connection_returned_last(database_url: str) -> None:
    # A SQLite connection re-reads every page it needs once another connection has committed, so
    # decisions rotating over two pooled connections each read their B-tree pages again.
    engine = make_engine(load_settings({"database_url": database_url}, environ={}))
    try:
        first, second = engine.raw_connection(), engine.raw_connection()
        returned_last = second.driver_connection
        first.close()
        second.close()
        again = engine.raw_connection()
        assert again.driver_connection is returned_last
        again.close()
    finally:
        engine.dispose()


def test_times_read_back_in_utc_whatever_the_servers_time_zone(
    session: Session, experiment: dict[str, Any]
) -> None:
    """A PostgreSQL database set to another TimeZone answered in local time, which the
    dashboard printed labelled UTC, five hours off; SQLite keeps no offset at all."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET TIME ZONE 'America/New_York'"))
    stored = datetime(2026, 12, 5, 0, 32, 23, tzinfo=UTC)
    session.add(
        LifecycleEvent(
            experiment_id=experiment["id"],
            action="discount",
            reason="time zone check",
            created_at=stored,
        )
    )
    session.commit()
    (read,) = session.exec(
        select(LifecycleEvent.created_at).where(LifecycleEvent.reason == "time zone check")
    ).all()
    assert read == stored and read.utcoffset() == timedelta(0)
    assert read.isoformat() == "2026-12-05T00:32:23+00:00"


def test_an_aware_time_from_the_driver_is_turned_to_utc() -> None:
    new_york = timezone(timedelta(hours=-5))
    read = UtcDateTime().process_result_value(
        datetime(2026, 12, 4, 19, 32, tzinfo=new_york), postgresql.dialect()
    )
    assert read is not None and read.tzinfo is UTC and read.hour == 0 and read.day == 5


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes_once_written(database: Path) -> dict[str, int]:
    """The modes of the database file and of the -wal and -shm files SQLite makes beside it."""
    engine = make_engine(load_settings({"database_url": f"sqlite:///{database}"}, environ={}))
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            connection.execute(sa.text("INSERT INTO t VALUES (1)"))
        with engine.connect():  # an open connection keeps the -wal and -shm files there
            paths = [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm")]
            return {path.name: stat.S_IMODE(path.stat().st_mode) for path in paths}
    finally:
        engine.dispose()


@pytest.mark.usefixtures("umask_022")
def test_a_new_sqlite_database_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    # Created 0644 under the usual umask, so any local user could read the marketers' password
    # hashes; SQLite gives its -wal and -shm files the same mode.
    modes = _modes_once_written(tmp_path / "var" / "copybandit.db")
    assert modes == {"copybandit.db": 0o600, "copybandit.db-wal": 0o600, "copybandit.db-shm": 0o600}


@pytest.mark.usefixtures("umask_022")
def test_an_existing_sqlite_database_keeps_its_mode(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    database.touch(mode=0o640)
    assert _modes_once_written(database)["shared.db"] == 0o640


def test_a_database_whose_folder_is_gone_fails_as_sqlite_says(tmp_path: Path) -> None:
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/data/x.db"}))
    (tmp_path / "data").rmdir()  # renamed away or unmounted after start-up
    # Before, the owner-only create raised FileNotFoundError, which the handlers answered 500.
    with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
        engine.connect()


@pytest.mark.parametrize(
    ("statement", "unavailable"),
    [
        ("SELECT updated_at FROM no_such_table", False),
        ("SELEC 1", False),
        ("PRAGMA query_only = ON; INSERT INTO t VALUES (1)", True),
    ],
)
def test_only_what_keeps_sqlite_from_its_file_counts_as_unavailable(
    tmp_path: Path, statement: str, unavailable: bool
) -> None:
    # SQLite raises OperationalError for a missing table or a syntax error as for a read-only
    # file; logged as "database unavailable", the bugs had looked like outages.
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/x.db"}))
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (a INTEGER)")
        connection.commit()
        *setup, failing = statement.split("; ")
        for sql in setup:
            connection.exec_driver_sql(sql)
        with pytest.raises(sa.exc.OperationalError) as raised:
            connection.exec_driver_sql(failing)
    assert db.database_unavailable(raised.value) is unavailable
