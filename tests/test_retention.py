"""`copybandit check` and `copybandit purge`: counters recount exactly, before and after a purge."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import Session, select

from service.cli import main
from service.consistency import check_counters
from service.db import make_engine
from service.identity import hash_user_id
from service.models import Assignment, Event, Impression, UtcDateTime, Variant, utcnow
from service.reports import experiment_report
from service.retention import PurgeReport, parse_age, purge
from tests.lock_waits import wait_until_someone_waits_for_a_lock


def _traffic(api: Any, experiment_id: int, n: int, convert_every: int) -> list[str]:
    ids = []
    for i in range(n):
        impression = api.decide(experiment_id, segment="tea-lovers")["impression_id"]
        ids.append(impression)
        if i % convert_every == 0:
            response = api.post(
                "/v1/events",
                json={"impression_id": impression, "type": "conversion"},
                key="serve",
            )
            assert response.status_code == 200
    return ids


def _age(session: Session, impression_ids: list[str], *, days: int) -> None:
    """Move these impressions and their events `days` into the past."""
    when = utcnow() - timedelta(days=days)
    for table, key in ((Impression, "id"), (Event, "impression_id")):
        column = getattr(table, key)
        session.execute(sa.update(table).where(column.in_(impression_ids)).values(created_at=when))
    session.commit()


def _counters(session: Session) -> dict[int, tuple[int, int]]:
    session.expire_all()
    return {v.id: (v.impressions, v.conversions) for v in session.exec(select(Variant))}  # type: ignore[misc]


def test_check_passes_on_real_traffic_and_names_a_tampered_counter(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    _traffic(api, experiment["id"], 30, convert_every=4)
    report = check_counters(session=session)
    assert report.ok and report.variants == 4

    variant_id = experiment["segments"][0]["variants"][0]["id"]
    session.execute(
        sa.update(Variant)
        .where(Variant.id == variant_id)
        .values(conversions=Variant.conversions + 2)  # type: ignore[arg-type]
    )
    session.commit()
    report = check_counters(session=session)
    assert not report.ok
    [mismatch] = report.mismatches
    assert (mismatch.variant_id, mismatch.counter) == (variant_id, "conversions")
    assert mismatch.stored == mismatch.recounted + 2


def test_purge_deletes_old_rows_in_batches_and_keeps_counters_and_report_exact(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    old = _traffic(api, experiment["id"], 40, convert_every=3)
    young = _traffic(api, experiment["id"], 10, convert_every=2)
    _age(session, old, days=100)
    before = _counters(session)
    report_before = experiment_report(session=session, experiment_id=experiment["id"])
    batches = []

    result = purge(
        engine=app.extensions["copybandit.engine"],
        older_than=timedelta(days=90),
        batch_size=7,
        progress=lambda r: batches.append((r.events, r.impressions)),
    )

    assert (result.events, result.impressions) == (14, 40)  # 40 old, one in three converted
    # 6 batches of at most 7 impressions, each with its conversions.
    assert batches == [(3, 7), (5, 14), (7, 21), (10, 28), (12, 35), (14, 40)]
    left = set(session.exec(select(Impression.id)).all())
    assert left == set(young)
    assert _counters(session) == before
    assert check_counters(session=session).ok
    report_after = experiment_report(session=session, experiment_id=experiment["id"])
    assert [
        (v.variant_id, v.impressions, v.conversions, v.posterior_mean)
        for s in report_after.segments
        for v in s.variants
    ] == [
        (v.variant_id, v.impressions, v.conversions, v.posterior_mean)
        for s in report_before.segments
        for v in s.variants
    ]
    # A second run finds nothing more to delete.
    again = purge(engine=app.extensions["copybandit.engine"], older_than=timedelta(days=90))
    assert (again.events, again.impressions) == (0, 0)


def test_an_old_impression_with_a_young_conversion_is_kept_until_the_conversion_ages(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    [impression] = _traffic(api, experiment["id"], 1, convert_every=1)
    session.execute(
        sa.update(Impression)
        .where(Impression.id == impression)  # type: ignore[arg-type]
        .values(created_at=utcnow() - timedelta(days=100))
    )
    session.commit()
    engine = app.extensions["copybandit.engine"]
    assert (purge(engine=engine, older_than=timedelta(days=90)).impressions) == 0
    _age(session, [impression], days=100)
    result = purge(engine=engine, older_than=timedelta(days=90))
    assert (result.events, result.impressions) == (1, 1)
    assert check_counters(session=session).ok


def _orders(api: Any, experiment_id: int, n: int) -> tuple[list[str], list[dict[str, str]]]:
    """`n` impressions, every other one converted with an event_id: the events a queue that
    delivers at least once may send again."""
    ids, events = [], []
    for i in range(n):
        impression = api.decide(experiment_id, segment="tea-lovers")["impression_id"]
        ids.append(impression)
        if i % 2 == 0:
            event = {"impression_id": impression, "type": "conversion", "event_id": f"order-{i}"}
            assert api.post("/v1/events", json=event, key="serve").status_code == 200
            events.append(event)
    return ids, events


def _replay(api: Any, events: list[dict[str, str]]) -> dict[str, Any]:
    response = api.post("/v1/events", json={"events": events}, key="serve")
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


class _Stopped(Exception):
    """A purge stopped between two batches (killed, or its host restarted)."""


def test_replayed_conversions_count_nothing_even_after_a_purge_stopped_half_way(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    old, events = _orders(api, experiment["id"], 12)
    _age(session, old, days=100)
    before = _counters(session)
    engine = app.extensions["copybandit.engine"]

    def stop(_report: PurgeReport) -> None:
        raise _Stopped

    with pytest.raises(_Stopped):
        purge(engine=engine, older_than=timedelta(days=90), batch_size=4, progress=stop)
    # Events were purged in batches before impressions: a replay found the impression without its
    # event and counted again (4 of the 6 here), so a variant could convert more than it showed.
    replayed = _replay(api, events)
    assert replayed["accepted"] == 0 and replayed["duplicate"] + replayed["rejected"] == 6
    assert _counters(session) == before
    assert check_counters(session=session).ok

    result = purge(engine=engine, older_than=timedelta(days=90), batch_size=4)
    assert result.impressions + 4 == 12
    replayed = _replay(api, events)
    # Every impression is gone: each replay names an unknown impression.
    assert (replayed["accepted"], replayed["duplicate"], replayed["rejected"]) == (0, 0, 6)
    assert {r["reason"] for r in replayed["rejections"]} == {"unknown impression"}
    single = api.post("/v1/events", json=events[0], key="serve")
    assert single.status_code == 404 and single.get_json()["field"] == "impression_id"
    assert _counters(session) == before
    assert check_counters(session=session).ok


def test_an_old_conversion_of_a_young_impression_waits_for_its_impression(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """Hosts whose clocks disagree: a conversion stamped before the cutoff, its impression after."""
    [impression], [event] = _orders(api, experiment["id"], 1)
    session.execute(
        sa.update(Event)
        .where(Event.impression_id == impression)  # type: ignore[arg-type]
        .values(created_at=utcnow() - timedelta(days=100))
    )
    session.commit()
    before = _counters(session)

    result = purge(engine=app.extensions["copybandit.engine"], older_than=timedelta(days=90))

    # The event went, its impression stayed, and replays counted again until the impression aged.
    assert (result.events, result.impressions) == (0, 0)
    assert _replay(api, [event])["duplicate"] == 1
    assert _counters(session) == before
    assert check_counters(session=session).ok


def test_a_conversion_replayed_while_the_purge_deletes_it_is_refused(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    old, events = _orders(api, experiment["id"], 1)
    _age(session, old, days=100)
    before = _counters(session)
    engine, watcher = app.extensions["copybandit.engine"], _second_engine(app)
    answers: list[Any] = []
    threads: list[threading.Thread] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _replay_meanwhile(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # The batch has deleted the event, not yet the impression, and has not committed.
        if statement.lstrip().startswith("DELETE FROM impression") and not threads:
            threads.append(
                threading.Thread(
                    target=lambda: answers.append(
                        api.post("/v1/events", json=events[0], key="serve")
                    )
                )
            )
            threads[0].start()
            wait_until_someone_waits_for_a_lock(watcher)

    try:
        result = purge(engine=engine, older_than=timedelta(days=90))
    finally:
        sa.event.remove(engine, "before_cursor_execute", _replay_meanwhile)
    [replaying] = threads
    replaying.join(timeout=60)
    watcher.dispose()

    assert (result.events, result.impressions) == (1, 1)
    [answer] = answers
    assert answer.status_code == 404, answer.get_json()
    assert _counters(session) == before
    assert check_counters(session=session).ok


def _sticky_experiment(api: Any) -> int:
    created = api.create_experiment(name="Sticky launch", sticky=True)
    for text in ("Steep it right.", "Tea at the perfect temperature."):
        api.add_variant(created["id"], "tea-lovers", text)
    return created["id"]  # type: ignore[no-any-return]


def _hash(app: Any, user_id: str) -> str:
    return hash_user_id(user_id, key=app.extensions["copybandit.settings"].user_id_key)


def _last_used(session: Session) -> dict[str, Any]:
    """Each assignment's last use, by the user's hash."""
    session.expire_all()
    return {a.user_hash: a.last_used_at for a in session.exec(select(Assignment))}


def _set_last_used(session: Session, user_hash: str, when: Any) -> None:
    session.execute(
        sa.update(Assignment).where(Assignment.user_hash == user_hash).values(last_used_at=when)  # type: ignore[arg-type]
    )
    session.commit()


def test_purge_deletes_assignments_unused_for_longer_than_the_age(
    app: Any, api: Any, session: Session
) -> None:
    experiment_id = _sticky_experiment(api)
    gone, late, recent = (_hash(app, user) for user in ("gone", "noted-a-day-late", "recent"))
    for user in ("gone", "noted-a-day-late", "recent"):
        api.decide(experiment_id, segment="tea-lovers", user_id=user)
    now = utcnow()
    _set_last_used(session, gone, now - timedelta(days=92))
    # Noted before the cutoff, but less than a day before: a use since may not have been noted.
    _set_last_used(session, late, now - timedelta(days=90, hours=12))
    batches: list[int] = []

    result = purge(
        engine=app.extensions["copybandit.engine"],
        older_than=timedelta(days=90),
        batch_size=1,
        now=now,
        progress=lambda r: batches.append(r.assignments),
    )

    assert result.assignments == 1 and batches == [1]
    assert set(_last_used(session)) == {late, recent}
    assert check_counters(session=session).ok


def test_a_sticky_repeat_notes_its_use_once_a_day_and_keeps_its_assignment_past_a_purge(
    app: Any, api: Any, session: Session
) -> None:
    experiment_id = _sticky_experiment(api)
    first = api.decide(experiment_id, segment="tea-lovers", user_id="returning")
    user_hash = _hash(app, "returning")
    _set_last_used(session, user_hash, utcnow() - timedelta(days=100))

    again = api.decide(experiment_id, segment="tea-lovers", user_id="returning")
    noted = _last_used(session)[user_hash]
    assert utcnow() - noted < timedelta(minutes=5)
    # Within the day a repeat writes nothing.
    api.decide(experiment_id, segment="tea-lovers", user_id="returning")
    assert _last_used(session)[user_hash] == noted

    result = purge(engine=app.extensions["copybandit.engine"], older_than=timedelta(days=90))
    assert result.assignments == 0
    last = api.decide(experiment_id, segment="tea-lovers", user_id="returning")
    assert first["variant_id"] == again["variant_id"] == last["variant_id"]


def _second_engine(app: Any) -> sa.Engine:
    """Another process's view of the same database: its own pool and connections."""
    return make_engine(app.extensions["copybandit.settings"])


