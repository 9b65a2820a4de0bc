"""Writers to one SQLite file take turns on a kernel lock: across processes, forks included."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service import sqlite_writers
from service.config import load_settings
from service.db import make_engine
from service.sqlite_writers import (
    CHECKPOINT_AT_BYTES,
    LOCK_SUFFIX,
    LOG_FILE_LIMIT_BYTES,
    _turn_for,
    checkpoint,
    checkpoint_due,
    log_bytes,
    writer_turn,
)
from tests.conftest import Api

HOLD_SECONDS = 0.5
_fork = multiprocessing.get_context("fork")


def _engine(tmp_path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{tmp_path / 'turns.db'}")


def _hold_a_turn(engine: sa.Engine, holding: Any, done: Any) -> None:
    with sqlite3.connect(engine.url.database) as driver, writer_turn(engine, driver):
        holding.set()
        time.sleep(HOLD_SECONDS)
        done.value = time.monotonic()


def _behind_another_process(engine: sa.Engine, write: Callable[[], object]) -> tuple[float, float]:
    """Another process takes a turn and holds it while `write` runs here: when `write` finished,
    and when their turn ended."""
    holding, done = _fork.Event(), _fork.Value("d", 0.0)
    other = _fork.Process(target=_hold_a_turn, args=(engine, holding, done))
    other.start()
    try:
        assert holding.wait(10)
        write()
        ours = time.monotonic()
    finally:
        other.join(10)
    assert other.exitcode == 0
    assert done.value > 0
    return ours, done.value


def _wait_for_a_turn_behind_another_process(engine: sa.Engine) -> tuple[float, float]:
    def take_a_turn() -> None:
        with sqlite3.connect(engine.url.database) as driver, writer_turn(engine, driver):
            pass

    return _behind_another_process(engine, take_a_turn)


def test_a_writer_waits_for_another_process_to_finish_its_turn(tmp_path: Path) -> None:
    ours, theirs_ended = _wait_for_a_turn_behind_another_process(_engine(tmp_path))
    assert ours >= theirs_ended
    assert (tmp_path / f"turns.db{LOCK_SUFFIX}").exists()


def test_a_writer_that_waited_long_for_its_turn_writes_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn's holder may wait out its whole busy_timeout on SQLite's lock (another process's
    long transaction): the writers queued behind it each waited for the one before, past
    gunicorn's worker timeout, which answers 500 HTML."""
    monkeypatch.setattr(sqlite_writers, "TURN_WAIT_SECONDS", HOLD_SECONDS / 10)
    ours, theirs_ended = _wait_for_a_turn_behind_another_process(_engine(tmp_path))
    assert ours < theirs_ended


def test_a_forked_worker_takes_turns_with_the_process_that_forked_it(tmp_path: Path) -> None:
    """The lock file is opened in the parent before the fork (as an app built before gunicorn
    forks would); a child sharing that open file would not be excluded by its flock."""
    engine = _engine(tmp_path)
    parent_turn = _turn_for(engine)
    assert parent_turn is not None
    ours, theirs_ended = _wait_for_a_turn_behind_another_process(engine)
    assert ours >= theirs_ended


def test_a_connection_inside_a_transaction_does_not_wait(tmp_path: Path) -> None:
    """It may already hold SQLite's write lock, which the turn's holder could be waiting for."""
    engine = _engine(tmp_path)
    holding, done = _fork.Event(), _fork.Value("d", 0.0)
    other = _fork.Process(target=_hold_a_turn, args=(engine, holding, done))
    with sqlite3.connect(engine.url.database) as driver:
        driver.execute("CREATE TABLE t (x INTEGER)")
        driver.execute("INSERT INTO t VALUES (1)")  # opens a transaction
        assert driver.in_transaction
        other.start()
        try:
            assert holding.wait(10)
            with writer_turn(engine, driver):
                entered = time.monotonic()
        finally:
            other.join(10)
    assert done.value > entered


def test_databases_without_a_file_take_no_turn() -> None:
    assert _turn_for(sa.create_engine("sqlite://")) is None
    assert _turn_for(sa.create_engine("sqlite:///:memory:")) is None
    assert _turn_for(sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")) is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_decisions_and_event_batches_take_a_turn(
    api: Api, app: Any, experiment: dict[str, Any]
) -> None:
    engine = app.extensions["copybandit.engine"]
    shown: list[str] = []

    def decide() -> None:
        shown.append(api.decide(experiment["id"], segment="tea-lovers")["impression_id"])

    def report() -> None:
        events = [{"impression_id": shown[0], "type": "conversion"}]
        response = api.post("/v1/events", json={"events": events}, key="serve")
        assert response.get_json()["accepted"] == 1

    decided, theirs_ended = _behind_another_process(engine, decide)
    assert decided >= theirs_ended
    reported, theirs_ended = _behind_another_process(engine, report)
    assert reported >= theirs_ended


# --- checkpoints after responses ---------------------------------------------------------------

WAL_FRAME_BYTES = 4096 + 24  # a page and its frame header, at SQLite's default page size


