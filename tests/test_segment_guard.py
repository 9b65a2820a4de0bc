"""A segment keeps an active variant when status changes race, and the lifecycle locks variant
rows in id order, as event batches do (opposite orders deadlock on PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from service import lifecycle
from service.db import make_engine
from service.errors import Conflict
from service.experiments import add_variant, update_policy, update_variant
from service.lifecycle import run_lifecycle
from service.models import Experiment, GenerationJob, Segment, Variant, VariantStatus
from service.policy import PolicyChanges
from service.schemas import VariantCreate, VariantPatch
from service.segment_guard import lock_row, lock_segment
from tests.conftest import PG_URL
from tests.lock_waits import someone_waits_for_a_lock
from tests.test_lifecycle_run import set_counts

PAUSE = VariantPatch(status=VariantStatus.PAUSED)


def _active(session: Session, segment_id: int) -> list[int]:
    session.expire_all()
    query = select(Variant.id).where(
        Variant.segment_id == segment_id, Variant.status == VariantStatus.ACTIVE
    )
    return list(session.exec(query))  # type: ignore[arg-type]


def _blocked_or_done(engine: sa.Engine, thread: threading.Thread) -> None:
    """Until the thread has finished, or (PostgreSQL) waits for a lock this test's thread holds."""
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        if engine.dialect.name == "postgresql" and someone_waits_for_a_lock(engine):
            return
        thread.join(0.01)
    assert time.monotonic() < deadline, "the other pause neither finished nor waited"


