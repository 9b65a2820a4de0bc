"""`copybandit copy-database`: a populated SQLite file copied into PostgreSQL, then served there."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlmodel import Session, SQLModel, col

from service import create_app
from service.cli import main
from service.generation_jobs import create_job
from service.hourly_traffic import LAG, count_hours
from service.marketers import list_marketers, open_session
from service.migrate import upgrade
from service.models import Impression
from service.scheduler import claim
from service.transfer import CopyRefused, copy_database
from tests.conftest import BACKENDS, Api, postgres_schema, postgres_schema_url

needs_postgres = pytest.mark.skipif(
    "postgres" not in BACKENDS, reason="copies into PostgreSQL (COPYBANDIT_TEST_DATABASE_URL)"
)
UNICODE = "Grüße 🚀 — 中文 עברית e\u0301 \U0001d11e"
TABLES = [t.name for t in SQLModel.metadata.sorted_tables]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _config(url: str) -> dict[str, Any]:
    return {
        "database_url": url,
        "env": "test",
        "snapshot_ttl_seconds": 0.0,
        "scheduler": "off",
        "rate_limit_per_second": 0.0,
    }


@contextlib.contextmanager
def _api(url: str) -> Iterator[tuple[Api, Session]]:
    app = create_app(_config(url))
    engine = app.extensions["copybandit.engine"]
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield Api(app.test_client(), session), session
    finally:
        engine.dispose()


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite file with a row in every table: `init`'s demo week, and the rest by hand."""
    url = f"sqlite:///{tmp_path}/source.db"
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
    assert run("init").exit_code == 0
    with _api(url) as (api, session):
        sticky = api.create_experiment(name=f"Sticky {UNICODE}", sticky=True)
        api.add_variant(sticky["id"], "tea-lovers", f"Tea, {UNICODE}, in a minute.")
        decided = api.decide(sticky["id"], segment="tea-lovers", user_id="user-1")
        events = {"impression_id": decided["impression_id"], "type": "conversion", "value": 0.1}
        assert api.post("/v1/events", json=events, key="serve").get_json()["accepted"] == 1
        revoked = session.exec(sa.select(sa.text("id")).select_from(sa.table("api_key"))).first()
        assert run("keys", "revoke", revoked[0]).exit_code == 0  # type: ignore[index]
        marketer = list_marketers(session=session)[0]
        open_session(session=session, marketer=marketer, lifetime=timedelta(hours=1))
        create_job(session=session, experiment_id=sticky["id"], segment_key=None, n=2, model="")
        engine = session.get_bind()
        assert isinstance(engine, sa.Engine)
        claim(engine, name="lifecycle", slot=1_700_000_000_000, holder="host-1", ahead_above=2**62)
        # The demo week's hours, counted for the charts, with the mark of how far, and half an
        # hour after it into recent_traffic: as if the pass ran at that half hour of the demo's
        # last whole hour, whose rows (2.4 minutes apart) fill every slice of it. By the newest
        # impression's clock, it found no whole slice of the hour when that impression was in
        # its first 5 minutes (init run from hh:00 to hh:05) and left recent_traffic empty.
        newest = session.execute(sa.select(sa.func.max(col(Impression.created_at)))).scalar_one()
        half_hour = newest.replace(minute=0, second=0, microsecond=0) - timedelta(minutes=30)
        counted = count_hours(engine=engine, now=half_hour + LAG)
        assert counted.hours > 0 and counted.recent_before is not None
        # SQL NULL, where the service's own writes leave JSON's null: both must arrive as they are.
        session.execute(sa.text("UPDATE variant SET audit = NULL WHERE id = 1"))
        session.execute(sa.text("UPDATE experiment SET product_price = 0.1 + 0.2 WHERE id = 1"))
        session.commit()
    return url


@pytest.fixture
def target() -> Iterator[str]:
    with postgres_schema(f"copybandit_copy_{os.getpid()}") as (url, _):
        yield url


