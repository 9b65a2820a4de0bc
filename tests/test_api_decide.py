"""POST /v1/decide: the answer, the impression row behind it, stickiness and propensities."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import flask
import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from service import create_app, db
from service.decisions import POLICY_STICKY, POLICY_THOMPSON
from service.models import Assignment, Impression, Segment, Variant
from tests.conftest import PG_URL, Api
from tests.pg_backends import end_backends, named

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX64 = re.compile(r"[0-9a-f]{64}")
MISSING = object()


def _variants(experiment: dict[str, Any], segment: str) -> dict[int, str]:
    """Active variant id -> text, for one segment of an experiment as the API shows it."""
    found = next(s for s in experiment["segments"] if s["key"] == segment)
    return {v["id"]: v["text"] for v in found["variants"] if v["status"] == "active"}


def _impressions_by_variant(session: Session) -> dict[int, int]:
    rows = session.exec(select(Variant.id, Variant.impressions)).all()
    return {variant_id: count for variant_id, count in rows if variant_id}


def _impression_rows(session: Session, ids: Sequence[str]) -> list[Impression]:
    """The rows for `ids`, in the order given, read fresh from the database."""
    query = select(Impression).where(col(Impression.id).in_(ids))
    rows = {row.id: row for row in session.exec(query.execution_options(populate_existing=True))}
    return [rows[i] for i in ids]


def _segment_id(session: Session, experiment_id: int, key: str) -> int:
    query = select(Segment.id).where(Segment.experiment_id == experiment_id, Segment.key == key)
    segment_id = session.exec(query).one()
    assert segment_id is not None
    return segment_id


def _post_decide(api: Any, body: dict[str, Any]) -> Any:
    return api.post("/v1/decide", json=body, key="serve")


def _sticky_experiment(api: Any) -> dict[str, Any]:
    created = api.create_experiment(name="Sticky launch", sticky=True)
    api.add_variant(created["id"], "tea-lovers", "Steep it right.", origin="control")
    api.add_variant(created["id"], "tea-lovers", "Tea at the perfect temperature.")
    api.add_variant(created["id"], "tea-lovers", "Your kettle, your ritual.")
    return api.get(f"/v1/experiments/{created['id']}").get_json()


# --- one decision ------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["tea-lovers", "busy-parents"])
def test_decision_answers_and_records_its_impression(
    api: Any, app: Any, session: Session, experiment: dict[str, Any], segment: str
) -> None:
    user_id = "shopper-4711@example.com"
    before = _impressions_by_variant(session)

    decision = api.decide(experiment["id"], segment=segment, user_id=user_id)

    assert set(decision) == {
        "impression_id",
        "variant_id",
        "text",
        "segment",
        "propensity",
        "policy",
    }
    assert HEX32.fullmatch(decision["impression_id"])
    variants = _variants(experiment, segment)
    assert decision["variant_id"] in variants
    assert decision["text"] == variants[decision["variant_id"]]
    assert decision["segment"] == segment
    assert 0 < decision["propensity"] <= 1

    [row] = _impression_rows(session, [decision["impression_id"]])
    assert row.experiment_id == experiment["id"]
    assert row.segment_id == _segment_id(session, experiment["id"], segment)
    assert row.variant_id == decision["variant_id"]
    assert row.propensity == pytest.approx(decision["propensity"])
    assert row.policy == decision["policy"] == POLICY_THOMPSON
    key = app.extensions["copybandit.settings"].user_id_key
    assert row.user_hash == hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    assert HEX64.fullmatch(row.user_hash or "")
    assert not any(user_id in str(value) for value in row.model_dump().values())

    after = _impressions_by_variant(session)
    assert after == {**before, decision["variant_id"]: before[decision["variant_id"]] + 1}


def test_decision_without_user_id_stores_no_hash(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    decision = api.decide(experiment["id"], segment="tea-lovers")
    [row] = _impression_rows(session, [decision["impression_id"]])
    assert row.user_hash is None


def test_each_decision_adds_exactly_one_impression(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    decisions = [
        api.decide(experiment["id"], segment=("tea-lovers", "busy-parents")[i % 2])
        for i in range(20)
    ]
    ids = [d["impression_id"] for d in decisions]
    assert len(set(ids)) == 20
    rows = _impression_rows(session, ids)
    assert [r.variant_id for r in rows] == [d["variant_id"] for d in decisions]
    counters = _impressions_by_variant(session)
    assert sum(counters.values()) == 20
    assert counters == {v: Counter(r.variant_id for r in rows)[v] for v in counters}


@pytest.mark.parametrize("sticky", [False, True])
def test_an_impression_time_is_stored_as_sqlalchemy_stores_times(
    api: Any, session: Session, experiment: dict[str, Any], sticky: bool
) -> None:
    """Both write paths bind created_at themselves; the stored value must equal the one
    SQLAlchemy binds for the same time (SQLite keeps text: an offset suffix would break equality
    and ordering against every other row's time)."""
    if sticky:
        decision = api.decide(_sticky_experiment(api)["id"], segment="tea-lovers", user_id="u-1")
    else:
        decision = api.decide(experiment["id"], segment="tea-lovers")
    [row] = _impression_rows(session, [decision["impression_id"]])
    same_time = select(sa.func.count()).where(
        col(Impression.id) == row.id, col(Impression.created_at) == row.created_at
    )
    assert session.exec(same_time).one() == 1


def _set_on_every_pooled_connection(engine: sa.Engine, pragma: str) -> None:
    pooled = [engine.raw_connection() for _ in range(engine.pool.checkedin())]  # type: ignore[attr-defined]
    for connection in pooled:
        connection.driver_connection.execute(pragma)  # type: ignore[union-attr]
        connection.close()


def test_a_failed_impression_write_is_503_stores_nothing_and_the_next_one_succeeds(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An app of its own, whose experiment snapshot and key stay cached: the impression write is
    # the only thing the second decision asks of the database, so it is what meets the failure.
    url = sa.engine.make_url(app_config["database_url"])
    if url.get_backend_name() == "postgresql":
        url = url.update_query_dict({"application_name": "decide_under_test"})
    served = create_app(
        {**app_config, "database_url": url.render_as_string(hide_password=False)}
        | {"snapshot_ttl_seconds": 600.0}
    )
    api = Api(served.test_client(), session)
    engine = served.extensions["copybandit.engine"]
    try:
        api.decide(experiment["id"], segment="tea-lovers")
        before = _impressions_by_variant(session)
        stored = session.scalar(sa.select(sa.func.count()).select_from(Impression))
        if engine.dialect.name == "postgresql":
            # The server ends the app's connections: a restart or a proxy's idle cut looks alike.
            end_backends(session, "decide_under_test")
        else:
            _set_on_every_pooled_connection(engine, "PRAGMA query_only = ON")
        session.commit()

        response = api.post(
            "/v1/decide",
            json={"experiment": experiment["id"], "segment": "tea-lovers"},
            key="serve",
        )
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["error"] == "unavailable"
        if engine.dialect.name == "postgresql":
            # It said "the connection is lost": resetting autocommit on the dead connection raised
            # that in place of the error the write met.
            [logged] = [r.getMessage() for r in caplog.records if r.name == "service.errors"]
            assert (
                logged
                == "database unavailable: terminating connection due to administrator command"
            )
        session.expire_all()
        assert _impressions_by_variant(session) == before
        assert session.scalar(sa.select(sa.func.count()).select_from(Impression)) == stored

        if engine.dialect.name == "sqlite":
            # A read-only connection is not a lost one, so the pool kept it: undo the breakage.
            _set_on_every_pooled_connection(engine, "PRAGMA query_only = OFF")
        decision = api.decide(experiment["id"], segment="tea-lovers")
        [row] = _impression_rows(session, [decision["impression_id"]])
        assert row.variant_id == decision["variant_id"]
        assert sum(_impressions_by_variant(session).values()) == sum(before.values()) + 1
    finally:
        engine.dispose()


def test_a_decision_that_cannot_connect_to_the_database_is_503(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The impression's connection is taken from the pool by hand: the driver's own error from a
    fresh connect (the server down, the database renamed away) was answered 500 'internal'."""
    served = create_app(app_config | {"snapshot_ttl_seconds": 600.0})
    api = Api(served.test_client(), session)
    engine = served.extensions["copybandit.engine"]
    try:
        api.decide(experiment["id"], segment="tea-lovers")
        stored = session.scalar(sa.select(sa.func.count()).select_from(Impression))
        engine.dispose()  # the next connection is a fresh connect, and it fails
        refused = engine.dialect.loaded_dbapi.OperationalError("connection refused")
        monkeypatch.setattr(engine.dialect, "connect", _raises(refused))

        response = _post_decide(api, {"experiment": experiment["id"], "segment": "tea-lovers"})

        assert response.status_code == 503, response.get_json()
        assert response.get_json()["error"] == "unavailable"
        monkeypatch.undo()
        assert session.scalar(sa.select(sa.func.count()).select_from(Impression)) == stored
        assert api.decide(experiment["id"], segment="tea-lovers")["impression_id"]
    finally:
        engine.dispose()


def _raises(exc: Exception) -> Any:
    def raising(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return raising


# The request's session reads the snapshot in a transaction while the decision commits on a
# connection of its own: a connection the server drops between the two is a PostgreSQL matter.
@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_decision_stored_before_its_session_lost_the_connection_is_answered(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The session's ROLLBACK at teardown met the dead connection and raised out of the app,
    so gunicorn answered 500 HTML for an impression that had been stored and counted; then it
    logged a traceback for each such request."""

    def drop_the_sessions_connection(_sender: Any, **_: Any) -> None:
        pid = flask.g.db_session.connection().connection.driver_connection.info.backend_pid
        session.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        session.commit()

    with flask.request_finished.connected_to(drop_the_sessions_connection, app):
        response = _post_decide(api, {"experiment": experiment["id"], "segment": "tea-lovers"})

    assert response.status_code == 200, response.get_data()
    [closing] = [r for r in caplog.records if r.name == "service.db"]
    assert closing.getMessage().startswith("closing the request's database session failed: ")
    assert closing.exc_info is None
    decision = response.get_json()
    [row] = _impression_rows(session, [decision["impression_id"]])
    assert row.variant_id == decision["variant_id"]
    assert api.decide(experiment["id"], segment="tea-lovers")["impression_id"]


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_server_restart_between_the_snapshot_read_and_the_write_is_503(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The snapshot is read in the request's session, the impression written on a connection of
    its own: a restart ends both, the write answered 503, and the session's ROLLBACK in the error
    handler then raised on its own dead connection, so the storefront got a 500."""
    # Every decision reloads its snapshot, so the session holds a connection when the write fails.
    served = create_app(
        app_config
        | {
            "database_url": named(app_config["database_url"], "restarted_under_test"),
            "snapshot_ttl_seconds": 0.0,
        }
    )
    api = Api(served.test_client(), session)
    engine = served.extensions["copybandit.engine"]
    cache = served.extensions["copybandit.snapshots"]
    choose = cache.choose

    def restart_then_choose(arms: Any) -> tuple[int, float]:
        end_backends(session, "restarted_under_test")
        session.commit()
        return choose(arms)

    try:
        api.decide(experiment["id"], segment="tea-lovers")
        before = _impressions_by_variant(session)
        monkeypatch.setattr(cache, "choose", restart_then_choose)

        response = _post_decide(api, {"experiment": experiment["id"], "segment": "tea-lovers"})

        assert response.status_code == 503, response.get_data()
        assert response.get_json()["error"] == "unavailable"
        assert response.headers["Retry-After"]
        monkeypatch.undo()
        session.expire_all()
        assert _impressions_by_variant(session) == before
        assert api.decide(experiment["id"], segment="tea-lovers")["impression_id"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
def test_a_read_only_postgresql_database_is_503_and_unhealthy(
    app_config: dict[str, Any], api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """A hot standby a failover left the URL pointing at refuses every write as a read-only
    transaction, which psycopg raises as an InternalError: decisions and events were 500s with a
    traceback each, and /healthz said ok."""
    impression_id = api.decide(experiment["id"], segment="tea-lovers")["impression_id"]
    before = _impressions_by_variant(session)
    url = sa.engine.make_url(app_config["database_url"])
    options = f"{url.query['options']} -cdefault_transaction_read_only=on"
    url = url.update_query_dict({"options": options})
    standby = create_app(app_config | {"database_url": url.render_as_string(hide_password=False)})
    client = Api(standby.test_client(), session)
    try:
        refused = [
            _post_decide(client, {"experiment": experiment["id"], "segment": "tea-lovers"}),
            client.post(
                "/v1/events",
                json={"impression_id": impression_id, "type": "conversion"},
                key="serve",
            ),
            standby.test_client().get("/healthz"),
        ]

        for response in refused:
            assert response.status_code == 503, response.get_data()
            assert response.get_json()["error"] == "unavailable"
            assert response.get_json()["field"] == "database"
            assert response.headers["Retry-After"]
        assert refused[-1].get_json()["message"] == "the database is read-only"
        session.expire_all()
        assert _impressions_by_variant(session) == before
    finally:
        standby.extensions["copybandit.engine"].dispose()


def test_a_decision_behind_a_long_held_lock_is_503_before_gunicorn_would_kill_it(
    app_config: dict[str, Any],
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lock held longer than gunicorn's worker timeout (a maintenance transaction, a migration)
    got the worker killed and 500 HTML: SQLite waited 30 s, gunicorn's default timeout, and
    PostgreSQL as long as the lock was held."""
    monkeypatch.setattr(db, "LOCK_WAIT_SECONDS", 0.2)
    served = create_app(app_config)
    engine = served.extensions["copybandit.engine"]
    api = Api(served.test_client(), session)
    holder = sa.create_engine(app_config["database_url"]).connect()
    if engine.dialect.name == "postgresql":
        holder.execute(sa.text("SELECT id FROM variant FOR UPDATE"))
    else:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    # Only so that a decision that would wait for the lock without a limit ends (answered 200).
    released_by_timer = threading.Timer(30, holder.rollback)
    released_by_timer.start()
    try:
        response = _post_decide(api, {"experiment": experiment["id"], "segment": "tea-lovers"})
    finally:
        released_by_timer.cancel()
        holder.rollback()
        holder.close()
        engine.dispose()

    assert response.status_code == 503, response.get_data()
    assert response.get_json()["error"] == "unavailable"
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    "fields",
    [{}, {"segment": None}, {"segment": "no-such-segment"}, {"segment": "TEA-LOVERS"}],
    ids=["missing", "null", "unknown", "wrong-case"],
)
def test_unknown_or_missing_segment_falls_back_to_the_first(
    api: Any, session: Session, experiment: dict[str, Any], fields: dict[str, Any]
) -> None:
    decision = api.decide(experiment["id"], **fields)
    assert decision["segment"] == "tea-lovers"
    assert decision["variant_id"] in _variants(experiment, "tea-lovers")
    [row] = _impression_rows(session, [decision["impression_id"]])
    assert row.segment_id == _segment_id(session, experiment["id"], "tea-lovers")


# --- refusals ----------------------------------------------------------------------------------


def _assert_refused(response: Any, status: int, error: str, field: str | None) -> None:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["error"] == error
    assert body.get("field") == field
    assert body["message"]


def test_unknown_experiment_is_404(api: Any, session: Session, experiment: dict[str, Any]) -> None:
    response = _post_decide(api, {"experiment": experiment["id"] + 1000, "segment": "tea-lovers"})
    _assert_refused(response, 404, "not_found", "experiment")
    assert sum(_impressions_by_variant(session).values()) == 0


def test_segment_without_active_variants_is_409(api: Any, session: Session) -> None:
    created = api.create_experiment(name="Nothing to serve yet")
    response = _post_decide(api, {"experiment": created["id"], "segment": "busy-parents"})
    _assert_refused(response, 409, "no_active_variant", "segment")
    assert response.get_json()["message"] == (
        "neither segment 'busy-parents' nor the default segment 'tea-lovers' has an active variant"
    )
    assert session.exec(select(sa.func.count()).select_from(Impression)).one() == 0


def test_a_segment_named_with_an_invisible_character_is_quoted_as_people_read_it(
    api: Any, session: Session
) -> None:
    """repr() wrote a no-break space as \\xa0, which a dashboard or log reader sees as four
    characters; the service's other messages spell it as its code point."""
    created = api.create_experiment(name="Nothing to serve yet")
    response = _post_decide(api, {"experiment": created["id"], "segment": "busy\u00a0parents"})
    _assert_refused(response, 409, "no_active_variant", "segment")
    assert response.get_json()["message"] == (
        "neither segment 'busy[U+00A0]parents' nor the default segment 'tea-lovers' has an"
        " active variant"
    )


def test_no_active_variant_without_a_segment_names_no_field(api: Any, session: Session) -> None:
    """The request sent no segment, so no field of it is at fault: the experiment has no copy."""
    created = api.create_experiment(name="Nothing to serve yet")
    response = _post_decide(api, {"experiment": created["id"]})
    _assert_refused(response, 409, "no_active_variant", None)
    assert response.get_json()["message"] == "segment 'tea-lovers' has no active variant"
    assert session.exec(select(sa.func.count()).select_from(Impression)).one() == 0


def test_a_segment_with_no_copy_yet_is_served_the_default_segments(
    api: Any, session: Session
) -> None:
    created = api.create_experiment(name="No copy for busy parents yet")
    control = api.add_variant(created["id"], "tea-lovers", "The Aurora kettle.", origin="control")

    response = _post_decide(api, {"experiment": created["id"], "segment": "busy-parents"})

    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["segment"], response.get_json()["variant_id"]) == (
        "tea-lovers",
        control["id"],
    )
    assert _impressions_by_variant(session) == {control["id"]: 1}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"experiment": "1"}, "experiment"),
        ({"experiment": 1.0}, "experiment"),
        ({"experiment": True}, "experiment"),
        ({"experiment": 0}, "experiment"),
        ({"experiment": -1}, "experiment"),
        ({"experiment": 2**31}, "experiment"),
        ({"experiment": 2**40}, "experiment"),
        ({"experiment": MISSING}, "experiment"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": 42}, "user_id"),
        ({"user_id": "u" * 257}, "user_id"),
        ({"segment": ["tea-lovers"]}, "segment"),
        ({"colour": "red"}, "colour"),
    ],
    ids=[
        "experiment-string",
        "experiment-float",
        "experiment-bool",
        "experiment-zero",
        "experiment-negative",
        "experiment-2**31",
        "experiment-2**40",
        "experiment-missing",
        "user-id-empty",
        "user-id-number",
        "user-id-too-long",
        "segment-list",
        "unknown-field",
    ],
)
def test_bad_bodies_are_400_and_record_nothing(
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    fields: dict[str, Any],
    field: str,
) -> None:
    body = {"experiment": experiment["id"], **fields}
    body = {name: value for name, value in body.items() if value is not MISSING}
    response = _post_decide(api, body)
    _assert_refused(response, 400, "invalid", field)
    assert sum(_impressions_by_variant(session).values()) == 0


