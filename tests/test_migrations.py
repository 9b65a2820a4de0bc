"""`alembic upgrade head` on an empty database yields exactly the models' schema."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlmodel import Session, SQLModel, col, select

from service import hourly_traffic, migrate
from service.config import load_settings
from service.db import make_engine
from service.generation_jobs import fail_interrupted_jobs
from service.identity import new_impression_id
from service.models import (
    Assignment,
    Event,
    Experiment,
    GenerationJob,
    Impression,
    Segment,
    UtcDateTime,
    Variant,
    utcnow,
)
from tests.conftest import BACKENDS, postgres_schema_url
from tests.query_plans import statements_sent


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
    migrate.downgrade(empty_engine, "base")
    assert _tables(empty_engine) == set()
    migrate.upgrade(empty_engine)
    assert _diff(empty_engine) == []


def _stored_rows(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as connection:
        return {
            table: connection.exec_driver_sql(f"SELECT {key} FROM {table} ORDER BY 1").all()
            for table, key in [
                ("experiment", "id, name"),
                ("segment", "id, experiment_id, key"),
                ("variant", "id, segment_id, text, impressions, conversions"),
                ("impression", "id, variant_id"),
                ("event", "impression_id, variant_id, type"),
            ]
        }


def _a_stored_variant(engine: sa.Engine) -> dict[str, int]:
    """_a_variant, committed: its experiment's, segment's and own ids, for SQL by hand."""
    with Session(engine) as session:
        variant = _a_variant(session)
        ids = {
            "experiment": variant.experiment_id,
            "segment": variant.segment_id,
            "variant": variant.id,
        }
        session.commit()
    return ids  # type: ignore[return-value]


def _an_assignment_as_the_release_before_writes(
    connection: sa.Connection, ids: dict[str, int]
) -> None:
    """A sticky assignment of _a_stored_variant's, without assignment.last_used_at (0010)."""
    connection.execute(
        sa.text(
            "INSERT INTO assignment"
            " (experiment_id, segment_id, user_hash, variant_id, propensity, created_at)"
            " VALUES (:experiment, :segment, 'u', :variant, 1.0, :now)"
        ).bindparams(sa.bindparam("now", type_=UtcDateTime)),
        {**ids, "now": utcnow()},
    )


def _a_variant(session: Session, **fields: Any) -> Variant:
    """An active variant in a segment of a sticky experiment of its own, flushed."""
    experiment = Experiment(name="e", product_name="p", product_description="d", sticky=True)
    session.add(experiment)
    session.flush()
    segment = Segment(experiment_id=experiment.id, key="s", description="d", position=0)  # type: ignore[arg-type]
    session.add(segment)
    session.flush()
    variant = Variant(
        experiment_id=experiment.id,  # type: ignore[arg-type]
        segment_id=segment.id,  # type: ignore[arg-type]
        text="t",
        origin="manual",
        status="active",
        **fields,
    )
    session.add(variant)
    session.flush()
    return variant