def _rows(url: str) -> dict[str, list[Any]]:
    """Every table's rows as the service reads them, with each JSON column's SQL NULLs marked."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            read = {}
            for table in SQLModel.metadata.sorted_tables:
                nulls = [c.is_(None) for c in table.columns if isinstance(c.type, sa.JSON)]
                query = sa.select(*table.columns, *nulls).order_by(*table.primary_key.columns)
                read[table.name] = [tuple(row) for row in connection.execute(query)]
            return read
    finally:
        engine.dispose()


@needs_postgres
def test_every_row_arrives_exactly_and_the_target_serves_new_rows(source: str, target: str) -> None:
    before = _rows(source)
    assert all(before[name] for name in TABLES), {n: len(r) for n, r in before.items()}
    engine = sa.create_engine(source)
    with engine.connect() as connection:
        migrated = set(sa.inspect(connection).get_table_names()) - {"alembic_version"}
    engine.dispose()
    assert migrated == set(TABLES)

    result = run("copy-database", "--to", target, "--batch-size", "1000")

    assert result.exit_code == 0, result.output
    assert "impression: 1,000 of 4,20" in result.stderr
    assert "counters match their rows" in result.stdout
    for table, rows in before.items():
        counted = f"{len(rows):,} row" if len(rows) == 1 else f"{len(rows):,} rows"
        assert re.search(rf"^  {table} +{counted}$", result.stdout, re.MULTILINE), table
    assert any(len(rows) == 1 for rows in before.values())  # "1 rows" had been printed
    after = _rows(target)
    assert after == before
    assert {row[-1] for row in after["variant"]} == {True, False}  # both kinds of null were there

    with _api(target) as (api, session):
        experiment_id = after["experiment"][-1][0]
        decided = api.decide(experiment_id, segment="tea-lovers", user_id="user-2")
        answer = api.post(
            "/v1/events",
            json={"impression_id": decided["impression_id"], "type": "conversion"},
            key="serve",
        ).get_json()
        assert (answer["accepted"], answer["duplicate"]) == (1, 0)
        new_event = session.execute(sa.text("SELECT max(id) FROM event")).scalar_one()
        assert new_event == max(row[0] for row in before["event"]) + 1
        # Each sequence hands out the id after the largest copied.
        for table in ("experiment", "segment", "variant", "generation_job", "lifecycle_event"):
            following = session.execute(
                sa.text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))")
            ).scalar_one()
            assert following == max(row[0] for row in before[table]) + 1, table
    checked = CliRunner().invoke(main, ["check"], env={"COPYBANDIT_DATABASE_URL": target})
    assert checked.exit_code == 0, checked.output


@needs_postgres
def test_one_variants_counters_are_said_in_the_singular(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3c06381 made it "1 variant's counters", where it had said "1 variants' counters", and no
    # test read it.
    url = f"sqlite:///{tmp_path}/one.db"
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
    assert run("migrate").exit_code == 0
    with _api(url) as (api, _):
        created = api.create_experiment()
        api.add_variant(created["id"], "tea-lovers", "The Aurora kettle, boiled in 3 min.")

    result = run("copy-database", "--to", target)

    assert result.exit_code == 0, result.output
    assert "; row counts match the source's, and 1 variant's counters match their rows\n" in (
        result.stdout
    )


@needs_postgres
def test_a_target_that_holds_rows_is_refused_and_left_as_it_was(source: str, target: str) -> None:
    assert run("copy-database", "--to", target).exit_code == 0
    before = _rows(target)

    again = run("copy-database", "--to", target)

    assert again.exit_code == 1
    assert again.stdout == ""
    (line,) = again.stderr.strip().splitlines()[1:]
    assert line.startswith("Error: copy-database: ") and "already holds rows" in line
    assert _rows(target) == before


@contextlib.contextmanager
def _schema(revision: str | None) -> Iterator[str]:
    """A schema with no tables (None), or migrated to `revision`."""
    schema = f"copybandit_copy_partial_{os.getpid()}"
    engine = sa.create_engine(postgres_schema_url(schema))
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        if revision is not None:
            upgrade(engine, revision)
        yield postgres_schema_url(schema)
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@needs_postgres
@pytest.mark.parametrize(("revision", "said"), [(None, "has no tables"), ("0012", "0012")])
def test_a_target_not_at_the_sources_migration_is_refused_in_one_line(
    source: str, revision: str | None, said: str
) -> None:
    with _schema(revision) as url:
        result = run("copy-database", "--to", url)
        assert result.exit_code == 1
        (error,) = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert said in error and "copybandit migrate` first" in error
        assert "Traceback" not in result.output
        if revision is not None:
            assert not any(_counts(url).values())


def _counts(url: str) -> dict[str, int]:
    """Rows in each table there, by name: a schema at an older migration lacks the columns a
    later one added (generation_job.outcome), which _rows, reading the models' columns, names."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                name: connection.execute(
                    sa.select(sa.func.count()).select_from(sa.table(name))
                ).scalar_one()
                for name in sa.inspect(connection).get_table_names()
                if name != "alembic_version"
            }
    finally:
        engine.dispose()


@needs_postgres
def test_a_row_the_target_refuses_leaves_it_empty_and_names_the_table(
    source: str, target: str
) -> None:
    # SQLite keeps a text longer than its column; PostgreSQL refuses it. api_key is copied
    # before most tables, so the rows already written are what must be undone.
    engine = sa.create_engine(source)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE lifecycle_event SET action = printf('%.40c', 'x')")
    engine.dispose()

    result = run("copy-database", "--to", target)

    assert result.exit_code == 1
    assert "Error: copy-database: lifecycle_event: the target refused a row" in result.output
    assert all(not rows for rows in _rows(target).values())