# --- stickiness --------------------------------------------------------------------------------


def _decide_many(api: Any, experiment_id: int, user_id: str, times: int) -> list[dict[str, Any]]:
    return [api.decide(experiment_id, segment="tea-lovers", user_id=user_id) for _ in range(times)]


def test_sticky_user_keeps_one_variant(api: Any, session: Session) -> None:
    experiment = _sticky_experiment(api)
    decisions = _decide_many(api, experiment["id"], "loyal-customer", 25)

    assert len({d["variant_id"] for d in decisions}) == 1
    rows = _impression_rows(session, [d["impression_id"] for d in decisions])
    assert [r.policy for r in rows] == [POLICY_THOMPSON] + [POLICY_STICKY] * 24
    assert len({r.propensity for r in rows}) == 1
    # The answer says a repeat is one, and carries the draw's propensity that assigned the user.
    assert [d["policy"] for d in decisions] == [r.policy for r in rows]
    assert {d["propensity"] for d in decisions} == {rows[0].propensity}
    assert len({r.user_hash for r in rows}) == 1
    assignment = session.exec(select(Assignment)).one()
    assert assignment.variant_id == decisions[0]["variant_id"]
    assert "loyal-customer" not in str(assignment.model_dump())


def test_sticky_users_are_spread_over_variants(api: Any) -> None:
    experiment = _sticky_experiment(api)
    first = {
        user: api.decide(experiment["id"], segment="tea-lovers", user_id=user)["variant_id"]
        for user in (f"user-{n}" for n in range(40))
    }
    assert len(set(first.values())) > 1
    again = {
        user: api.decide(experiment["id"], segment="tea-lovers", user_id=user)["variant_id"]
        for user in first
    }
    assert again == first


