"""/healthz and a SQLite database whose writes fail for want of space ("database or disk is full"),
made here with SQLite's max_page_count, as a full disk makes it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.write_health import HOLD_SECONDS, WriteHealth


@pytest.fixture
def database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite only: PostgreSQL is shared by every server, and is left out (service.write_health)."""
    path = tmp_path / "copybandit.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: Any) -> Clock:
    clock = Clock()
    app.extensions["copybandit.write_health"] = WriteHealth(clock=clock)
    return clock


@pytest.fixture
def page_limit(app: Any) -> dict[str, int | None]:
    """Set "pages" to cap the database at its current size plus that many pages, on every
    connection; None lifts the cap."""
    engine = app.extensions["copybandit.engine"]
    limit: dict[str, int | None] = {"pages": None}

    @sa.event.listens_for(engine, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        if limit["pages"] is not None:
            size = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {size + limit['pages']}")

    return limit


def _fill(api: Any, experiment: dict[str, Any]) -> Any:
    """Decide until a decision's write fails; that 503."""
    for _ in range(2000):
        response = api.post("/v1/decide", json={"experiment": experiment["id"]}, key="serve")
        if response.status_code != 200:
            return response
    raise AssertionError("the database never filled")


def _capped(app: Any, page_limit: dict[str, int | None], pages: int | None) -> None:
    page_limit["pages"] = pages
    app.extensions["copybandit.engine"].dispose()


@pytest.mark.usefixtures("clock")
def test_healthz_says_503_while_writes_fail_for_a_full_disk_and_ok_once_one_succeeds(
    app: Any, api: Any, experiment: dict[str, Any], page_limit: dict[str, int | None]
) -> None:
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    _capped(app, page_limit, 0)

    refused = _fill(api, experiment)

    assert refused.status_code == 503 and refused.get_json()["field"] == "database"
    health = client.get("/healthz")
    # It said ok: SELECT 1 answered and the file's permissions allowed writing.
    assert health.status_code == 503
    assert health.get_json() == {
        "error": "unavailable",
        "message": "the last write failed: database or disk is full",
        "field": "database",
    }
    _capped(app, page_limit, None)
    api.decide(experiment["id"])
    assert client.get("/healthz").status_code == 200


@pytest.mark.usefixtures("clock")
def test_an_answer_that_stored_nothing_does_not_say_ok_again(
    app: Any, api: Any, experiment: dict[str, Any], page_limit: dict[str, int | None]
) -> None:
    client = app.test_client()
    _capped(app, page_limit, 0)
    _fill(api, experiment)

    # A batch whose one conversion names no impression: 200, rejected, nothing written.
    rejected = api.post(
        "/v1/events",
        json={"events": [{"impression_id": "0" * 32, "type": "conversion", "event_id": "e-1"}]},
        key="serve",
    )
    # A policy PATCH that changes nothing: 200, nothing written.
    policy = api.get(f"/v1/experiments/{experiment['id']}").get_json()["policy"]
    unchanged = api.patch(
        f"/v1/experiments/{experiment['id']}/policy",
        json={"min_impressions": policy["min_impressions"]},
    )

    assert rejected.status_code == 200 and rejected.get_json()["accepted"] == 0
    assert unchanged.status_code == 200, unchanged.get_json()
    assert client.get("/healthz").status_code == 503


def test_healthz_tries_the_server_again_after_a_while_without_failed_writes(
    app: Any,
    api: Any,
    experiment: dict[str, Any],
    page_limit: dict[str, int | None],
    clock: Clock,
) -> None:
    """A server out of a load balancer's service makes no writes that could succeed."""
    client = app.test_client()
    _capped(app, page_limit, 0)
    _fill(api, experiment)
    clock.now += HOLD_SECONDS - 1
    assert client.get("/healthz").status_code == 503
    clock.now += 1
    assert client.get("/healthz").status_code == 200


def test_only_a_full_or_read_only_database_counts() -> None:
    health = WriteHealth()

    class Busy(Exception):
        sqlite_errorcode = 5  # SQLITE_BUSY: another writer holds the lock

    class ReadOnly(Exception):
        sqlite_errorcode = 8 | (1 << 8)  # SQLITE_READONLY_RECOVERY

    health.met(sa.exc.OperationalError("INSERT", None, Busy()))
    assert health.problem() is None
    health.met(sa.exc.OperationalError("INSERT", None, ReadOnly("attempt to write a readonly")))
    assert health.problem() == "the last write failed: attempt to write a readonly"