def test_a_populated_database_downgrades_and_upgrades_again(empty_engine: sa.Engine) -> None:
    """Downgrades that drop a column of `variant` rebuild the table on SQLite, which rows in
    other tables refer to; that failed on the foreign keys once one impression existed."""
    migrate.upgrade(empty_engine)
    with Session(empty_engine) as session:
        variant = _a_variant(session, impressions=1, conversions=1)
        shown = Impression(
            id=new_impression_id(),
            experiment_id=variant.experiment_id,
            segment_id=variant.segment_id,
            variant_id=variant.id,  # type: ignore[arg-type]
            propensity=1.0,
            policy="thompson-v1",
        )
        session.add(shown)
        session.flush()
        session.add(Event(impression_id=shown.id, variant_id=variant.id, type="conversion"))  # type: ignore[arg-type]
        session.commit()
    before = _stored_rows(empty_engine)

    migrate.downgrade(empty_engine, "0005")
    assert migrate.mismatch(empty_engine) is not None
    migrate.upgrade(empty_engine)

    assert _stored_rows(empty_engine) == before
    assert _diff(empty_engine) == []
    if empty_engine.dialect.name == "sqlite":
        # The connection that migrated went back to the pool with its foreign keys on again.
        with empty_engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _shown_before(engine: sa.Engine, at: datetime, minutes: list[int]) -> None:
    """Migrated to the head, a variant's impressions the `minutes` before `at`."""
    migrate.upgrade(engine)
    with Session(engine) as session:
        variant = _a_variant(session)
        for before in minutes:
            session.add(
                Impression(
                    id=new_impression_id(),
                    experiment_id=variant.experiment_id,
                    segment_id=variant.segment_id,
                    variant_id=variant.id,  # type: ignore[arg-type]
                    propensity=1.0,
                    policy="thompson",
                    created_at=at - timedelta(minutes=before),
                )
            )
        session.commit()


def test_recent_traffic_goes_with_its_mark_on_a_downgrade_and_is_counted_again_after(
    empty_engine: sa.Engine,
) -> None:
    """0020: down to 0019, the recent counts and their mark go, the hours stay; a server of the
    release before counts the rows after the hourly mark, and back up, the job counts them
    again."""
    at = datetime(2026, 3, 2, 12, 20, tzinfo=UTC)
    _shown_before(empty_engine, at, [90, 12, 8])
    # The hour of the first is counted, and the quarter hour of this one the others are in.
    hourly_traffic.count_hours(engine=empty_engine, now=at)

    def stored() -> tuple[list[tuple[object, ...]], ...]:
        with empty_engine.connect() as connection:
            return tuple(
                connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all()
                for table in ("hourly_traffic", "hourly_traffic_mark")
            )

    hours, marks = stored()
    assert {name for name, _ in marks} == {"hourly_traffic", "recent_traffic", "recent_slices"}

    migrate.downgrade(empty_engine, "0019")
    assert "recent_traffic" not in _tables(empty_engine)
    assert stored() == (hours, [m for m in marks if m[0] == "hourly_traffic"])
    migrate.upgrade(empty_engine)
    assert _diff(empty_engine) == []
    with empty_engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM recent_traffic").scalar() == 0
    assert hourly_traffic.count_hours(engine=empty_engine, now=at).recent_before is not None
    with empty_engine.connect() as connection:
        # A 5-minute slice each.
        assert connection.exec_driver_sql("SELECT count(*) FROM recent_traffic").scalar() == 2


def test_recent_slices_start_afresh_after_a_release_that_did_not_keep_them(
    empty_engine: sa.Engine,
) -> None:
    """0021: down to 0020, the mark of where recent_traffic's slices are whole goes, the rows
    stay for a server of the release before, whose own rows are not slices; back up, the job
    starts the slices afresh, rather than trust them from where they began."""
    at = datetime(2026, 3, 2, 12, 20, tzinfo=UTC)
    _shown_before(empty_engine, at, [40, 30, 12, 8])
    hourly_traffic.count_hours(engine=empty_engine, now=at - timedelta(minutes=20))

    def marks() -> dict[str, datetime | None]:
        with Session(empty_engine) as session:
            found = hourly_traffic.marks(session)
        return {"recent": found.recent, "slices": found.slices}

    assert marks() == {"recent": at - timedelta(minutes=25), "slices": at - timedelta(minutes=80)}
    migrate.downgrade(empty_engine, "0020")
    assert marks() == {"recent": at - timedelta(minutes=25), "slices": None}
    with empty_engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM recent_traffic").scalar() == 2
    migrate.upgrade(empty_engine)
    assert _diff(empty_engine) == []
    hourly_traffic.count_hours(engine=empty_engine, now=at)
    # Afresh from the hour the hourly mark reached, not from 11:00 where they first began.
    assert marks() == {"recent": at - timedelta(minutes=5), "slices": at - timedelta(minutes=20)}


