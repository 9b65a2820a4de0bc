"""POST /v1/events: conversions are stored once per impression and counted exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from service import create_app, db
from service.api import serving
from service.events import EventsOutcome, NotADuplicate, record_events
from service.identity import new_impression_id
from service.models import Event, Impression, Segment, Variant
from service.schemas import MAX_BATCH_EVENTS, EventIn
from tests.conftest import PG_URL, Api
from tests.pg_backends import end_backends, named

UNKNOWN = "f" * 32


def _send(api: Any, body: dict[str, Any]) -> Any:
    return api.post("/v1/events", json=body, key="serve")


def _conversion(impression_id: str, **fields: Any) -> dict[str, Any]:
    return {"impression_id": impression_id, "type": "conversion", **fields}


def _outcome(accepted: int = 0, duplicate: int = 0, rejected: int = 0) -> dict[str, Any]:
    return {"accepted": accepted, "duplicate": duplicate, "rejected": rejected}


def _stored(session: Session) -> tuple[Counter[int], dict[int, int]]:
    """Event rows per variant, and every variant's conversion counter."""
    events = session.exec(select(Event.variant_id)).all()
    counters = session.exec(select(Variant.id, Variant.conversions)).all()
    return Counter(events), {variant_id: n for variant_id, n in counters if variant_id}


def _assert_counters_match_rows(session: Session) -> Counter[int]:
    events, counters = _stored(session)
    assert counters == {variant_id: events[variant_id] for variant_id in counters}
    return events


@pytest.fixture
def decisions(api: Any, experiment: dict[str, Any]) -> list[dict[str, Any]]:
    """Eight impressions spread over both segments of the experiment."""
    segments = ("tea-lovers", "busy-parents")
    return [api.decide(experiment["id"], segment=segments[i % 2]) for i in range(8)]


def _ids(decisions: list[dict[str, Any]]) -> list[str]:
    return [d["impression_id"] for d in decisions]


# --- single events -----------------------------------------------------------------------------