def test_pausing_the_last_two_active_variants_at_once_leaves_one_active(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    segment = experiment["segments"][0]
    first, second = (v["id"] for v in segment["variants"])
    segment_id = session.get(Variant, first).segment_id  # type: ignore[union-attr]
    engine = app.extensions["copybandit.engine"]
    elsewhere = make_engine(app.extensions["copybandit.settings"])
    outcomes: dict[int, str] = {}

    def pause(variant_id: int, on: sa.Engine) -> None:
        with Session(on, expire_on_commit=False) as own:
            try:
                update_variant(session=own, variant_id=variant_id, patch=PAUSE)
                outcomes[variant_id] = "paused"
            except Conflict as exc:
                outcomes[variant_id] = exc.message

    # After this request found two active variants, before its UPDATE: the other request.
    other = _interleave(engine, elsewhere, "UPDATE VARIANT", lambda: pause(second, elsewhere))
    pause(first, engine)
    other.join(timeout=60)
    elsewhere.dispose()

    # Before, both answered 200 and decisions for the segment answered 409 from then on.
    assert sorted(outcomes.values()) == sorted(
        ["paused", "this is the segment's last active variant; activate another first"]
    ), outcomes
    assert len(_active(session, segment_id)) == 1


def test_the_lifecycle_changes_variant_rows_in_id_order(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    segment = experiment["segments"][0]
    by_origin = {v["origin"]: v["id"] for v in segment["variants"]}
    control, manual = by_origin["control"], by_origin["manual"]
    # Two clear losers, both better than the control (no guardrail pause), so both are retired;
    # the worse one has the higher id, and retirements are planned worst first.
    losers = [
        api.add_variant(experiment["id"], segment["key"], f"Loser {n}.")["id"] for n in (1, 2)
    ]
    counts = {
        control: (20_000, 1000),
        manual: (20_000, 2100),
        losers[0]: (20_000, 1940),
        losers[1]: (20_000, 1880),
    }
    set_counts(session, counts)
    api.patch(f"/v1/experiments/{experiment['id']}/policy", json={"discount_per_hour": 0.999})
    engine = app.extensions["copybandit.engine"]
    updated: list[int] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _m: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE VARIANT"):
            # The row's id, as the statement's WHERE names it.
            updated.append(context.compiled_parameters[0]["id_1"])

    run_lifecycle(engine=engine, model="", now=datetime(2026, 3, 14, tzinfo=UTC))

    session.expire_all()
    retired = {v: session.get(Variant, v).status for v in losers}  # type: ignore[union-attr]
    assert retired == {losers[0]: "retired", losers[1]: "retired"}
    in_this_segment = [variant_id for variant_id in updated if variant_id in counts]
    folds, changes = in_this_segment[: len(counts)], in_this_segment[len(counts) :]
    assert folds == sorted(counts) and changes == sorted(losers), updated


def _interleave(
    engine: sa.Engine, elsewhere: sa.Engine, starts_with: str, other: Any
) -> threading.Thread:
    """Run `other` in a thread when this engine is about to send a statement starting with
    `starts_with`, and go on once it has finished or waits for a lock this side holds."""
    thread = _writer_elsewhere(elsewhere, other)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _now(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(starts_with) and not thread.ident:
            thread.start_until_blocked_or_done()  # type: ignore[attr-defined]

    return thread


def _writer_elsewhere(elsewhere: sa.Engine, work: Any) -> threading.Thread:
    """A thread for `work`, writing on `elsewhere`, with start_until_blocked_or_done()."""
    asked_for_lock = threading.Event()

    @sa.event.listens_for(elsewhere, "before_cursor_execute")
    def _locking(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE SEGMENT", "UPDATE EXPERIMENT")):
            asked_for_lock.set()

    thread = threading.Thread(target=work)

    def start_until_blocked_or_done() -> None:
        thread.start()
        if elsewhere.dialect.name == "postgresql":
            _blocked_or_done(elsewhere, thread)
            return
        # SQLite shows no lock waits: once the other side has sent its locking write and still
        # runs a moment later, it is waiting in SQLite's busy handler.
        while thread.is_alive() and not asked_for_lock.wait(0.01):
            pass
        thread.join(0.3)

    thread.start_until_blocked_or_done = start_until_blocked_or_done  # type: ignore[attr-defined]
    return thread


def test_two_lifecycle_passes_at_once_order_a_segments_copy_once(
    app: Any, session: Session, experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = app.extensions["copybandit.engine"]
    elsewhere = make_engine(app.extensions["copybandit.settings"])
    other = _writer_elsewhere(elsewhere, lambda: run_lifecycle(engine=elsewhere, model=""))
    plan = lifecycle.plan_segment

    def the_other_pass_runs_now(*args: Any, **kwargs: Any) -> Any:
        # After this pass has counted the first segment's copy on order, before it orders more.
        if not other.ident:
            other.start_until_blocked_or_done()  # type: ignore[attr-defined]
        return plan(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "plan_segment", the_other_pass_runs_now)
    run_lifecycle(engine=engine, model="")
    other.join(timeout=60)
    elsewhere.dispose()

    session.expire_all()
    ordered = session.exec(select(GenerationJob.segment_id, GenerationJob.n)).all()
    segments = session.exec(select(Segment.id).where(Segment.experiment_id == experiment["id"]))
    # Before, on SQLite, both passes ordered the first segment's two missing lines.
    assert sorted(ordered) == sorted((segment_id, 2) for segment_id in segments)


def test_two_controls_added_at_once_make_one_control(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """Both requests found no control and both added one: the second was never guarded against
    nor retirable (36 of 40 tries on PostgreSQL, 13 of 40 on SQLite)."""
    engine = app.extensions["copybandit.engine"]
    elsewhere = make_engine(app.extensions["copybandit.settings"])
    fresh = api.create_experiment(name="No control yet")
    outcomes: list[str] = []

    def add(on: sa.Engine, text: str) -> None:
        with Session(on, expire_on_commit=False) as own:
            try:
                add_variant(
                    session=own,
                    experiment_id=fresh["id"],
                    variant_create=VariantCreate(
                        segment="busy-parents", text=text, origin="control"
                    ),
                )
                outcomes.append("added")
            except Conflict as exc:
                outcomes.append(exc.message)

    other = _interleave(
        engine, elsewhere, "INSERT INTO VARIANT", lambda: add(elsewhere, "Control two.")
    )
    add(engine, "Control one.")
    other.join(timeout=60)
    elsewhere.dispose()

    assert sorted(outcomes) == [
        "added",
        "segment 'busy-parents' already has a control variant; retire it to add another",
    ]
    controls = session.exec(
        select(Variant.id).where(Variant.experiment_id == fresh["id"], Variant.origin == "control")
    ).all()
    assert len(controls) == 1


def test_two_policy_changes_at_once_both_stay(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """Each merged its change into the policy as it was before either, and the second write
    dropped the first's (37 of 40 tries on PostgreSQL)."""
    engine = app.extensions["copybandit.engine"]
    elsewhere = make_engine(app.extensions["copybandit.settings"])

    def change(on: sa.Engine, **fields: Any) -> None:
        with Session(on, expire_on_commit=False) as own:
            update_policy(
                session=own,
                experiment_id=experiment["id"],
                changes=PolicyChanges(**fields),
                by="test",
            )

    other = _interleave(
        engine,
        elsewhere,
        "UPDATE EXPERIMENT SET POLICY",
        lambda: change(elsewhere, retire_below=0.05),
    )
    change(engine, min_impressions=500)
    other.join(timeout=60)
    elsewhere.dispose()

    session.expire_all()
    stored = session.get(Experiment, experiment["id"])
    assert stored is not None and stored.policy is not None
    assert stored.policy["min_impressions"] == 500 and stored.policy["retire_below"] == 0.05


# On SQLite lock_row is the database's write lock, which every writer waits for by design.
@pytest.mark.parametrize("database_url", ["postgres"] if PG_URL else [], indirect=True)
@pytest.mark.parametrize(
    ("held", "lock"),
    [("segment", lock_segment), ("segment", lock_row), ("experiment", lock_row)],
    ids=["segment-status-change", "segment-lifecycle-pass", "experiment-policy-change"],
)
def test_a_decision_does_not_wait_for_a_writer_holding_its_segment_or_experiment(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    held: str,
    lock: Any,
) -> None:
    """FOR UPDATE on the segment kept out the key-share lock that the new impression's foreign
    key check takes: every decision for the segment waited out a lifecycle pass's planning, and
    one whose counter update the pass then wanted deadlocked with it."""
    segment = session.exec(select(Segment).where(Segment.experiment_id == experiment["id"])).first()
    row = segment if held == "segment" else session.get(Experiment, experiment["id"])
    decided: list[dict[str, Any]] = []
    decision = threading.Thread(
        target=lambda: decided.append(api.decide(experiment["id"], segment="tea-lovers"))
    )
    with Session(app.extensions["copybandit.engine"], expire_on_commit=False) as writer:
        lock(writer, writer.merge(row))
        decision.start()
        _blocked_or_done(app.extensions["copybandit.engine"], decision)
        finished_while_held = not decision.is_alive()
        writer.rollback()
    decision.join(timeout=60)

    assert finished_while_held
    assert decided and decided[0]["segment"] == "tea-lovers"


def test_locking_a_row_touches_no_key(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """`SET id = id` on SQLite made it check every impression that refers to the segment and the
    experiment, twice: 0.1 s a million rows, with every writer held back."""
    engine = app.extensions["copybandit.engine"]
    sent: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    segment = session.exec(select(Segment).where(Segment.experiment_id == experiment["id"])).first()
    stored = session.get(Experiment, experiment["id"])
    assert segment is not None and stored is not None
    sa.event.listen(engine, "before_cursor_execute", remember)
    try:
        lock_row(session, segment)
        lock_row(session, stored)
    finally:
        sa.event.remove(engine, "before_cursor_execute", remember)
    session.rollback()

    if engine.dialect.name == "postgresql":
        assert [s for s, _ in sent if "FOR NO KEY UPDATE" in s] and not [
            s for s, _ in sent if s.startswith("UPDATE")
        ]
        return
    updates = [(s, p) for s, p in sent if s.startswith("UPDATE")]
    assert len(updates) == 2
    with engine.connect() as connection:
        for statement, parameters in updates:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            assert not any("SCAN" in str(step) for step in plan), (statement, plan)