def _pause(api: Any, session: Session, variant_id: int, via: str) -> None:
    if via == "patch":
        response = api.patch(f"/v1/variants/{variant_id}", json={"status": "paused"})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == "paused"
        return
    # The same change behind the API's back: with a snapshot TTL of 0 the next decision sees it.
    session.execute(sa.update(Variant).where(col(Variant.id) == variant_id).values(status="paused"))
    session.commit()


@pytest.mark.parametrize("via", ["patch", "database"])
def test_sticky_user_moves_when_their_variant_is_paused(
    api: Any, session: Session, via: str
) -> None:
    experiment = _sticky_experiment(api)
    [before] = _decide_many(api, experiment["id"], "moving-customer", 1)

    _pause(api, session, before["variant_id"], via)

    decisions = _decide_many(api, experiment["id"], "moving-customer", 10)
    moved_to = decisions[0]["variant_id"]
    assert moved_to != before["variant_id"]
    assert moved_to in _variants(experiment, "tea-lovers")
    assert {d["variant_id"] for d in decisions} == {moved_to}
    rows = _impression_rows(session, [d["impression_id"] for d in decisions])
    assert [r.policy for r in rows] == [POLICY_THOMPSON] + [POLICY_STICKY] * 9
    assert session.exec(select(Assignment.variant_id)).one() == moved_to


