"""Fixtures: an app on a real, migrated database — a temp SQLite file always, and PostgreSQL too
when COPYBANDIT_TEST_DATABASE_URL names one (CI sets it; `.ci/run` starts the server)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlmodel import Session, SQLModel, col

from service import create_app
from service.auth import create_key
from service.config import load_settings, normalize_database_url
from service.db import make_engine
from service.metrics import MULTIPROC_ENV
from service.migrate import upgrade
from service.models import Experiment, Scope

PG_URL = os.environ.get("COPYBANDIT_TEST_DATABASE_URL")
BACKENDS = ["sqlite", "postgres"] if PG_URL else ["sqlite"]


def pytest_report_header(config: pytest.Config) -> str:
    where = (
        f"PostgreSQL at {PG_URL}"
        if PG_URL
        else "PostgreSQL not configured (set COPYBANDIT_TEST_DATABASE_URL)"
    )
    return f"copybandit database tests: SQLite file; {where}"


@pytest.fixture(autouse=True)
def _metrics_folder_restored() -> Iterator[None]:
    """`serve` run in process sets PROMETHEUS_MULTIPROC_DIR for its workers, and monkeypatch undoes
    only a variable it saw: one left set sent every later count in that test process to the
    folder of a server long gone, and service.metrics, cached at its first count, failed every
    count after (test_metrics read no decisions, depending on which tests xdist ran before)."""
    before = os.environ.get(MULTIPROC_ENV)
    yield
    if before is None:
        os.environ.pop(MULTIPROC_ENV, None)
    else:
        os.environ[MULTIPROC_ENV] = before


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy, which is far faster than migrating."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(load_settings({"database_url": f"sqlite:///{path}"}))
    upgrade(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def postgres_schema_url(schema: str) -> str:
    """The test server's URL with its own schema first on the search path."""
    assert PG_URL, "the postgres leg runs only when COPYBANDIT_TEST_DATABASE_URL is set"
    url = sa.engine.make_url(normalize_database_url(PG_URL))
    url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def postgres_schema(schema: str) -> Iterator[tuple[str, sa.Engine]]:
    """A fresh, migrated schema on the test server (URL and engine), dropped afterwards."""
    url = postgres_schema_url(schema)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        upgrade(engine)
        yield url, engine
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_migrated() -> Iterator[str]:
    """A schema of this test run's own, so parallel runs on one server cannot collide."""
    with postgres_schema(f"copybandit_test_{os.getpid()}") as (url, _):
        yield url


def _empty_postgres(url: str) -> None:
    """Every table emptied and every id sequence back at 1, as in a fresh schema. DELETEs, not
    TRUNCATE: TRUNCATE makes each table new files, synced at commit: 32-37 ms a test on a quiet
    machine against 5-6 ms (about 40 s over the suite's 1,261 PostgreSQL tests), and 0.26 s
    against 0.02 s while other work kept the disk busy."""
    with _cleaner(url).begin() as connection:
        # Only this test run's leftovers are at stake, not data anyone keeps.
        connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
        for table in reversed(SQLModel.metadata.sorted_tables):  # those that refer to others first
            connection.exec_driver_sql(f'DELETE FROM "{table.name}"')
        sequences = connection.exec_driver_sql(
            "SELECT sequence_name FROM information_schema.sequences"
            " WHERE sequence_schema = current_schema()"
        ).scalars()
        for sequence in sequences.all():
            connection.exec_driver_sql(f'ALTER SEQUENCE "{sequence}" RESTART')


@functools.cache
def _cleaner(url: str) -> sa.Engine:
    # Pinged: some tests end every connection to the server.
    return sa.create_engine(url, pool_size=1, pool_pre_ping=True)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "copybandit.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_migrated")
    _empty_postgres(url)
    return url