def test_a_purge_whose_rows_another_purge_deleted_first_counts_only_what_it_deleted(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    old = _traffic(api, experiment["id"], 30, convert_every=3)
    _age(session, old, days=100)
    before = _counters(session)
    engine, other = app.extensions["copybandit.engine"], _second_engine(app)
    others: list[PurgeReport] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _the_other_purge_goes_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Between this purge's SELECT of a batch and its DELETE: an overlapping cron run.
        if statement.lstrip().upper().startswith("DELETE") and not others:
            others.append(purge(engine=other, older_than=timedelta(days=90)))

    mine = purge(engine=engine, older_than=timedelta(days=90), batch_size=4)
    other.dispose()

    [theirs] = others
    assert (mine.events + theirs.events, mine.impressions + theirs.impressions) == (10, 30)
    assert (theirs.events, theirs.impressions) == (10, 30) and (mine.events, mine.impressions) == (
        0,
        0,
    )
    assert _counters(session) == before
    assert check_counters(session=session).ok


def test_a_batch_is_chosen_and_deleted_by_one_statement(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """A SELECT of a batch's ids and then DELETEs naming them, 900 at a time, took a year's
    backlog of 1.52M impressions 50-54 s on PostgreSQL (26-31 s SQLite); one DELETE choosing its
    own rows, 38-43 s (18-21 s)."""
    old = _traffic(api, experiment["id"], 12, convert_every=3)
    _age(session, old, days=100)
    engine = app.extensions["copybandit.engine"]
    reads: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM impression" in statement or "FROM event" in statement:
            reads.append(statement.lstrip().split()[0].upper())

    try:
        result = purge(engine=engine, older_than=timedelta(days=90), batch_size=5)
    finally:
        sa.event.remove(engine, "before_cursor_execute", _note)
    assert (result.events, result.impressions) == (4, 12)
    # 3 batches, each deleting events and then their impressions, and the last, empty one, which
    # looks once more whether another purge took it or nothing is left.
    assert reads == ["DELETE", "DELETE"] * 4 + ["SELECT"], reads


def test_a_conversion_committed_while_the_purge_deletes_its_impression_keeps_it(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    old = [api.decide(experiment["id"])["impression_id"] for _ in range(5)]
    _age(session, old, days=100)
    late = session.get(Impression, old[0])
    assert late is not None
    converter = _second_engine(app)
    purged: list[PurgeReport] = []
    with converter.connect() as in_flight:
        # A conversion not yet committed when the purge looks: it sees no event for the row.
        in_flight.execute(
            sa.insert(Event).values(
                impression_id=late.id,
                variant_id=late.variant_id,
                type="conversion",
                created_at=utcnow(),
            )
        )
        in_flight.execute(
            sa.update(Variant)
            .where(Variant.id == late.variant_id)  # type: ignore[arg-type]
            .values(conversions=Variant.conversions + 1)  # type: ignore[operator]
        )
        purging = threading.Thread(
            target=lambda: purged.append(
                purge(engine=app.extensions["copybandit.engine"], older_than=timedelta(days=90))
            )
        )
        purging.start()
        wait_until_someone_waits_for_a_lock(converter)
        in_flight.commit()
    purging.join(timeout=60)
    converter.dispose()

    # Before, the purge failed on the event's foreign key (exit 1), on both databases.
    assert [p.impressions for p in purged] == [4]
    assert set(session.exec(select(Impression.id)).all()) == {late.id}
    assert check_counters(session=session).ok


def test_a_conversion_for_an_impression_the_purge_is_deleting_is_refused_not_a_500(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    [old] = [api.decide(experiment["id"])["impression_id"]]
    _age(session, [old], days=100)
    purger = _second_engine(app)
    answers: list[Any] = []
    with purger.connect() as in_flight:
        # The purge's DELETE, not yet committed when the conversion's INSERT looks.
        in_flight.execute(sa.delete(Impression).where(Impression.id == old))  # type: ignore[arg-type]
        reporting = threading.Thread(
            target=lambda: answers.append(
                api.post(
                    "/v1/events", json={"impression_id": old, "type": "conversion"}, key="serve"
                )
            )
        )
        reporting.start()
        wait_until_someone_waits_for_a_lock(purger)
        in_flight.commit()
    reporting.join(timeout=60)
    purger.dispose()

    # PostgreSQL failed the INSERT on the event's foreign key: a 500 for a client's retry.
    [answer] = answers
    assert answer.status_code == 404, answer.get_json()
    assert answer.get_json()["field"] == "impression_id"
    assert session.exec(select(Event)).all() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30))],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "90", "-1d", "1w", "1.5d", "d", "\u0669\u0660d", "90 d"])