def test_sticky_user_keeps_copy_newer_than_a_workers_snapshot(
    app_config: dict[str, Any], api: Any, session: Session
) -> None:
    """A worker whose snapshot predates the user's variant (added, then served by another worker)
    serves it as a repeat; judged by its snapshot alone, it moved the user off live copy."""
    created = api.create_experiment(name="Sticky launch", sticky=True)
    old = api.add_variant(created["id"], "tea-lovers", "Steep it right.", origin="control")["id"]
    behind = create_app(app_config | {"snapshot_ttl_seconds": 600.0})
    worker = Api(behind.test_client(), session)
    try:
        worker.decide(created["id"], segment="tea-lovers", user_id="early")  # loads `old` alone
        new = api.add_variant(created["id"], "tea-lovers", "Tea at the perfect temperature.")["id"]
        _pause(api, session, old, "patch")
        [first] = _decide_many(api, created["id"], "newcomer", 1)
        assert first["variant_id"] == new
        response = api.patch(f"/v1/variants/{old}", json={"status": "active"})
        assert response.status_code == 200, response.get_json()

        again = worker.decide(created["id"], segment="tea-lovers", user_id="newcomer")

        assert again["variant_id"] == new
        [row] = _impression_rows(session, [again["impression_id"]])
        assert row.policy == POLICY_STICKY
        assert row.propensity == first["propensity"]
        kept = select(Assignment.variant_id).where(Assignment.user_hash == row.user_hash)
        assert session.exec(kept.execution_options(populate_existing=True)).one() == new
    finally:
        behind.extensions["copybandit.engine"].dispose()