def test_single_conversion_is_stored_and_counted(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    decision = decisions[3]
    response = _send(api, _conversion(decision["impression_id"], value=49.0, event_id="order-1"))

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {**_outcome(accepted=1), "rejections": []}
    event = session.exec(select(Event)).one()
    assert (event.impression_id, event.variant_id) == (
        decision["impression_id"],
        decision["variant_id"],
    )
    assert (event.type, event.value, event.event_id) == ("conversion", 49.0, "order-1")
    assert _assert_counters_match_rows(session) == {decision["variant_id"]: 1}


def test_a_conversion_leaves_the_workers_snapshot_in_place(
    app_config: dict[str, Any], session: Session, experiment: dict[str, Any]
) -> None:
    """Conversions reach the posterior at the snapshot's next reload, as other workers' do:
    dropping it per conversion made the next decision pay for a full reload."""
    served = create_app(app_config | {"snapshot_ttl_seconds": 600.0})
    api = Api(served.test_client(), session)
    cache = served.extensions["copybandit.snapshots"]
    decision = api.decide(experiment["id"], segment="tea-lovers")
    loaded = cache.get(session=session, experiment_id=experiment["id"])

    assert _send(api, _conversion(decision["impression_id"])).get_json()["accepted"] == 1

    assert cache.get(session=session, experiment_id=experiment["id"]) is loaded
    served.extensions["copybandit.engine"].dispose()


def test_a_variant_the_guardrail_pauses_after_a_conversion_is_not_served_again(
    app_config: dict[str, Any], session: Session, experiment: dict[str, Any]
) -> None:
    """The guardrail that a conversion sets off can pause a variant: the worker that paused it
    stops serving it at once, not at its snapshot's next reload."""
    served = create_app(app_config | {"snapshot_ttl_seconds": 600.0})
    api = Api(served.test_client(), session)
    control, challenger = (v["id"] for v in experiment["segments"][0]["variants"])
    decision = api.decide(experiment["id"], segment="tea-lovers")  # the snapshot is loaded
    for variant_id, conversions in ((control, 100), (challenger, 5)):
        session.execute(
            sa.update(Variant)
            .where(col(Variant.id) == variant_id)
            .values(impressions=1_000, conversions=conversions)
        )
    session.commit()

    assert _send(api, _conversion(decision["impression_id"])).get_json()["accepted"] == 1

    assert session.get(Variant, challenger, populate_existing=True).status == "paused"  # type: ignore[union-attr]
    served_ids = {
        api.decide(experiment["id"], segment="tea-lovers")["variant_id"] for _ in range(30)
    }
    assert served_ids == {control}
    served.extensions["copybandit.engine"].dispose()


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_events_stored_before_the_database_went_away_are_answered_as_stored(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The guardrail check that conversions set off runs after their batch has committed. A
    restart between the two made its first read raise out of the request: the storefront got a
    503 for conversions that were stored (its retry read them as duplicates), and a check that
    did fail logged a traceback for a lost connection."""
    served = create_app(
        app_config | {"database_url": named(app_config["database_url"], "events_under_test")}
    )
    api = Api(served.test_client(), session)
    decision = api.decide(experiment["id"], segment="tea-lovers")
    stored_then_restarted = serving.record_events

    def record_then_restart(**kwargs: Any) -> Any:
        outcome = stored_then_restarted(**kwargs)
        end_backends(session, "events_under_test")
        session.commit()
        return outcome

    monkeypatch.setattr(serving, "record_events", record_then_restart)
    try:
        response = _send(api, _conversion(decision["impression_id"], event_id="order-9"))

        assert response.status_code == 200, response.get_data()
        assert response.get_json() == {**_outcome(accepted=1), "rejections": []}
        assert session.exec(select(Event.event_id)).all() == ["order-9"]
        [check] = [r for r in caplog.records if r.name == "service.lifecycle"]
        assert check.getMessage().startswith("guardrail check skipped for segment")
        assert check.exc_info is None
    finally:
        served.extensions["copybandit.engine"].dispose()


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_conversions_wait_for_one_segment_lock_at_most(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The guardrail check after a batch locks each segment it touched. With those locks held by
    another writer, each segment waited the full lock wait: a batch over three segments held its
    worker 30 s, gunicorn's limit, where a request is to wait about 10 s at most."""
    monkeypatch.setattr(db, "LOCK_WAIT_SECONDS", 0.2)
    served = create_app(app_config)
    api = Api(served.test_client(), session)
    decisions = [api.decide(experiment["id"], segment=s) for s in ("tea-lovers", "busy-parents")]
    holder = sa.create_engine(app_config["database_url"]).connect()
    try:
        holder.execute(sa.text("SELECT id FROM segment FOR NO KEY UPDATE"))
        batch = [_conversion(d["impression_id"]) for d in decisions]

        response = _send(api, {"events": batch})

        assert response.status_code == 200, response.get_data()
        assert response.get_json()["accepted"] == 2
        segment_ids = sorted(session.exec(select(Segment.id)).all())
        [check] = [r for r in caplog.records if r.name == "service.lifecycle"]
        assert check.getMessage().startswith(
            f"guardrail check skipped for segments {', '.join(map(str, segment_ids))}: "
        )
    finally:
        holder.rollback()
        holder.close()
        served.extensions["copybandit.engine"].dispose()


def test_an_event_time_is_stored_as_sqlalchemy_stores_times(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    """The batch statement binds created_at itself; the stored value must equal the one SQLAlchemy
    binds for the same time (SQLite keeps text: an offset suffix would break equality and ordering
    against every other row's time)."""
    assert _send(api, _conversion(decisions[0]["impression_id"])).status_code == 200
    event = session.exec(select(Event)).one()
    same_time = select(sa.func.count()).where(
        col(Event.id) == event.id, col(Event.created_at) == event.created_at
    )
    assert session.exec(same_time).one() == 1


@pytest.mark.parametrize(
    "retry",
    [{"event_id": "order-1"}, {"event_id": "order-2"}, {}],
    ids=["same-event-id", "other-event-id", "no-event-id"],
)
def test_an_impression_converts_at_most_once(
    api: Any, session: Session, decisions: list[dict[str, Any]], retry: dict[str, Any]
) -> None:
    impression_id = decisions[0]["impression_id"]
    assert _send(api, _conversion(impression_id, event_id="order-1")).status_code == 200

    response = _send(api, _conversion(impression_id, **retry))

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {**_outcome(duplicate=1), "rejections": []}
    assert _assert_counters_match_rows(session) == {decisions[0]["variant_id"]: 1}


def test_event_id_reused_for_another_impression_is_a_duplicate(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    first, second = _ids(decisions)[:2]
    assert _send(api, _conversion(first, event_id="order-9")).get_json()["accepted"] == 1
    response = _send(api, _conversion(second, event_id="order-9"))
    assert response.get_json() == {**_outcome(duplicate=1), "rejections": []}
    assert session.exec(select(Event.impression_id)).all() == [first]
    _assert_counters_match_rows(session)


def _record(session: Session, impression_id: str, **fields: Any) -> EventsOutcome:
    return record_events(session=session, events=[EventIn(**_conversion(impression_id, **fields))])


def test_a_row_another_unique_key_refuses_is_not_answered_as_a_duplicate(
    session: Session, decisions: list[dict[str, Any]]
) -> None:
    """The INSERT's ON CONFLICT named no key, so a row any unique key refused was counted as a
    duplicate and its conversion lost without a word; only the impression's conversion and the
    event_id make one. Here a unique index of the operator's own refuses it."""
    first, second = _ids(decisions)[:2]
    session.execute(sa.text("CREATE UNIQUE INDEX ix_event_one_value ON event (value)"))
    session.commit()
    try:
        assert _record(session, first, value=7.0).accepted == 1
        # SQLite names the two keys to the INSERT, which fails on any other; PostgreSQL can name
        # one, and checks the rows it skipped.
        with pytest.raises((sa.exc.IntegrityError, NotADuplicate)):
            _record(session, second, value=7.0)
        session.rollback()
        # A true duplicate still is one, by impression and by event_id.
        assert _record(session, first, value=8.0).duplicate == 1
        assert _record(session, first, event_id="order-3").duplicate == 1
        assert _record(session, second, event_id="order-4").accepted == 1
        assert _record(session, decisions[2]["impression_id"], event_id="order-4").duplicate == 1
    finally:
        session.rollback()
        session.execute(sa.text("DROP INDEX ix_event_one_value"))
        session.commit()
    assert sorted(session.exec(select(Event.impression_id)).all()) == sorted([first, second])
    _assert_counters_match_rows(session)


# SQLite numbers a new row past the largest id: it has no sequence to fall behind.
@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_an_id_sequence_behind_the_events_fails_the_batch_rather_than_losing_it(
    session: Session, decisions: list[dict[str, Any]]
) -> None:
    """PostgreSQL: with the event id sequence set back (a copy or restore that did not advance
    it), every new conversion met a stored row's id and was answered as a duplicate."""
    first, second = _ids(decisions)[:2]
    assert _record(session, first).accepted == 1
    session.execute(sa.text("SELECT setval(pg_get_serial_sequence('event', 'id'), 1, false)"))
    session.commit()
    with pytest.raises(NotADuplicate, match="id sequence"):
        _record(session, second)
    session.rollback()
    assert session.exec(select(Event.impression_id)).all() == [first]
    _assert_counters_match_rows(session)


def test_event_ids_are_kept_exactly_as_sent(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    # Stripped, " order-9 " was stored as "order-9" and the second, real conversion was dropped.
    first, second = _ids(decisions)[:2]
    assert _send(api, _conversion(first, event_id=" order-9 ")).get_json()["accepted"] == 1
    response = _send(api, _conversion(second, event_id="order-9"))
    assert response.get_json() == {**_outcome(accepted=1), "rejections": []}
    stored = session.exec(select(Event.event_id).order_by(col(Event.id))).all()
    assert stored == [" order-9 ", "order-9"]


def test_unknown_impression_is_404_and_stores_nothing(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    response = _send(api, _conversion(UNKNOWN, event_id="order-x"))
    assert response.status_code == 404
    body = response.get_json()
    assert (body["error"], body["field"]) == ("not_found", "impression_id")
    assert sum(_assert_counters_match_rows(session).values()) == 0


# --- batches -----------------------------------------------------------------------------------


def test_batch_counts_new_repeated_stored_and_unknown_events(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    a, b, c, d, e = _ids(decisions)[:5]
    assert _send(api, _conversion(a, event_id="ev-a")).get_json()["accepted"] == 1
    batch = [
        _conversion(b, event_id="ev-b", value=10.0),  # 0 new
        _conversion(c),  # 1 new, no event_id
        _conversion(b, event_id="ev-b"),  # 2 repeated in batch (same event)
        _conversion(b, event_id="ev-b2"),  # 3 repeated impression, new event_id
        _conversion(a, event_id="ev-a"),  # 4 stored already
        _conversion(a, event_id="ev-a2"),  # 5 stored impression, new event_id
        _conversion(UNKNOWN, event_id="ev-u"),  # 6 unknown impression
        _conversion(d, event_id="ev-b"),  # 7 event_id used earlier in this batch
        _conversion(e, event_id="ev-e"),  # 8 new
        _conversion("0" * 32),  # 9 unknown impression
    ]

    response = _send(api, {"events": batch})

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert {k: body[k] for k in ("accepted", "duplicate", "rejected")} == _outcome(3, 5, 2)
    assert [(r["index"], r["field"]) for r in body["rejections"]] == [
        (6, "impression_id"),
        (9, "impression_id"),
    ]
    assert sorted(session.exec(select(Event.impression_id)).all()) == sorted([a, b, c, e])
    events = _assert_counters_match_rows(session)
    variant_of = {x["impression_id"]: x["variant_id"] for x in decisions}
    assert events == Counter(variant_of[i] for i in (a, b, c, e))


def test_a_repeat_of_a_refused_event_in_a_batch_is_judged_as_if_sent_alone_after_it(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    a, b, c, d = _ids(decisions)[:4]
    assert _send(api, _conversion(d, event_id="ev-d")).get_json()["accepted"] == 1
    batch = [
        _conversion(UNKNOWN, event_id="order-1"),  # 0 unknown impression
        _conversion(a, event_id="order-1"),  # 1 its event_id was never counted: new
        _conversion("0" * 32),  # 2 unknown impression
        _conversion("0" * 32),  # 3 the same unknown impression: refused again, not a duplicate
        _conversion(d, event_id="order-2"),  # 4 impression converted before
        _conversion(b, event_id="order-2"),  # 5 its event_id was never counted: new
        _conversion(c, event_id="order-1"),  # 6 event_id counted at 1
        _conversion(a),  # 7 impression converted at 1
    ]

    body = _send(api, {"events": batch}).get_json()

    # Before, 1 and 5 were taken for duplicates of 0 and 4: conversions lost, reported as stored.
    assert {k: body[k] for k in ("accepted", "duplicate", "rejected")} == _outcome(2, 3, 3)
    assert [r["index"] for r in body["rejections"]] == [0, 2, 3]
    stored = dict(session.exec(select(Event.impression_id, Event.event_id)).all())
    assert stored == {d: "ev-d", a: "order-1", b: "order-2"}
    _assert_counters_match_rows(session)


def test_replaying_a_whole_batch_counts_nothing_twice(
    api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    batch = {"events": [_conversion(i, event_id=f"ev-{i}") for i in _ids(decisions)]}
    first = _send(api, batch).get_json()
    again = _send(api, batch).get_json()
    assert first == {**_outcome(accepted=8), "rejections": []}
    assert again == {**_outcome(duplicate=8), "rejections": []}
    assert sum(_assert_counters_match_rows(session).values()) == 8


def _insert_impressions(session: Session, experiment_id: int, n: int) -> list[str]:
    """`n` impressions spread over the experiment's active variants, with matching counters."""
    variants = session.exec(
        select(Variant.id, Variant.segment_id).where(Variant.experiment_id == experiment_id)
    ).all()
    ids = [new_impression_id() for _ in range(n)]
    rows = [
        {
            "id": impression_id,
            "experiment_id": experiment_id,
            "segment_id": variants[i % len(variants)][1],
            "variant_id": variants[i % len(variants)][0],
            "propensity": 0.5,
            "policy": "thompson-v1",
        }
        for i, impression_id in enumerate(ids)
    ]
    session.execute(sa.insert(Impression), rows)
    for variant_id, count in Counter(row["variant_id"] for row in rows).items():
        session.execute(
            sa.update(Variant)
            .where(col(Variant.id) == variant_id)
            .values(impressions=Variant.impressions + count)
        )
    session.commit()
    return ids


def test_batch_of_the_maximum_size_is_accepted(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    ids = _insert_impressions(session, experiment["id"], MAX_BATCH_EVENTS)
    assert len(set(ids)) == MAX_BATCH_EVENTS
    response = _send(api, {"events": [_conversion(i, event_id=f"e{n}") for n, i in enumerate(ids)]})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {**_outcome(accepted=MAX_BATCH_EVENTS), "rejections": []}
    events = _assert_counters_match_rows(session)
    assert sum(events.values()) == MAX_BATCH_EVENTS
    assert len(events) == 4


def test_batch_over_the_maximum_is_400_and_stores_nothing(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    ids = _insert_impressions(session, experiment["id"], MAX_BATCH_EVENTS + 1)
    response = _send(api, {"events": [_conversion(i) for i in ids]})
    assert response.status_code == 400
    assert (response.get_json()["error"], response.get_json()["field"]) == ("invalid", "events")
    assert sum(_assert_counters_match_rows(session).values()) == 0


# --- refused bodies ----------------------------------------------------------------------------

IMPRESSION = "<impression>"


def _fill(value: Any, impression_id: str) -> Any:
    """`value` with every IMPRESSION placeholder replaced by a real impression id."""
    if value == IMPRESSION:
        return impression_id
    if isinstance(value, dict):
        return {k: _fill(v, impression_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, impression_id) for v in value]
    return value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"impression_id": IMPRESSION, "type": "click"}, "type"),
        ({"impression_id": IMPRESSION}, "type"),
        ({"impression_id": IMPRESSION, "type": "conversion", "value": -1}, "value"),
        ({"impression_id": IMPRESSION, "type": "conversion", "value": "12.5"}, "value"),
        ({"impression_id": IMPRESSION, "type": "conversion", "value": 1e13}, "value"),
        ({"impression_id": "abc123", "type": "conversion"}, "impression_id"),
        ({"impression_id": "A" * 32, "type": "conversion"}, "impression_id"),
        ({"impression_id": "a" * 33, "type": "conversion"}, "impression_id"),
        ({"impression_id": IMPRESSION, "type": "conversion", "event_id": ""}, "event_id"),
        ({"impression_id": IMPRESSION, "type": "conversion", "event_id": "x" * 129}, "event_id"),
        ({"impression_id": IMPRESSION, "type": "conversion", "event_id": " \u200b "}, "event_id"),
        ({"impression_id": IMPRESSION, "type": "conversion", "event_id": 7}, "event_id"),
        ({"impression_id": IMPRESSION, "type": "conversion", "extra": 1}, "extra"),
        (
            {
                "impression_id": IMPRESSION,
                "type": "conversion",
                "events": [{"impression_id": IMPRESSION, "type": "conversion"}],
            },
            "events",
        ),
        ({"events": []}, "events"),
        ({"events": {"impression_id": IMPRESSION, "type": "conversion"}}, "events"),
        ({"events": [{"impression_id": IMPRESSION, "type": "click"}]}, "events.0.type"),
        (
            {
                "events": [
                    {"impression_id": IMPRESSION, "type": "conversion", "event_id": "ok"},
                    {"impression_id": IMPRESSION, "type": "conversion", "value": -5},
                ]
            },
            "events.1.value",
        ),
        ({}, "impression_id"),
    ],
    ids=[
        "type-click",
        "type-missing",
        "value-negative",
        "value-string",
        "value-too-large",
        "impression-short",
        "impression-uppercase",
        "impression-long",
        "event-id-empty",
        "event-id-too-long",
        "event-id-blank",
        "event-id-number",
        "unknown-field",
        "single-and-batch",
        "batch-empty",
        "batch-not-a-list",
        "batch-type-click",
        "batch-one-bad-of-two",
        "empty-object",
    ],
)
def test_bad_events_are_400_and_change_nothing(
    api: Any,
    session: Session,
    decisions: list[dict[str, Any]],
    body: dict[str, Any],
    field: str,
) -> None:
    # One conversion already stored, so "unchanged" is checked against non-zero counters.
    assert _send(api, _conversion(decisions[1]["impression_id"])).status_code == 200
    before = _stored(session)

    response = _send(api, _fill(body, decisions[0]["impression_id"]))

    assert response.status_code == 400, response.get_json()
    error = response.get_json()
    assert error["error"] == "invalid"
    assert error.get("field") == field
    assert error["message"]
    assert _stored(session) == before


def _one_by_one(
    batch: list[dict[str, Any]], known: set[str], converted: set[str], stored_ids: set[str]
) -> tuple[dict[str, int], list[int]]:
    """What sending the events one at a time, in order, would answer: the reference."""
    outcome, refused = _outcome(), []
    converted, stored_ids = set(converted), set(stored_ids)
    for index, event in enumerate(batch):
        impression_id, event_id = event["impression_id"], event.get("event_id")
        if impression_id not in known:
            outcome["rejected"] += 1
            refused.append(index)
        elif impression_id in converted or event_id in stored_ids:
            outcome["duplicate"] += 1
        else:
            outcome["accepted"] += 1
            converted.add(impression_id)
            if event_id is not None:
                stored_ids.add(event_id)
    return outcome, refused


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_of_tangled_repeats_is_judged_as_if_sent_one_by_one(
    api: Any, session: Session, decisions: list[dict[str, Any]], seed: int
) -> None:
    import random

    rng = random.Random(seed)
    ids = _ids(decisions)
    assert _send(api, _conversion(ids[0], event_id="before")).get_json()["accepted"] == 1
    pool = [*ids, UNKNOWN, "0" * 32]
    batch = [
        _conversion(
            rng.choice(pool),
            **({"event_id": rng.choice(["e1", "e2", "before"])} if rng.random() < 0.7 else {}),
        )
        for _ in range(60)
    ]
    expected, refused = _one_by_one(batch, set(ids), {ids[0]}, {"before"})

    body = _send(api, {"events": batch}).get_json()

    assert {k: body[k] for k in ("accepted", "duplicate", "rejected")} == expected
    assert [r["index"] for r in body["rejections"]] == refused
    _assert_counters_match_rows(session)


def test_repeating_one_event_a_thousand_times_takes_a_few_statements(
    app: Any, api: Any, session: Session, decisions: list[dict[str, Any]]
) -> None:
    """Each repeat of a refused event took a write round of its own: a thousand repeats of one
    unknown impression held SQLite's write lock for 0.2 s a batch, stalling every decision."""
    statements: list[str] = []
    engine = app.extensions["copybandit.engine"]

    def count(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        unknown = _send(api, {"events": [_conversion(UNKNOWN)] * MAX_BATCH_EVENTS}).get_json()
        known = _send(
            api,
            {
                "events": [
                    _conversion(decisions[1]["impression_id"], event_id=f"e{i}")
                    for i in range(MAX_BATCH_EVENTS)
                ]
            },
        ).get_json()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)

    assert {k: unknown[k] for k in ("accepted", "duplicate", "rejected")} == _outcome(
        rejected=MAX_BATCH_EVENTS
    )
    assert {k: known[k] for k in ("accepted", "duplicate", "rejected")} == _outcome(
        accepted=1, duplicate=MAX_BATCH_EVENTS - 1
    )
    assert len(statements) <= 30, statements[:40]
    _assert_counters_match_rows(session)