def test_a_checkpoint_is_due_once_a_write_has_made_the_log_long(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    database = str(engine.url.database)
    with sqlite3.connect(database, isolation_level=None) as driver:
        driver.execute("PRAGMA journal_mode=WAL")
        driver.execute("PRAGMA wal_autocheckpoint=0")
        driver.execute(f"PRAGMA journal_size_limit={LOG_FILE_LIMIT_BYTES}")  # as the app's engine
        driver.execute("CREATE TABLE t (x BLOB)")

        def write() -> None:
            with writer_turn(engine, driver):
                driver.execute("INSERT INTO t (x) VALUES (randomblob(3000))")

        def write_until_due() -> int:
            writes = 0
            while log_bytes(database) < CHECKPOINT_AT_BYTES:
                write()
                writes += 1
                assert checkpoint_due(engine) == (log_bytes(database) >= CHECKPOINT_AT_BYTES)
            return writes

        first_log = write_until_due()
        assert not checkpoint_due(engine)  # nothing written since it last answered
        write()
        assert checkpoint_due(engine)
        checkpoint(engine)
        write()
        assert not checkpoint_due(engine)
        busy, frames, _ = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
        assert 0 < frames < 10  # the log started over: it holds the last write's pages
        # The file shrank with it, so the next log is due after as many writes as the first.
        assert log_bytes(database) < CHECKPOINT_AT_BYTES
        assert abs(write_until_due() - first_log) <= 2
        busy, frames, _ = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
        assert 32 + frames * WAL_FRAME_BYTES >= CHECKPOINT_AT_BYTES  # SQLite's own count agrees


def _dms_lock_free(database: str) -> bool:
    """Whether another process could lock the byte of the wal-index by which SQLite's first
    connection in a process tells later ones the index is in use (its unix VFS: byte 128)."""
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)\n"
        "except OSError:\n"
        "    sys.exit(3)\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe, database + "-shm"], timeout=30)
    assert completed.returncode in (0, 3)  # not a missing file
    return completed.returncode == 0


def test_asking_whether_a_checkpoint_is_due_keeps_sqlites_locks(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of this process's POSIX locks on it, SQLite's
    included. Without its lock on the index, a process that connected next took the index for
    abandoned and rebuilt it under the others: a worker died of SIGBUS."""
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path / 'app.db'}"}))
    database = str(engine.url.database)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            connection.commit()
            assert not _dms_lock_free(database)  # the probe can see SQLite's lock
            for _ in range(3):
                with writer_turn(engine, connection.connection.driver_connection):
                    connection.exec_driver_sql("INSERT INTO t VALUES (1)")
                    connection.commit()
                checkpoint_due(engine)
                checkpoint(engine)
                assert not _dms_lock_free(database)
    finally:
        engine.dispose()


def _write_until(database: str, stop: Any, commits: Any) -> None:
    """Rows, one commit per turn, until told to stop; SQLite's own checkpoint is off, so only
    the other process's checkpoints can let the log start over."""
    engine = sa.create_engine(f"sqlite:///{database}")
    with sqlite3.connect(database, isolation_level=None) as driver:
        driver.execute("PRAGMA wal_autocheckpoint=0")
        while not stop.is_set():
            with writer_turn(engine, driver):
                driver.execute("INSERT INTO t (x) VALUES (randomblob(200))")
            commits.value += 1


def test_checkpoints_beside_a_busy_writer_let_the_log_start_over(tmp_path: Path) -> None:
    """Copying beside the writers alone never catches up with them; the second step, taken in a
    turn, leaves nothing uncopied, so the writer's next commit starts the log from its beginning."""
    engine = _engine(tmp_path)
    database = str(engine.url.database)
    with sqlite3.connect(database) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x BLOB)")
    stop, commits = _fork.Event(), _fork.Value("l", 0)
    writer = _fork.Process(target=_write_until, args=(database, stop, commits))
    writer.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            time.sleep(0.02)
            checkpoint(engine)
    finally:
        stop.set()
        writer.join(10)
    assert writer.exitcode == 0
    assert commits.value > 200
    # Each commit appended at least one frame; a log never started over holds them all.
    assert log_bytes(database) < commits.value * WAL_FRAME_BYTES / 4
    with sqlite3.connect(database) as reader:
        assert reader.execute("SELECT COUNT(*) FROM t").fetchone()[0] == commits.value


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_app_checkpoints_when_the_response_whose_write_made_it_due_is_closed(
    api: Api, app: Any, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = app.extensions["copybandit.engine"]
    ran: list[sa.Engine] = []
    real_checkpoint = sqlite_writers.checkpoint

    def counted_checkpoint(engine: sa.Engine) -> None:
        ran.append(engine)
        real_checkpoint(engine)

    monkeypatch.setattr(sqlite_writers, "checkpoint", counted_checkpoint)

    def decide() -> Any:
        response = api.post("/v1/decide", json={"experiment": experiment["id"]}, key="serve")
        assert response.status_code == 200, response.get_json()
        return response

    database = str(engine.url.database)
    for _ in range(2 * CHECKPOINT_AT_BYTES // WAL_FRAME_BYTES):  # a decision writes a page or more
        response = decide()
        if log_bytes(database) >= CHECKPOINT_AT_BYTES:
            break
        response.close()
    assert ran == []  # not while the client may still be waiting for the answer
    response.close()  # as a WSGI server does once the last byte is sent
    assert ran == [engine]
    decide().close()
    # The log started over, and the app's connections let its file shrink with it (otherwise a
    # checkpoint would be due after every write from now on).
    assert log_bytes(database) < CHECKPOINT_AT_BYTES
    with sqlite3.connect(engine.url.database) as other:
        busy, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    # It holds the last decision's pages, not all the decisions'.
    assert busy == 0
    assert 0 < frames < 20