def test_parse_age_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"^must look like 90d, 12h or 30m"):
        parse_age(text)


@pytest.mark.parametrize("text", ["0d", "00h", "0m"])
def test_parse_age_refuses_zero_saying_so(text: str) -> None:
    # It said "must look like 90d, 12h or 30m" of an age that looked just like that.
    with pytest.raises(ValueError, match=r"^must be more than 0"):
        parse_age(text)


@pytest.mark.parametrize(
    "text",
    ["999999d", "9999999d", "9999999999d", "99999999999h", "999999999999h", "9" * 5000 + "h"],
)
def test_parse_age_refuses_ages_before_year_one(text: str) -> None:
    # Seven digits or more were told the format was wrong, and were not; then 10 to 12 digits of
    # days or hours overflowed timedelta (OverflowError, a traceback).
    with pytest.raises(ValueError, match=r"^must be at most 36500d"):
        parse_age(text)
    assert parse_age("36500d") == timedelta(days=36_500)
    # Seven digits of minutes are under two years: refused before as not looking like 30m.
    assert parse_age("1000000m") == timedelta(minutes=1_000_000)
    assert parse_age("052560000m") == timedelta(days=36_500)


def test_cli_purge_counts_one_of_each_in_the_singular(
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It said "purged 1 events and 1 impressions".
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)
    _age(session, _traffic(api, experiment["id"], 1, convert_every=1), days=10)
    purged = CliRunner().invoke(main, ["purge", "--older-than", "7d"])
    assert purged.exit_code == 0, purged.output
    progress, done = purged.output.splitlines()
    assert progress == "  deleted 1 event, 1 impression, 0 sticky assignments so far"
    assert done.startswith("purged 1 event and 1 impression older than "), done


