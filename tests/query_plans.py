"""What SQL a block of code sends, and how SQLite plans to read it: for tests that a query goes
through an index rather than a table (SQLite's plans name the index whatever the tables hold)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


@contextmanager
def statements_sent(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) the engine sends inside the block, in order."""
    sent: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", remember)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", remember)


def sqlite_reads(engine: sa.Engine, sent: list[tuple[str, Any]], tables: str) -> list[str]:
    """Each step of SQLite's plans for `sent` that reads a table matching the regex `tables`."""
    with engine.connect() as connection:
        return [
            detail
            for statement, parameters in sent
            for *_, detail in connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {statement}", parameters
            )
            if re.search(rf"\b({tables})\b", detail)
        ]
