"""Apply or check Alembic migrations from code (the CLI and the tests share this)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def mismatch(engine: sa.Engine) -> str | None:
    """Why this code cannot work on the database as it is, or None when it is at the head."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return None
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        return f"{where} has no tables yet; run `copybandit migrate` first"
    if current not in {revision.revision for revision in script.walk_revisions()}:
        # Migrating cannot help: only the newer code knows how it got there.
        return (
            f"{where} is at migration {current}, which this copybandit does not know: a newer "
            "version migrated it; run that version"
        )
    return f"{where} is at migration {current}, this code needs {head}; run `copybandit migrate`"
