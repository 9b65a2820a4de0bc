"""Ending a PostgreSQL client's connections from outside, as a server restart or a proxy's idle
cut does: the client connects under an application_name of its own, which the test then names."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def named(database_url: str, application_name: str) -> str:
    """`database_url` with connections that show as `application_name` in pg_stat_activity."""
    url = sa.engine.make_url(database_url)
    url = url.update_query_dict({"application_name": application_name})
    return url.render_as_string(hide_password=False)


def end_backends(connection: Any, application_name: str) -> list[bool]:
    """Terminate every server process serving `application_name`, through `connection` (a
    Session or a Connection of another name; the caller commits); one True per process ended."""
    return list(
        connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name"
            ),
            {"name": application_name},
        ).scalars()
    )