def test_assignments_stored_before_0010_count_as_used_at_the_migration(
    empty_engine: sa.Engine,
) -> None:
    migrate.upgrade(empty_engine, "0009")
    with Session(empty_engine) as session:
        variant = _a_variant(session)
        session.execute(
            sa.text(
                "INSERT INTO assignment"
                " (experiment_id, segment_id, user_hash, variant_id, propensity, created_at)"
                " VALUES (:experiment, :segment, 'u', :variant, 1.0, :created)"
            ).bindparams(sa.bindparam("created", type_=UtcDateTime)),
            {
                "experiment": variant.experiment_id,
                "segment": variant.segment_id,
                "variant": variant.id,
                "created": utcnow() - timedelta(days=400),
            },
        )
        session.commit()
    before = utcnow()
    migrate.upgrade(empty_engine)
    after = utcnow()

    with Session(empty_engine) as session:
        [assignment] = session.exec(select(Assignment)).all()
    assert before <= assignment.last_used_at <= after
    if empty_engine.dialect.name == "sqlite":
        # The text format every other time has, so SQLite compares it with them correctly.
        with empty_engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT last_used_at FROM assignment").scalar()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", stored), stored


def test_jobs_stored_before_0012_count_as_last_written_when_they_last_changed(
    empty_engine: sa.Engine,
) -> None:
    migrate.upgrade(empty_engine, "0011")
    queued_at = utcnow() - timedelta(days=3)
    started_at = queued_at + timedelta(minutes=5)
    finished_at = started_at + timedelta(minutes=2)
    with Session(empty_engine) as session:
        variant = _a_variant(session)
        for status, started, finished in [
            ("queued", None, None),
            ("running", started_at, None),
            ("failed", started_at, finished_at),
        ]:
            session.execute(
                sa.text(
                    "INSERT INTO generation_job (experiment_id, n, status, progress, message,"
                    " created_at, started_at, finished_at)"
                    " VALUES (:experiment, 1, :status, 0, 'm', :created, :started, :finished)"
                ).bindparams(
                    sa.bindparam("created", type_=UtcDateTime),
                    sa.bindparam("started", type_=UtcDateTime),
                    sa.bindparam("finished", type_=UtcDateTime),
                ),
                {
                    "experiment": variant.experiment_id,
                    "status": status,
                    "created": queued_at,
                    "started": started,
                    "finished": finished,
                },
            )
        session.commit()
    migrate.upgrade(empty_engine)

    with Session(empty_engine) as session:
        jobs = session.exec(select(GenerationJob).order_by(col(GenerationJob.id))).all()
    assert [job.updated_at for job in jobs] == [queued_at, started_at, finished_at]


def test_a_job_may_end_cancelled_and_reads_failed_after_a_downgrade(
    empty_engine: sa.Engine,
) -> None:
    migrate.upgrade(empty_engine)
    with Session(empty_engine) as session:
        variant = _a_variant(session)
        job = GenerationJob(
            experiment_id=variant.experiment_id, n=1, status="cancelled", message="cancelled by x"
        )
        session.add(job)
        # Before 0014 the status column's CHECK constraint refused it (IntegrityError).
        session.commit()
        job_id = job.id

    migrate.downgrade(empty_engine, "0013")

    with empty_engine.connect() as connection:
        row = connection.exec_driver_sql(
            f"SELECT status, error FROM generation_job WHERE id = {job_id}"
        ).one()
    assert tuple(row) == ("failed", "cancelled by x")