def test_non_sticky_user_sees_more_than_one_variant(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    decisions = _decide_many(api, experiment["id"], "curious-customer", 60)
    assert len({d["variant_id"] for d in decisions}) > 1
    rows = _impression_rows(session, [d["impression_id"] for d in decisions])
    assert {r.policy for r in rows} == {POLICY_THOMPSON}
    assert session.exec(select(sa.func.count()).select_from(Assignment)).one() == 0


# --- propensities ------------------------------------------------------------------------------


def test_clear_winner_gets_almost_every_decision_with_high_propensity(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    better, worse = _variants(experiment, "tea-lovers")
    for variant_id, conversions in ((better, 200), (worse, 10)):
        session.execute(
            sa.update(Variant)
            .where(col(Variant.id) == variant_id)
            .values(impressions=1000, conversions=conversions)
        )
    session.commit()

    decisions = [api.decide(experiment["id"], segment="tea-lovers") for _ in range(50)]

    chosen = Counter(d["variant_id"] for d in decisions)
    assert chosen[better] >= 48
    rows = _impression_rows(session, [d["impression_id"] for d in decisions])
    for decision, row in zip(decisions, rows, strict=True):
        assert row.propensity == pytest.approx(decision["propensity"])
        assert 0 < row.propensity <= 1
        if row.variant_id == better:
            assert row.propensity > 0.95
    assert _impressions_by_variant(session)[better] == 1000 + chosen[better]