@pytest.fixture
def app_config(database_url: str) -> dict[str, Any]:
    # TTL 0: every decision sees the counters as they are, so tests need not wait for refreshes.
    return {
        "database_url": database_url,
        "env": "test",
        "snapshot_ttl_seconds": 0.0,
        "propensity_samples": 2000,
        # Tests drive the lifecycle themselves; no background ticks.
        "scheduler": "off",
        # Loops of decisions on one key would trip it; tests/test_ratelimit.py turns it on.
        "rate_limit_per_second": 0.0,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Any]:
    app = create_app(app_config)
    app.config["TESTING"] = True
    yield app
    app.extensions["copybandit.engine"].dispose()


@pytest.fixture
def session(app: Any) -> Iterator[Session]:
    with Session(app.extensions["copybandit.engine"], expire_on_commit=False) as session:
        yield session


@pytest.fixture
def client(app: Any) -> FlaskClient:
    return app.test_client()  # type: ignore[no-any-return]


class Api:
    """Readable calls against the test client: `api.post("/v1/decide", json=..., key="serve")`."""

    def __init__(self, client: FlaskClient, session: Session):
        self.client = client
        self.keys = {scope.value: create_key(session=session, scope=scope)[1] for scope in Scope}

    def _headers(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"Authorization": f"Bearer {self.keys.get(key, key)}"}

    def get(self, path: str, *, key: str | None = "admin") -> Any:
        return self.client.get(path, headers=self._headers(key))

    def post(self, path: str, *, json: Any = None, key: str | None = "admin", **kw: Any) -> Any:
        return self.client.post(path, json=json, headers=self._headers(key), **kw)

    def patch(self, path: str, *, json: Any = None, key: str | None = "admin") -> Any:
        return self.client.patch(path, json=json, headers=self._headers(key))

    def create_experiment(self, **overrides: Any) -> dict[str, Any]:
        body = {
            "name": "Spring launch",
            "product": {
                "name": "Aurora kettle",
                "description": "A 1.7 l glass kettle.",
                "price": 49.0,
            },
            "segments": [
                {"key": "tea-lovers", "description": "Brew loose-leaf tea daily."},
                {"key": "busy-parents", "description": "Need hot water fast."},
            ],
            **overrides,
        }
        response = self.post("/v1/experiments", json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def add_variant(
        self, experiment_id: int, segment: str, text: str, origin: str = "manual"
    ) -> dict[str, Any]:
        response = self.post(
            f"/v1/experiments/{experiment_id}/variants",
            json={"segment": segment, "text": text, "origin": origin},
        )
        assert response.status_code == 201, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def decide(self, experiment_id: int, **fields: Any) -> dict[str, Any]:
        response = self.post(
            "/v1/decide", json={"experiment": experiment_id, **fields}, key="serve"
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]


@pytest.fixture
def api(client: FlaskClient, session: Session) -> Api:
    return Api(client, session)


@pytest.fixture
def experiment(api: Api) -> dict[str, Any]:
    """An experiment with two copy variants in each of its two segments."""
    created = api.create_experiment()
    for segment in ("tea-lovers", "busy-parents"):
        api.add_variant(
            created["id"], segment, f"The Aurora kettle: made for {segment}.", origin="control"
        )
        api.add_variant(created["id"], segment, f"Boil faster with the Aurora kettle, {segment}.")
    return api.get(f"/v1/experiments/{created['id']}").get_json()  # type: ignore[no-any-return]


def store_policy_by_hand(session: Session, experiment_id: int, policy: Any) -> None:
    """A stored policy the API would refuse: written by hand, or by another version."""
    session.execute(
        sa.update(Experiment).where(col(Experiment.id) == experiment_id).values(policy=policy)
    )
    session.commit()


def precondition_failed(what: str) -> dict[str, Any]:
    """The 412 of a PATCH whose If-Match names an ETag that `what` ("variant 3") no longer has."""
    return {
        "error": "precondition_failed",
        "message": f"{what} is no longer the one your If-Match names: someone changed it since "
        "you read it; GET it again for its ETag",
        "field": "If-Match",
    }
