"""`alembic upgrade head` on an empty database yields exactly the models' schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from service import migrate
from service.config import load_settings
from service.db import make_engine
from tests.conftest import BACKENDS, postgres_schema_url


@pytest.fixture(params=BACKENDS)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/empty.db"}))
        yield engine
        engine.dispose()
        return
    schema = f"copybandit_migration_{os.getpid()}"
    engine = sa.create_engine(postgres_schema_url(schema))
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield engine
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_head_matches_models(empty_engine: sa.Engine) -> None:
    assert migrate.mismatch(empty_engine) is not None
    migrate.upgrade(empty_engine)
    assert migrate.mismatch(empty_engine) is None
    assert _tables(empty_engine) == set(SQLModel.metadata.tables)
    assert _diff(empty_engine) == []


def test_downgrade_to_base_and_back(empty_engine: sa.Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        command.downgrade(migrate.alembic_config(connection), "base")
    assert _tables(empty_engine) == set()
    migrate.upgrade(empty_engine)
    assert _diff(empty_engine) == []


def test_diff_detects_a_schema_drift(empty_engine: sa.Engine) -> None:
    """Guards the guard: a column the migrations lack must show up as a difference."""
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE experiment ADD COLUMN stray INTEGER")
    assert any("stray" in repr(change) for change in _diff(empty_engine))


@pytest.mark.parametrize(
    ("table", "revision"), [("impression", "0006"), ("event", "0007")], ids=["impression", "event"]
)
def test_times_written_with_an_offset_are_rewritten(
    tmp_path: Path, table: str, revision: str
) -> None:
    """SQLite rows that decisions (before 0007) and conversions (before 0008) stored as
    '… +00:00' read back, compare and sort like the rows SQLAlchemy writes."""
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/old.db"}))
    migrate.upgrade(engine, revision)
    rows = {
        "a" * 32: ("2026-11-28 08:52:40.690560+00:00", "2026-11-28 08:52:40.690560"),
        "b" * 32: ("2026-11-28 08:52:41+00:00", "2026-11-28 08:52:41.000000"),
        "c" * 32: ("2026-11-28 08:52:42.000001", "2026-11-28 08:52:42.000001"),
    }
    insert = {
        "impression": "INSERT INTO impression (id, experiment_id, segment_id, variant_id,"
        " propensity, policy, created_at) VALUES (?, 1, 1, 1, 0.5, 'thompson-v1', ?)",
        "event": "INSERT INTO event (impression_id, variant_id, type, created_at)"
        " VALUES (?, 1, 'conversion', ?)",
    }[table]
    key = "id" if table == "impression" else "impression_id"
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # the rows need no parents here
        for row_key, (stored, _) in rows.items():
            connection.exec_driver_sql(insert, (row_key, stored))
    migrate.upgrade(engine)
    with engine.connect() as connection:
        found = dict(connection.exec_driver_sql(f"SELECT {key}, created_at FROM {table}").all())
    engine.dispose()
    assert found == {row_key: rewritten for row_key, (_, rewritten) in rows.items()}