# status, error, message as 0014 stored them, and the outcome 0015 gives them.
_ENDED_BEFORE_0015 = [
    ("queued", None, "queued", None),
    ("running", None, "segment s: round 1/4, 0/1 accepted", None),
    ("succeeded", None, "done: 2 new variants", "wrote"),
    ("succeeded", None, "done: 0 new variants", "wrote_none"),
    ("failed", "RuntimeError: the model fell over", "failed", "failed"),
    ("failed", None, "failed", "failed"),
    ("failed", "interrupted: the server stopped", "interrupted: the server stopped", "interrupted"),
    ("failed", "PromptTooLong: segment s: 5,201 tokens", "failed", "too_long"),
    ("cancelled", None, "cancelled by x", "cancelled"),
    # Compared exactly, as the backoff compared them: not a prefix in another case.
    ("failed", "Interrupted: by hand", "failed", "failed"),
    ("failed", "prompttoolong: x", "failed", "failed"),
]


def test_jobs_stored_before_0015_are_given_the_outcome_their_text_said(
    empty_engine: sa.Engine,
) -> None:
    """The backoff read a job's error and message text; it reads the outcome column now."""
    migrate.upgrade(empty_engine, "0014")
    ids = _a_stored_variant(empty_engine)
    with empty_engine.begin() as connection:
        for status, error, message, _ in _ENDED_BEFORE_0015:
            connection.execute(
                sa.text(
                    "INSERT INTO generation_job (experiment_id, n, status, progress, message,"
                    " error, created_at, updated_at)"
                    " VALUES (:experiment, 1, :status, 0, :message, :error, :now, :now)"
                ).bindparams(sa.bindparam("now", type_=UtcDateTime)),
                {
                    "experiment": ids["experiment"],
                    "status": status,
                    "message": message,
                    "error": error,
                    "now": utcnow(),
                },
            )

    migrate.upgrade(empty_engine)

    with Session(empty_engine) as session:
        jobs = session.exec(select(GenerationJob).order_by(col(GenerationJob.id))).all()
    assert [job.outcome for job in jobs] == [outcome for *_, outcome in _ENDED_BEFORE_0015]

    migrate.downgrade(empty_engine, "0014")
    assert "outcome" not in _columns_and_indexes(empty_engine)["generation_job"][0]
    with empty_engine.connect() as connection:
        kept = connection.exec_driver_sql(
            "SELECT status, error, message FROM generation_job ORDER BY id"
        ).all()
    assert [tuple(row) for row in kept] == [row[:3] for row in _ENDED_BEFORE_0015]


def test_the_outcome_column_refuses_a_value_no_job_writes(empty_engine: sa.Engine) -> None:
    migrate.upgrade(empty_engine)
    ids = _a_stored_variant(empty_engine)
    with pytest.raises(sa.exc.IntegrityError), empty_engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO generation_job (experiment_id, n, status, progress, message,"
                " outcome, created_at, updated_at)"
                " VALUES (:experiment, 1, 'failed', 0, 'm', 'exploded', :now, :now)"
            ).bindparams(sa.bindparam("now", type_=UtcDateTime)),
            {"experiment": ids["experiment"], "now": utcnow()},
        )


def _columns_and_indexes(engine: sa.Engine) -> dict[str, tuple[set[str], set[str]]]:
    inspector = sa.inspect(engine)
    return {
        table: (
            {column["name"] for column in inspector.get_columns(table)},
            {str(index["name"]) for index in inspector.get_indexes(table)},
        )
        for table in _tables(engine)
    }


