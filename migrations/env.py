"""Alembic environment: the URL comes from copybandit's settings, the target from its models."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import service.models  # noqa: F401 - registers the tables on SQLModel.metadata
from service.config import load_settings
from service.db import make_engine
from service.migrate import migration_connection

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    # A caller (service.migrate, tests) may hand over a connection; else build one from settings.
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(load_settings().validate())
    with migration_connection(engine) as connection:
        _run(connection)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