@pytest.mark.parametrize(
    "url", ["notaurl", "mysql://root@db/shop", "sqlite:///elsewhere.db", "postgresql://a@b:x/c"]
)
def test_a_target_that_is_not_a_postgresql_url_is_one_line(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", f"sqlite:///{tmp_path}/source.db")

    result = run("copy-database", "--to", url)

    assert result.exit_code == 2
    assert "Invalid value for --to:" in result.output and "not a PostgreSQL URL" in result.output
    assert not (tmp_path / "source.db").exists()


def test_a_target_url_holding_bytes_that_are_not_utf8_is_one_line_not_showing_it(
    source: str,
) -> None:
    # A password typed in another encoding: Python keeps its bytes as lone surrogates, which the
    # driver could not encode, and the command ended in a traceback.
    result = run("copy-database", "--to", "postgresql://shop:s\udcffcret@127.0.0.1/shop")

    assert result.exit_code == 2
    assert "Invalid value for --to: holds bytes that are not UTF-8" in result.output
    assert "cret" not in result.output


def test_a_target_that_cannot_be_reached_is_one_line_naming_the_option(source: str) -> None:
    result = run("copy-database", "--to", "postgresql://postgres@127.0.0.1:1/nowhere")

    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: --to: postgresql+psycopg://postgres@127.0.0.1:1/nowhere: ")


@needs_postgres
def test_what_the_source_writes_meanwhile_is_left_out_whole(source: str, target: str) -> None:
    before = _rows(source)
    written = []

    def decide_and_convert(table: str, done: int, total: int) -> None:
        # A server on the source, serving while the copy reads the impressions.
        if written:
            return
        with _api(source) as (api, _):
            experiment_id = before["experiment"][-1][0]
            decided = api.decide(experiment_id, segment="tea-lovers", user_id="user-3")
            event = {"impression_id": decided["impression_id"], "type": "conversion"}
            written.append(api.post("/v1/events", json=event, key="serve").get_json())

    reading, writing = sa.create_engine(source), sa.create_engine(target)
    try:
        report = copy_database(
            source=reading, target=writing, batch_size=100, progress=decide_and_convert
        )
    finally:
        reading.dispose()
        writing.dispose()

    assert written[0]["accepted"] == 1
    assert report.counters.ok
    assert _rows(target) == before
    assert len(_rows(source)["event"]) == len(before["event"]) + 1


@needs_postgres
def test_a_postgresql_source_is_copied_too(
    source: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("copy-database", "--to", target).exit_code == 0
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", target)
    with postgres_schema(f"copybandit_copy_again_{os.getpid()}") as (again, _):
        result = run("copy-database", "--to", again)

        assert result.exit_code == 0, result.output
        assert _rows(again) == _rows(source)


@needs_postgres
def test_the_configured_database_as_its_own_target_is_refused(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", target)

    result = run("copy-database", "--to", target)

    assert result.exit_code == 2
    assert "Invalid value for --to: names the configured database itself" in result.output


@needs_postgres
@pytest.mark.parametrize(
    "held",
    [
        # A session left open in a transaction that wrote to the target.
        "LOCK TABLE variant IN ROW EXCLUSIVE MODE",
        # One altering it (an unfinished migration), which the read of its migration waits on.
        "LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE",
    ],
)
def test_a_target_whose_tables_another_session_keeps_locked_is_refused_in_time(
    source: str, target: str, held: str
) -> None:
    # The copy had waited on such a session without end, saying nothing.
    holder = sa.create_engine(target)
    reading, writing = sa.create_engine(source), sa.create_engine(target)
    try:
        with holder.connect() as holding:
            holding.exec_driver_sql(held)
            with pytest.raises(CopyRefused) as refused:
                copy_database(
                    source=reading,
                    target=writing,
                    batch_size=100,
                    progress=lambda *_: None,
                    lock_wait_seconds=0.2,
                )
            holding.rollback()
        assert "another connection kept a table locked for 0.2 s" in str(refused.value)
        assert "stop the copybandit servers on it" in str(refused.value)
        assert all(not rows for rows in _rows(target).values())
        # Once it has ended the copy goes through.
        copy_database(source=reading, target=writing, batch_size=100, progress=lambda *_: None)
        assert _rows(target) == _rows(source)
    finally:
        for engine in (holder, reading, writing):
            engine.dispose()


@needs_postgres
def test_a_target_whose_role_may_not_write_is_one_line_naming_the_target(
    source: str, target: str
) -> None:
    # Said as "database: permission denied ...", which reads as the configured database's, the
    # source's (a SQLite file, which has no role to grant anything to).
    role = f"copybandit_copy_reader_{os.getpid()}"
    admin = sa.create_engine(target)
    with admin.begin() as connection:
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        connection.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    as_role = sa.engine.make_url(target).set(username=role, password="pw")
    try:
        result = run("copy-database", "--to", as_role.render_as_string(hide_password=False))
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert re.fullmatch(
        rf"copying .*\nError: --to: postgresql\+psycopg://{role}:\*\*\*@[^ ]+: permission denied "
        r"for table api_key; the database role needs privileges on copybandit's tables .*\n",
        result.stderr,
    ), result.stderr
    assert all(not rows for rows in _rows(target).values())