def test_a_database_migrated_by_the_first_0011_ends_at_the_same_schema(
    empty_engine: sa.Engine,
) -> None:
    """Revision id 0011 was first an index on impression (c0eb4fa, reverted), then
    generation_job.updated_at. A database migrated by the first read as up to date, and the
    lifecycle then failed on the missing column."""
    migrate.upgrade(empty_engine, "0010")
    with empty_engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE INDEX ix_impression_experiment_id_segment_id"
            " ON impression (experiment_id, segment_id)"
        )
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0011'")
    assert migrate.mismatch(empty_engine) is not None

    migrate.upgrade(empty_engine)

    assert migrate.mismatch(empty_engine) is None
    assert _diff(empty_engine) == []
    migrated = _columns_and_indexes(empty_engine)
    # The same database built afresh, so both sides come from the same backend.
    migrate.downgrade(empty_engine, "base")
    migrate.upgrade(empty_engine)
    assert migrated == _columns_and_indexes(empty_engine)
    # Back at the 0011 the last release knew, with its column, and up again.
    migrate.downgrade(empty_engine, "0011")
    assert "updated_at" in _columns_and_indexes(empty_engine)["generation_job"][0]
    migrate.upgrade(empty_engine)
    assert _diff(empty_engine) == []


def test_a_server_of_the_release_before_inserts_without_the_new_columns(
    empty_engine: sa.Engine,
) -> None:
    """A previous release's server, still running while `copybandit migrate` runs, writes no
    assignment.last_used_at (0010) or generation_job.updated_at: its first sticky decision and
    its generate request were 500s on NOT NULL."""
    migrate.upgrade(empty_engine)
    ids = _a_stored_variant(empty_engine)
    # SQLite fills in whole milliseconds.
    before = utcnow().replace(microsecond=0)
    with empty_engine.begin() as connection:
        _an_assignment_as_the_release_before_writes(connection, ids)
        connection.execute(
            sa.text(
                "INSERT INTO generation_job (experiment_id, n, status, progress, message,"
                " created_at) VALUES (:experiment, 1, 'queued', 0, 'queued', :now)"
            ).bindparams(sa.bindparam("now", type_=UtcDateTime)),
            {"experiment": ids["experiment"], "now": utcnow()},
        )
    after = utcnow()

    with Session(empty_engine) as session:
        [assignment] = session.exec(select(Assignment)).all()
        [job] = session.exec(select(GenerationJob)).all()
    assert before <= assignment.last_used_at <= after
    assert before <= job.updated_at <= after


@pytest.mark.parametrize("stored_at", ["0012", "head"])
def test_times_the_database_fills_in_are_stored_as_every_other_time_is(
    empty_engine: sa.Engine, stored_at: str
) -> None:
    """0012's CURRENT_TIMESTAMP default wrote '2026-12-06 04:52:25' on SQLite, where every other
    time has six decimals. SQLite compares the text, so a lifecycle pass never matched a job a
    server of the release before had queued, to give it up: it stayed queued, its copy on order,
    for good. 0013 rewrites such rows and writes the fraction from then on."""
    migrate.upgrade(empty_engine, stored_at)
    ids = _a_stored_variant(empty_engine)
    # As the release before writes them: without assignment.last_used_at or job.updated_at.
    with empty_engine.begin() as connection:
        _an_assignment_as_the_release_before_writes(connection, ids)
        job_id = connection.execute(
            sa.text(
                "INSERT INTO generation_job (experiment_id, n, status, progress, message,"
                " created_at) VALUES (:experiment, 1, 'queued', 0, 'queued', :now) RETURNING id"
            ).bindparams(sa.bindparam("now", type_=UtcDateTime)),
            {"experiment": ids["experiment"], "now": utcnow()},
        ).scalar_one()
    migrate.upgrade(empty_engine)

    if empty_engine.dialect.name == "sqlite":
        with empty_engine.connect() as connection:
            stored = connection.exec_driver_sql(
                "SELECT last_used_at FROM assignment"
                " UNION ALL SELECT updated_at FROM generation_job"
            ).scalars()
            for text in stored:
                assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", text), text
    with Session(empty_engine) as session:
        gave_up = fail_interrupted_jobs(session=session, now=utcnow() + timedelta(hours=2))
    assert gave_up == [job_id]