def test_cli_check_and_purge(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)
    old = _traffic(api, experiment["id"], 12, convert_every=5)
    _age(session, old, days=10)
    runner = CliRunner()
    checked = runner.invoke(main, ["check"])
    assert checked.exit_code == 0 and "every counter matches" in checked.output
    purged = runner.invoke(main, ["purge", "--older-than", "7d", "--batch-size", "5"])
    assert purged.exit_code == 0, purged.output
    assert "purged 3 events and 12 impressions" in purged.output
    assert "and 0 sticky assignments unused since a day before that" in purged.output
    assert runner.invoke(main, ["check"]).exit_code == 0
    refused = runner.invoke(main, ["purge", "--older-than", "soon"])
    assert refused.exit_code == 2 and "90d, 12h or 30m" in refused.output

    session.execute(sa.update(Variant).values(impressions=Variant.impressions + 1))
    session.commit()
    broken = runner.invoke(main, ["check"])
    assert broken.exit_code == 1 and "mismatched counter" in broken.output


def test_a_batch_larger_than_a_statement_may_bind_is_purged(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """Each id a DELETE names is a bound parameter: `--batch-size 100000` on PostgreSQL (at most
    65,535 a statement) ended in the driver's error, as would the default 5,000 on a SQLite built
    with SQLITE_MAX_VARIABLE_NUMBER=999, which this SQLite is made to act as. (A SQLite before
    3.32, where 999 was the default, cannot run copybandit: its DELETE ... RETURNING needs 3.35.)"""
    engine = app.extensions["copybandit.engine"]
    if engine.dialect.name == "sqlite":
        limit = 999

        @sa.event.listens_for(engine, "connect")
        def _old_sqlite(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)

        engine.dispose()
    else:
        limit = 65_535
    variant = session.get(Variant, experiment["segments"][0]["variants"][0]["id"])
    assert variant is not None
    rows = limit + 1
    session.execute(
        sa.text(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows)"
            " INSERT INTO impression"
            " (id, experiment_id, segment_id, variant_id, propensity, policy, created_at)"
            " SELECT 'old-' || i, :experiment, :segment, :variant, 0.5, 'thompson-v1', :when"
            " FROM n"
        ).bindparams(sa.bindparam("when", type_=UtcDateTime)),
        {
            "rows": rows,
            "experiment": variant.experiment_id,
            "segment": variant.segment_id,
            "variant": variant.id,
            "when": utcnow() - timedelta(days=100),
        },
    )
    session.execute(
        sa.update(Variant).where(Variant.id == variant.id).values(impressions=rows)  # type: ignore[arg-type]
    )
    session.commit()

    result = purge(engine=engine, older_than=timedelta(days=90), batch_size=rows)

    assert result.impressions == rows
    assert session.exec(select(sa.func.count()).select_from(Impression)).one() == 0
    assert check_counters(session=session).ok
