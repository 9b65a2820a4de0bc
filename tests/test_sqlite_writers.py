"""Writers to one SQLite file take turns on a kernel lock: across processes, forks included."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.sqlite_writers import LOCK_SUFFIX, _turn_for, writer_turn
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
