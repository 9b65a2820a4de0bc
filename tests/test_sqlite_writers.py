"""Writers to one SQLite file take turns on a kernel lock: across processes, forks included."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service.sqlite_writers import LOCK_SUFFIX, _turn_for, writer_turn

HOLD_SECONDS = 0.5
_fork = multiprocessing.get_context("fork")


def _engine(tmp_path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{tmp_path / 'turns.db'}")


def _hold_a_turn(engine: sa.Engine, holding: Any, done: Any) -> None:
    with sqlite3.connect(engine.url.database) as driver, writer_turn(engine, driver):
        holding.set()
        time.sleep(HOLD_SECONDS)
        done.value = time.monotonic()


def _wait_for_a_turn_behind_another_process(engine: sa.Engine) -> tuple[float, float]:
    """Another process takes a turn and holds it; ours must start after it has finished: when
    ours began, and when theirs ended."""
    holding, done = _fork.Event(), _fork.Value("d", 0.0)
    other = _fork.Process(target=_hold_a_turn, args=(engine, holding, done))
    other.start()
    try:
        assert holding.wait(10)
        with sqlite3.connect(engine.url.database) as driver, writer_turn(engine, driver):
            ours = time.monotonic()
    finally:
        other.join(10)
    assert other.exitcode == 0
    return ours, done.value


def test_a_writer_waits_for_another_process_to_finish_its_turn(tmp_path: Path) -> None:
    ours, theirs_ended = _wait_for_a_turn_behind_another_process(_engine(tmp_path))
    assert theirs_ended > 0
    assert ours >= theirs_ended
    assert (tmp_path / f"turns.db{LOCK_SUFFIX}").exists()


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
            assert done.value == 0.0 or entered < done.value
        finally:
            other.join(10)
    assert done.value > entered


def test_databases_without_a_file_take_no_turn(tmp_path: Path) -> None:
    assert _turn_for(sa.create_engine("sqlite://")) is None
    assert _turn_for(sa.create_engine("sqlite:///:memory:")) is None
    assert _turn_for(sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")) is None
    assert not list(tmp_path.iterdir())