def test_checking_the_schema_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every command checks the schema first; a `lifecycle --once` pass logged Alembic's
    "Context impl SQLiteImpl." and "Will assume non-transactional DDL." each time."""
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/quiet.db"}))
    migrate.upgrade(engine)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert migrate.mismatch(engine) is None
    engine.dispose()
    assert [record.getMessage() for record in caplog.records] == []
    # Quiet for the check only: a migration still says what it does.
    assert logging.getLogger("alembic.runtime.migration").level == logging.NOTSET


def test_a_migration_that_leaves_dangling_references_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/dangling.db"}))
    migrate.upgrade(engine, "0007")

    def upgrade_leaving_an_orphan(config: Config, revision: str) -> None:
        config.attributes["connection"].exec_driver_sql(
            "INSERT INTO event (impression_id, variant_id, type, created_at)"
            " VALUES ('gone', 99, 'conversion', '2026-01-01 00:00:00.000000')"
        )

    # One event whose impression and variant are both missing: two dangling references.
    monkeypatch.setattr(migrate.command, "upgrade", upgrade_leaving_an_orphan)
    with pytest.raises(RuntimeError, match="2 more references to rows that do not exist"):
        migrate.upgrade(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM event").scalar() == 0
    engine.dispose()


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


def test_a_migration_that_fails_half_way_changes_nothing_on_sqlite(tmp_path: Path) -> None:
    """0006 adds columns, 0007 rewrites rows; when 0007 fails, 0006's columns must go too, or
    every rerun fails adding them again (a migration killed half-way left exactly that)."""
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/half.db"}))
    migrate.upgrade(engine, "0005")
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.exec_driver_sql(
            "INSERT INTO impression (id, experiment_id, segment_id, variant_id, propensity,"
            " policy, created_at) VALUES ('a', 1, 1, 1, 1.0, 'thompson-v1',"
            " '2026-11-28 08:52:40.690560+00:00')"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON impression BEGIN"
            " SELECT RAISE(ABORT, 'the disk is full'); END"
        )
    with pytest.raises(sa.exc.IntegrityError, match="the disk is full"):
        migrate.upgrade(engine)
    columns = {column["name"] for column in sa.inspect(engine).get_columns("variant")}
    assert "purged_impressions" not in columns
    with engine.connect() as connection:
        assert (
            connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0005"
        )
        connection.exec_driver_sql("DROP TRIGGER refuse")
        connection.commit()
    migrate.upgrade(engine)
    assert migrate.mismatch(engine) is None
    with engine.connect() as connection:
        # The pooled connection is back to the driver's own transactions, foreign keys on.
        assert connection.connection.driver_connection.isolation_level == ""  # type: ignore[union-attr]
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_two_migrations_at_once_both_end_at_the_head(empty_engine: sa.Engine) -> None:
    """Two `copybandit init` on a fresh database both created the tables; the second failed
    (PostgreSQL: duplicate key in pg_type)."""
    import threading

    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def migrate_now() -> None:
        start.wait(timeout=30)
        try:
            migrate.upgrade(empty_engine)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=migrate_now, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a migration never ended"
    assert failures == []
    assert migrate.mismatch(empty_engine) is None and _diff(empty_engine) == []


def test_a_database_at_the_head_is_migrated_without_scanning_its_references(
    tmp_path: Path,
) -> None:
    """`migrate` with nothing to do (every deploy's, every `init`'s) holds SQLite's write lock:
    checking every reference of every impression and event in it, twice, held each decision back
    for the scans (0.2 s each per 2M impressions, growing with the table). A migration still
    checks."""
    engine = make_engine(load_settings({"database_url": f"sqlite:///{tmp_path}/head.db"}))
    migrate.upgrade(engine, "0012")
    with statements_sent(engine) as pending:
        migrate.upgrade(engine)
    with statements_sent(engine) as nothing_pending:
        migrate.upgrade(engine)
    engine.dispose()
    assert [s for s, _ in pending].count("PRAGMA foreign_key_check") == 2
    assert "PRAGMA foreign_key_check" not in [s for s, _ in nothing_pending]
