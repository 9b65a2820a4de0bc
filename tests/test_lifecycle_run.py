"""The lifecycle against a real database: runs, audit trail, winners, jobs, priors, policy, crashes,
the guardrail on conversion events, and `copybandit lifecycle --once`."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import Session, col, select

from bandits.priors import empirical_bayes_prior
from generation.writer import PromptTooLong
from service import cli, hourly_traffic, lifecycle
from service.cli import main
from service.db import make_engine
from service.generation_jobs import (
    COMMAND_STOPPED,
    COMMAND_TERMINATED,
    INTERRUPTED,
    STOPPED,
    interruption,
    write_off,
)
from service.lifecycle import GuardrailWatch, RunReport, run_lifecycle
from service.models import (
    Experiment,
    GenerationJob,
    Impression,
    LifecycleEvent,
    Segment,
    Variant,
)
from service.policy import LifecyclePolicy
from tests.conftest import store_policy_by_hand
from tests.query_plans import sqlite_reads, statements_sent

NOW = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
TEA, PARENTS = "tea-lovers", "busy-parents"
DEFAULT_POLICY = LifecyclePolicy().model_dump()
README = Path(__file__).resolve().parent.parent / "README.md"
# How a pass's log lines end: the time it took.
TOOK = r"; \d+\.\d\d s"

Counts = dict[int, tuple[int, int]]


# --- helpers ------------------------------------------------------------------------------------


def ids(experiment: dict[str, Any], segment: str) -> dict[str, int]:
    """The segment's variant ids by origin ("control", "manual")."""
    (found,) = [s for s in experiment["segments"] if s["key"] == segment]
    return {v["origin"]: v["id"] for v in found["variants"]}


def segment_id(session: Session, experiment: dict[str, Any], key: str) -> int:
    query = select(Segment.id).where(Segment.experiment_id == experiment["id"], Segment.key == key)
    return session.exec(query).one()  # type: ignore[return-value]


def set_counts(session: Session, counts: Counts) -> None:
    """Impressions and conversions per variant id, written straight to the counters."""
    for variant_id, (impressions, conversions) in counts.items():
        session.execute(
            sa.update(Variant)
            .where(col(Variant.id) == variant_id)
            .values(impressions=impressions, conversions=conversions)
        )
    session.commit()


def variants(session: Session, experiment: dict[str, Any]) -> dict[int, Variant]:
    session.expire_all()
    query = select(Variant).where(Variant.experiment_id == experiment["id"])
    return {v.id: v for v in session.exec(query)}  # type: ignore[misc]


def lifecycle_events(session: Session, experiment: dict[str, Any]) -> list[LifecycleEvent]:
    """What runs wrote, oldest first; the "prior" rows that adding a variant writes are left out,
    and the "edit" rows of a test's policy changes."""
    session.expire_all()
    query = select(LifecycleEvent).where(
        LifecycleEvent.experiment_id == experiment["id"],
        col(LifecycleEvent.action).not_in(("prior", "edit")),
    )
    return list(session.exec(query.order_by(col(LifecycleEvent.id))))


def run(
    app: Any, submitted: list[int] | None = None, *, model: str = "", at: datetime = NOW
) -> RunReport:
    """A pass at `at` from a process configured with `model` (COPYBANDIT_MODEL; "" the bundled
    one) and the default interval, 15 minutes."""
    engine = app.extensions["copybandit.engine"]
    return run_lifecycle(
        engine=engine,
        model=model,
        submit_job=None if submitted is None else submitted.append,
        now=at,
    )


def patch_policy(api: Any, experiment: dict[str, Any], **changes: Any) -> Any:
    return api.patch(f"/v1/experiments/{experiment['id']}/policy", json=changes)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


@pytest.fixture
def three_arms(api: Any, session: Session, experiment: dict[str, Any]) -> dict[str, int]:
    """tea-lovers: control and manual at 5%, a new "star" at 15%, 1,000 impressions each. The
    manual arm is no worse than the control (no guardrail) but has no chance of being best."""
    star = api.add_variant(experiment["id"], TEA, "Tea at the perfect temperature, every time.")
    arms = {**ids(experiment, TEA), "star": star["id"]}
    set_counts(
        session, {arms["control"]: (1000, 50), arms["manual"]: (1000, 50), star["id"]: (1000, 150)}
    )
    assert patch_policy(api, experiment, regenerate=False).status_code == 200
    return arms


# --- a run --------------------------------------------------------------------------------------


def test_a_run_retires_a_clear_loser_and_records_why(
    app: Any, session: Session, experiment: dict[str, Any], three_arms: dict[str, int]
) -> None:
    report = run(app)

    rows = variants(session, experiment)
    loser = rows[three_arms["manual"]]
    assert loser.status == "retired"
    assert loser.status_reason is not None
    assert "prob_best" in loser.status_reason and "retire_below" in loser.status_reason
    assert loser.updated_at == NOW
    assert {rows[three_arms[k]].status for k in ("control", "star")} == {"active"}
    assert {v.status for v in rows.values() if v.segment_id != loser.segment_id} == {"active"}

    events = lifecycle_events(session, experiment)
    assert [(e.action, e.variant_id) for e in events] == [
        ("retire", three_arms["manual"]),
        ("declare_winner", three_arms["star"]),
    ]
    assert {e.segment_id for e in events} == {loser.segment_id}
    assert {e.created_at for e in events} == {NOW}
    assert events[0].reason == loser.status_reason
    assert events[0].numbers is not None and events[0].numbers["prob_best"] < 0.02
    assert report.experiments == 1
    assert [e.id for e in report.actions] == [e.id for e in events]


def shown_in_segment(
    session: Session, experiment: dict[str, Any], variant_id: int, times: list[datetime]
) -> None:
    """Impression rows for `variant_id`, one stamped at each of `times` (the counters stay)."""
    rows = session.get(Variant, variant_id)
    assert rows is not None
    session.execute(
        sa.insert(Impression),
        [
            {
                "id": f"starve{variant_id}-{i}",
                "experiment_id": experiment["id"],
                "segment_id": rows.segment_id,
                "variant_id": variant_id,
                "propensity": 0.5,
                "policy": "test",
                "created_at": at,
            }
            for i, at in enumerate(times)
        ],
    )
    session.commit()


@pytest.mark.parametrize("served_since_live", [1999, 2000])
def test_a_pass_retires_copy_starved_since_it_went_live_and_declares_the_winner(
    api: Any,
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    served_since_live: int,
) -> None:
    arms = ids(experiment, TEA)
    starving = api.add_variant(experiment["id"], TEA, "Tea, the way you like it.")["id"]
    # A proven 10% control, a clear loser (the guardrail pauses it), and a line at 60 impressions
    # without a conversion (prob_best 0.002) that Thompson sampling all but stopped showing.
    set_counts(
        session, {arms["control"]: (5000, 500), arms["manual"]: (5000, 250), starving: (60, 0)}
    )
    assert patch_policy(api, experiment, regenerate=False).status_code == 200
    went_live = variants(session, experiment)[starving].updated_at
    # 2,000 (starved_after 10 x min_impressions 200) from before it went live count for nothing.
    before = [went_live - timedelta(minutes=1)] * 2000
    since = [went_live + timedelta(seconds=1)] * served_since_live
    shown_in_segment(session, experiment, arms["control"], before + since)

    run(app)

    starved = served_since_live == 2000
    row = variants(session, experiment)[starving]
    assert row.status == ("retired" if starved else "active")
    events = lifecycle_events(session, experiment)
    assert {(e.action, e.variant_id) for e in events} == {
        ("pause", arms["manual"]),
        *([("retire", starving), ("declare_winner", arms["control"])] if starved else []),
    }
    if starved:
        (retire,) = [e for e in events if e.variant_id == starving]
        assert retire.reason == row.status_reason
        assert retire.reason.startswith(
            "starved: 60 impressions, under min_impressions 200, after its segment served 2000"
        )
        assert retire.numbers is not None
        assert retire.numbers["segment_impressions_since_live"] == 2000


def test_audit_trail_is_newest_first_with_the_numbers(
    api: Any, app: Any, session: Session, experiment: dict[str, Any], three_arms: dict[str, int]
) -> None:
    run(app)
    response = api.get(f"/v1/experiments/{experiment['id']}/audit")
    assert response.status_code == 200
    trail = response.get_json()["events"]

    assert [e["id"] for e in trail] == sorted((e["id"] for e in trail), reverse=True)
    # Newest first: the run's winner, then its retirement, then three_arms's policy change, then
    # the priors of the 5 variants.
    assert [e["action"] for e in trail] == ["declare_winner", "retire", "edit"] + ["prior"] * 5
    winner, retire = trail[0], trail[1]
    assert (winner["segment"], winner["variant_id"]) == (TEA, three_arms["star"])
    assert (retire["segment"], retire["variant_id"]) == (TEA, three_arms["manual"])
    assert retire["reason"].startswith("prob_best")
    assert set(retire["numbers"]) >= {
        "prob_best",
        "expected_loss",
        "impressions",
        "conversions",
        "retire_below",
    }
    assert (retire["numbers"]["impressions"], retire["numbers"]["conversions"]) == (1000, 50)
    assert parse_time(retire["created_at"]) == NOW
    assert {e["segment"] for e in trail[3:]} == {TEA, PARENTS}


def test_missing_experiment_has_no_audit_trail(api: Any) -> None:
    response = api.get("/v1/experiments/999/audit")
    assert response.status_code == 404


def test_report_shows_the_declared_winner_once(
    api: Any, app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    tea = ids(experiment, TEA)
    set_counts(session, {tea["control"]: (1000, 50), tea["manual"]: (1000, 150)})

    run(app)
    later = NOW.replace(year=NOW.year + 1)
    run_lifecycle(engine=app.extensions["copybandit.engine"], model="", now=later)

    report = api.get(f"/v1/experiments/{experiment['id']}/report").get_json()
    winners = {s["key"]: s["winner"] for s in report["segments"]}
    assert winners[PARENTS] is None
    assert winners[TEA]["variant_id"] == tea["manual"]
    # Declared by the first run; the second, seeing the same winner, declares nothing.
    assert parse_time(winners[TEA]["declared_at"]) == NOW
    declared = [e for e in lifecycle_events(session, experiment) if e.action == "declare_winner"]
    assert [e.variant_id for e in declared] == [tea["manual"]]


def test_a_winner_paused_by_hand_after_the_plan_read_it_is_not_declared(
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    three_arms: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = app.extensions["copybandit.engine"]
    planned = lifecycle.plan_segment
    refused: list[str] = []

    def paused_meanwhile(*args: Any, **kwargs: Any) -> list[lifecycle.Action]:
        actions = planned(*args, **kwargs)
        if not any(a.kind == "declare_winner" for a in actions):
            return actions
        pause = "UPDATE variant SET status = 'paused' WHERE id = ?"
        if engine.dialect.name == "sqlite":
            # The pass holds SQLite's write lock from before its plan read anything: a pause by
            # hand waits for it to commit, and cannot land between the plan and the declaration.
            by_hand = sqlite3.connect(engine.url.database, timeout=0.2)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                by_hand.execute(pause, (three_arms["star"],))
            by_hand.close()
            refused.append("waited")
        else:
            with engine.begin() as by_hand:  # another connection: nothing here holds its row
                by_hand.exec_driver_sql(pause.replace("?", "%s"), (three_arms["star"],))
        return actions

    monkeypatch.setattr(lifecycle, "plan_segment", paused_meanwhile)
    run(app)

    session.expire_all()
    tea = session.get(Segment, segment_id(session, experiment, TEA))
    declared = "declare_winner" in {e.action for e in lifecycle_events(session, experiment)}
    if engine.dialect.name == "sqlite":
        assert refused == ["waited"]
        assert tea is not None and tea.winner_variant_id == three_arms["star"] and declared
    else:
        # Before, the paused star became the declared winner.
        assert tea is not None and tea.winner_variant_id is None and not declared
    assert variants(session, experiment)[three_arms["manual"]].status == "retired"


def test_regeneration_queues_a_job_per_segment_and_submits_it(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    submitted: list[int] = []
    report = run(app, submitted)

    session.expire_all()
    jobs = session.exec(select(GenerationJob).order_by(col(GenerationJob.id))).all()
    assert submitted == report.jobs == [job.id for job in jobs]
    segments = [segment_id(session, experiment, key) for key in (TEA, PARENTS)]
    assert [(job.segment_id, job.n, job.status) for job in jobs] == [
        (segments[0], 2, "queued"),
        (segments[1], 2, "queued"),
    ]
    regenerate = [e for e in lifecycle_events(session, experiment) if e.action == "regenerate"]
    assert [(e.segment_id, e.numbers) for e in regenerate] == [
        (job.segment_id, {"live": 2, "pending": 0, "on_order": 0, "n": 2, "job_id": job.id})
        for job in jobs
    ]


@pytest.mark.parametrize("for_every_segment", [False, True], ids=["one-segment", "all-segments"])
def test_copy_already_on_order_is_not_ordered_again(
    app: Any, api: Any, session: Session, experiment: dict[str, Any], for_every_segment: bool
) -> None:
    # A job asked for by hand, still running: two more lines for tea-lovers on their way.
    assert patch_policy(api, experiment, target_active=4, max_active=4).status_code == 200
    tea = segment_id(session, experiment, TEA)
    session.add(
        GenerationJob(
            experiment_id=experiment["id"],
            segment_id=None if for_every_segment else tea,
            n=2,
            status="running",
            created_at=NOW,
            updated_at=NOW,
        )
    )
    session.commit()

    run(app)

    # 2 live + 2 on order = max_active: nothing more for tea-lovers. An all-segments job went
    # unseen before, and the pass ordered 2 more (6 in all, past max_active).
    ordered = {
        e.segment_id: e.numbers
        for e in lifecycle_events(session, experiment)
        if e.action == "regenerate"
    }
    assert tea not in ordered
    if for_every_segment:
        assert ordered == {}
    else:
        assert [n["n"] for n in ordered.values()] == [2]


def test_a_pass_while_its_last_order_is_still_queued_orders_nothing_more(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    first = run(app)  # queues a job for 2 lines per segment; nothing runs them here
    again = run(app)

    assert len(first.jobs) == 2
    # Before, each pass asked for the same two lines again while the first order still waited.
    assert again.jobs == [] and not [e for e in again.actions if e.action == "regenerate"]


def held_as_too_long(
    session: Session, experiment: dict[str, Any], key: str, model: str | None
) -> int:
    """A job that ended finding the segment's brief, as it stands, too long for `model` (recorded
    as a job records it); None: a record written before records named their model. The
    segment's id."""
    from service.long_briefs import too_long_record

    segment = session.exec(
        select(Segment).where(Segment.experiment_id == experiment["id"], Segment.key == key)
    ).one()
    too_long = PromptTooLong("too long", tokens=6453, limit=4096)
    experiment_row = session.get_one(Experiment, experiment["id"])
    record = too_long_record(experiment_row, segment, too_long, model=model or "")
    if model is None:
        del record["model"]
    session.add(
        GenerationJob(
            experiment_id=experiment["id"],
            segment_id=segment.id,
            n=2,
            status="failed",
            result={"segments": {}, "briefs_too_long": {key: record}},
        )
    )
    session.commit()
    return segment.id  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("recorded", "configured", "held"),
    [
        ("/models/short", "/models/short", True),
        # One folder spelled another way is the same model.
        ("/models/short", "/models/short/", True),
        ("/models/short", "/models/longer/../short", True),
        ("/models/short", "/models/longer", False),
        ("/models/short", "", False),
        ("", "/models/longer", False),
        # Written before records named their model: as the default model's.
        (None, "", True),
        (None, "/models/longer", False),
    ],
)
def test_a_brief_too_long_is_held_only_while_the_model_it_was_too_long_for_is_configured(
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    recorded: str | None,
    configured: str,
    held: bool,
) -> None:
    """A model with a longer context is the other remedy: keyed on the brief alone, the hold
    ordered no copy after COPYBANDIT_MODEL changed, until the brief was edited."""
    tea = held_as_too_long(session, experiment, TEA, recorded)

    report = run(app, model=configured)

    ordered = {e.segment_id for e in report.actions if e.action == "regenerate"}
    assert (tea not in ordered) == held
    assert segment_id(session, experiment, PARENTS) in ordered


def test_a_hold_recorded_under_a_relative_model_folder_holds_under_its_absolute_spelling(
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server given `models/short` and a cron `lifecycle --once` given the absolute path name
    one model: compared as written, each pass ordered the held segment a job that failed."""
    monkeypatch.chdir(tmp_path)
    tea = held_as_too_long(session, experiment, TEA, "models/short")

    report = run(app, model=f"{tmp_path}/models/short/")

    assert tea not in {e.segment_id for e in report.actions if e.action == "regenerate"}


def test_a_hold_naming_no_model_held_again_after_the_trail_said_it_ended_fails_no_pass(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """The order that said the hold ended never ran to its end (the model was changed back, say):
    the pass writes the hold's row again, from a record written before records named their model,
    which failed the segment's pass every time (KeyError: 'model')."""
    tea = held_as_too_long(session, experiment, TEA, None)
    session.add(
        LifecycleEvent(
            experiment_id=experiment["id"],
            segment_id=tea,
            action="regenerate",
            reason="2 live variants, target 4: asking the model for 2 more; the hold ended",
            numbers={"live": 2, "n": 2, "job_id": 99, "hold_lifted": "model"},
        )
    )
    session.commit()

    report = run(app)

    assert report.failed_segments == []
    (hold,) = [e for e in report.actions if e.segment_id == tea]
    assert hold.action == "hold"
    assert hold.numbers == {"job_id": 1, "tokens": 6453, "limit": 4096, "model": ""}


def test_a_pass_that_only_writes_a_hold_logs_the_hold(
    app: Any, session: Session, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The pass's line counted retirements, pauses, winners, orders and folds only: a pass whose
    one act was a hold's audit row logged "0 retired, 0 paused, ... 0 generation jobs ordered"."""
    caplog.set_level(logging.INFO, logger="service.lifecycle")
    tea = held_as_too_long(session, experiment, TEA, "")
    session.add(
        LifecycleEvent(
            experiment_id=experiment["id"],
            segment_id=tea,
            action="regenerate",
            reason="2 live variants, target 4: asking the model for 2 more; the hold ended",
            numbers={"live": 2, "n": 2, "job_id": 99, "hold_lifted": "model"},
        )
    )
    # busy-parents' copy is on order already: the hold is all the pass has to do.
    parents = segment_id(session, experiment, PARENTS)
    session.add(GenerationJob(experiment_id=experiment["id"], segment_id=parents, n=2))
    session.commit()

    report = run(app)

    assert [e.action for e in report.actions] == ["hold"]
    lines = [line for line in info_lines(caplog) if line.startswith("lifecycle: ")]
    held = (
        "0 generation jobs ordered, 0 discount folds, 1 segment held (brief too long for the model)"
    )
    assert [held in line for line in lines] == [True, True], lines


# --- backing off from copy that keeps failing -----------------------------------------------------

INTERVAL = timedelta(minutes=15)
# A pass gives up a running job an hour after its last progress: at the first pass past that.
GIVEN_UP_AFTER = timedelta(hours=1) + INTERVAL
MODEL_ERROR = "RuntimeError: the model fell over"


def ended_job(
    session: Session,
    experiment: dict[str, Any],
    key: str,
    *,
    ordered_at: datetime | None,
    status: str = "failed",
    error: str | None = MODEL_ERROR,
    message: str = "failed",
    outcome: str | None = "failed",
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> int:
    """A job for the segment that ended as told, ordered by a pass at `ordered_at` (its
    regenerate row), or started by hand when None; its id."""
    job = GenerationJob(
        experiment_id=experiment["id"],
        segment_id=segment_id(session, experiment, key),
        n=2,
        status=status,
        error=error if status == "failed" else None,
        message=message,
        outcome=outcome,
        started_at=started_at,
        finished_at=finished_at,
    )
    session.add(job)
    session.flush()
    if ordered_at is not None:
        session.add(
            LifecycleEvent(
                experiment_id=experiment["id"],
                segment_id=job.segment_id,
                action="regenerate",
                reason="2 live variants, target 4: asking the model for 2 more",
                numbers={"live": 2, "pending": 0, "on_order": 0, "n": 2, "job_id": job.id},
                created_at=ordered_at,
            )
        )
    session.commit()
    return job.id  # type: ignore[return-value]


def failed_in_a_row(
    session: Session, experiment: dict[str, Any], key: str, n: int, *, last_at: datetime
) -> None:
    """`n` failed orders, a pass's interval apart, the last at `last_at`."""
    for k in reversed(range(n)):
        ended_job(session, experiment, key, ordered_at=last_at - k * INTERVAL)


def tea_ordered(app: Any, session: Session, experiment: dict[str, Any], at: datetime) -> bool:
    """Whether a pass at `at` orders tea-lovers copy."""
    ordered = {e.segment_id for e in run(app, at=at).actions if e.action == "regenerate"}
    return segment_id(session, experiment, TEA) in ordered


@pytest.mark.parametrize(
    ("failures", "waited", "ordered"),
    [
        (1, INTERVAL / 4, False),
        (1, INTERVAL, True),
        (2, INTERVAL, False),
        (2, 2 * INTERVAL, True),
        (3, 3 * INTERVAL, False),
        (3, 4 * INTERVAL, True),
        # 15 min x 2^9 is 128 h: at most a day.
        (10, timedelta(hours=23), False),
        (10, timedelta(hours=24), True),
        (40, timedelta(hours=24), True),
        # A pass's clock a moment short of the wait, as passes on interval boundaries are.
        (2, 2 * INTERVAL - timedelta(seconds=2), True),
    ],
)
def test_after_failed_orders_the_next_waits_an_interval_doubling_to_a_day(
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    failures: int,
    waited: timedelta,
    ordered: bool,
) -> None:
    """Before, every pass ordered another job that failed: 96 a day per segment."""
    failed_in_a_row(session, experiment, TEA, failures, last_at=NOW)

    report = run(app, at=NOW + waited)

    segments = {e.segment_id for e in report.actions if e.action == "regenerate"}
    assert (segment_id(session, experiment, TEA) in segments) == ordered
    # Another segment's failures hold none of its copy back.
    assert segment_id(session, experiment, PARENTS) in segments


def test_segments_read_together_wait_and_are_held_as_each_read_alone(
    session: Session, experiment: dict[str, Any]
) -> None:
    """The dashboard reads every segment's backoff and held brief at once, in a few queries, not
    a few a segment; a job for every segment is in each one's run, as it is read alone."""
    from service.copy_backoff import copy_backoff, copy_backoffs
    from service.long_briefs import last_record, last_records

    ended_job(
        session,
        experiment,
        PARENTS,
        ordered_at=None,
        status="succeeded",
        message="done",
        outcome="wrote",
    )
    failed_in_a_row(session, experiment, TEA, 2, last_at=NOW - INTERVAL)
    # Started by hand, as only a marketer starts a job for every segment: it does not end the run.
    every = ended_job(session, experiment, TEA, ordered_at=None)
    session.execute(
        sa.update(GenerationJob).where(col(GenerationJob.id) == every).values(segment_id=None)
    )
    session.commit()
    held_as_too_long(session, experiment, PARENTS, "")
    segments = session.exec(select(Segment).where(Segment.experiment_id == experiment["id"])).all()

    together = copy_backoffs(session, segments, interval=INTERVAL)
    assert together == {s.id: copy_backoff(session, s, interval=INTERVAL) for s in segments}
    assert together[segment_id(session, experiment, TEA)].failed_in_a_row == 2  # type: ignore[union-attr]
    assert together[segment_id(session, experiment, PARENTS)] is None
    records = last_records(session, segments)
    assert records == {s.id: last_record(session, s) for s in segments}
    assert records[segment_id(session, experiment, TEA)] is None
    assert records[segment_id(session, experiment, PARENTS)] is not None
    # A job for every segment that delivered copy ends each segment's run, read either way.
    delivered = ended_job(
        session,
        experiment,
        TEA,
        ordered_at=None,
        status="succeeded",
        message="done",
        outcome="wrote",
    )
    session.execute(
        sa.update(GenerationJob).where(col(GenerationJob.id) == delivered).values(segment_id=None)
    )
    session.commit()
    alone = {s.id: copy_backoff(session, s, interval=INTERVAL) for s in segments}
    assert copy_backoffs(session, segments, interval=INTERVAL) == alone == dict.fromkeys(alone)


@pytest.mark.parametrize("outcome", ["failed", "interrupted"])
def test_a_job_for_every_segment_that_failed_ends_the_runs_of_the_segments_it_stored_copy_in(
    session: Session, experiment: dict[str, Any], outcome: str
) -> None:
    """It fails as a whole when one segment fails: the copy it stored first ended no run. The
    same for one interrupted (its worker killed) in a later segment."""
    from service.copy_backoff import copy_backoff, copy_backoffs

    for key in (TEA, PARENTS):
        failed_in_a_row(session, experiment, key, 2, last_at=NOW - INTERVAL)
    every = ended_job(
        session, experiment, TEA, ordered_at=None, outcome=outcome, started_at=NOW, finished_at=NOW
    )
    stored = {"variant_ids": [], "sampled": 4, "rounds": 1, "rejected": 0, "rejections": []}
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == every)
        .values(
            segment_id=None,
            result={"segments": {TEA: {**stored, "variant_ids": [1]}, PARENTS: stored}},
        )
    )
    session.commit()
    segments = session.exec(select(Segment).where(Segment.experiment_id == experiment["id"])).all()

    alone = {s.key: copy_backoff(session, s, interval=INTERVAL) for s in segments}
    together = copy_backoffs(session, segments, interval=INTERVAL)
    assert together == {s.id: alone[s.key] for s in segments}
    # busy-parents got none of its copy: it still waits, the job by hand not counted.
    assert alone[TEA] is None
    assert alone[PARENTS] is not None and alone[PARENTS].failed_in_a_row == 2


@pytest.mark.parametrize("by_hand", [False, True], ids=["ordered", "by-hand"])
def test_a_job_that_delivers_copy_ends_the_backoff(
    app: Any, session: Session, experiment: dict[str, Any], by_hand: bool
) -> None:
    failed_in_a_row(session, experiment, TEA, 5, last_at=NOW)
    ended_job(
        session,
        experiment,
        TEA,
        ordered_at=None if by_hand else NOW,
        status="succeeded",
        message="done: 1 new variant",
        outcome="wrote",
    )

    assert tea_ordered(app, session, experiment, NOW + timedelta(minutes=1))


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (
            "failed",
            "interrupted: the server stopped (the lifecycle orders copy still missing again)",
            "interrupted",
        ),
        (
            "failed",
            "interrupted: no worker finished it within an hour; its process exited",
            "interrupted",
        ),
        ("failed", "interrupted: the command running it was stopped", "interrupted"),
        ("cancelled", None, "cancelled"),
        # Held as too long for the model instead (service.long_briefs).
        ("failed", "PromptTooLong: segment tea-lovers: the prompt is 5,201 tokens", "too_long"),
        # Ended by a server of the release before 0015, which writes no outcome.
        ("succeeded", None, None),
        ("failed", MODEL_ERROR, None),
    ],
)
def test_jobs_that_say_nothing_of_the_model_neither_count_nor_end_a_backoff(
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    status: str,
    error: str | None,
    outcome: str | None,
) -> None:
    failed_in_a_row(session, experiment, TEA, 2, last_at=NOW)
    # Interrupted ones included, as none started (queued behind another job, or nothing ran
    # them), so none loaded the model.
    for _ in range(2):
        ended_job(
            session,
            experiment,
            TEA,
            ordered_at=NOW + INTERVAL,
            status=status,
            error=error,
            outcome=outcome,
        )

    # As after the two failures alone: two intervals from the last, not four, nor at once.
    assert not tea_ordered(app, session, experiment, NOW + INTERVAL)
    assert tea_ordered(app, session, experiment, NOW + 2 * INTERVAL)


def interrupted_while_running(
    session: Session,
    experiment: dict[str, Any],
    *,
    ordered_at: datetime | None,
    given_up_at: datetime,
    error: str = "interrupted: no worker finished it within an hour; its process exited",
) -> int:
    """A tea-lovers job that started and was given up as interrupted at `given_up_at`."""
    return ended_job(
        session,
        experiment,
        TEA,
        ordered_at=ordered_at,
        error=error,
        message=error,
        outcome="interrupted",
        started_at=given_up_at - timedelta(hours=1),
        finished_at=given_up_at,
    )


@pytest.mark.parametrize(
    "error",
    [
        "interrupted: the server stopped (the lifecycle orders copy still missing again)",
        "interrupted: no worker finished it within an hour; its process exited",
        "interrupted: the command running it was stopped",
    ],
    ids=["server-stopped", "no-worker", "command-stopped"],
)
def test_one_job_interrupted_while_it_ran_neither_counts_nor_ends_a_backoff(
    app: Any, session: Session, experiment: dict[str, Any], error: str
) -> None:
    """A deploy restart interrupts healthy jobs: one such job delays nothing."""
    failed_in_a_row(session, experiment, TEA, 2, last_at=NOW)
    interrupted_while_running(
        session, experiment, ordered_at=NOW + INTERVAL, given_up_at=NOW + INTERVAL, error=error
    )

    assert not tea_ordered(app, session, experiment, NOW + INTERVAL)
    assert tea_ordered(app, session, experiment, NOW + 2 * INTERVAL)


@pytest.mark.parametrize(
    ("failed_before", "waits"), [(0, 2 * INTERVAL), (1, 4 * INTERVAL)], ids=["alone", "after-one"]
)
def test_two_jobs_interrupted_while_they_ran_count_from_when_they_were_given_up(
    app: Any, session: Session, experiment: dict[str, Any], failed_before: int, waits: timedelta
) -> None:
    """The second in a row is the job killing its worker, not a deploy. The wait runs from
    the give-up: from the order, an hour before, the first waits had passed already."""
    failed_in_a_row(session, experiment, TEA, failed_before, last_at=NOW - timedelta(hours=3))
    first = NOW - GIVEN_UP_AFTER
    interrupted_while_running(
        session, experiment, ordered_at=first - GIVEN_UP_AFTER, given_up_at=first
    )
    interrupted_while_running(session, experiment, ordered_at=first, given_up_at=NOW)

    assert not tea_ordered(app, session, experiment, NOW + waits - INTERVAL)
    assert tea_ordered(app, session, experiment, NOW + waits)


@pytest.mark.parametrize(
    ("first", "second"),
    [(STOPPED, STOPPED), (COMMAND_STOPPED, COMMAND_STOPPED), (STOPPED, INTERRUPTED)],
    ids=["server", "command", "server-then-given-up"],
)
def test_jobs_a_stopping_server_wrote_off_do_not_count_however_many(
    app: Any, session: Session, experiment: dict[str, Any], first: str, second: str
) -> None:
    """Two deploys in a row, each stopping the server mid-job: they counted as a job killing its
    worker, and the segment waited half an hour, the note blaming memory. A worker the model
    kills writes nothing off; a pass gives its job up an hour later."""
    from service.copy_backoff import copy_backoffs

    for error, ordered_at, ended_at in (
        (first, NOW - 2 * INTERVAL, NOW - INTERVAL),
        (second, NOW - INTERVAL, NOW),
    ):
        said = interruption(error, by_lifecycle=True)
        interrupted_while_running(
            session, experiment, ordered_at=ordered_at, given_up_at=ended_at, error=said
        )
    segments = session.exec(select(Segment).where(Segment.experiment_id == experiment["id"])).all()

    assert copy_backoffs(session, segments, interval=INTERVAL) == dict.fromkeys(
        s.id for s in segments
    )
    assert tea_ordered(app, session, experiment, NOW)


def test_interrupted_jobs_started_by_hand_do_not_count(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    first = NOW - GIVEN_UP_AFTER
    interrupted_while_running(session, experiment, ordered_at=None, given_up_at=first)
    interrupted_while_running(session, experiment, ordered_at=first, given_up_at=NOW)

    assert tea_ordered(app, session, experiment, NOW)


def test_a_job_started_by_hand_that_failed_does_not_count(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    ended_job(session, experiment, TEA, ordered_at=NOW)
    ended_job(session, experiment, TEA, ordered_at=None)
    ended_job(session, experiment, TEA, ordered_at=None)

    assert tea_ordered(app, session, experiment, NOW + INTERVAL)


def test_a_job_whose_every_line_the_lint_refused_counts_as_failed(
    app: Any, session: Session, experiment: dict[str, Any]
) -> None:
    failed_in_a_row(session, experiment, TEA, 1, last_at=NOW - INTERVAL)
    ended_job(
        session,
        experiment,
        TEA,
        ordered_at=NOW,
        status="succeeded",
        message=("done: 0 new variants"),
        outcome="wrote_none",
    )

    assert not tea_ordered(app, session, experiment, NOW + INTERVAL)
    assert tea_ordered(app, session, experiment, NOW + 2 * INTERVAL)


def test_a_pass_backing_off_writes_no_audit_row_and_the_order_that_resumes_says_why(
    app: Any, session: Session, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    failed_in_a_row(session, experiment, TEA, 3, last_at=NOW)
    tea = segment_id(session, experiment, TEA)
    written = len(lifecycle_events(session, experiment))

    caplog.set_level(logging.WARNING, logger="service.lifecycle")
    run(app, at=NOW + INTERVAL)

    added = lifecycle_events(session, experiment)[written:]
    assert [e.segment_id for e in added] == [segment_id(session, experiment, PARENTS)]
    assert (
        f"lifecycle: segment {TEA} of experiment {experiment['id']} gets no new copy yet: paused "
        "after 3 failed jobs in a row, until 2026-03-14 16:09:26 UTC"
    ) in caplog.messages

    run(app, at=NOW + 4 * INTERVAL)
    (resumed,) = [e for e in lifecycle_events(session, experiment)[written:] if e.segment_id == tea]
    assert resumed.reason == (
        "2 live variants, target 4: asking the model for 2 more; ordering again after 3 failed "
        "jobs in a row"
    )
    assert resumed.numbers is not None and resumed.numbers["failed_in_a_row"] == 3


def test_a_wait_is_logged_once_as_it_begins_and_again_when_a_failure_moves_its_end(
    app: Any, session: Session, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each pass that found the wait still running logged it again: at the default interval up
    to 96 identical warnings a day per segment, where the pass's own log is one line."""
    failed_in_a_row(session, experiment, TEA, 3, last_at=NOW)
    caplog.set_level(logging.WARNING, logger="service.lifecycle")

    def waits_logged() -> list[str]:
        return [m for m in caplog.messages if f"segment {TEA} " in m and "no new copy yet" in m]

    for k in (1, 2, 3):
        assert not tea_ordered(app, session, experiment, NOW + k * INTERVAL)
    assert waits_logged() == [
        f"lifecycle: segment {TEA} of experiment {experiment['id']} gets no new copy yet: paused "
        f"after 3 failed jobs in a row, until {NOW + 4 * INTERVAL:%Y-%m-%d %H:%M:%S} UTC"
    ]

    # A fourth order failed (one a pass made before the wait was read, say): the end moved.
    ended_job(session, experiment, TEA, ordered_at=NOW + 3 * INTERVAL)
    for k in (4, 5):
        assert not tea_ordered(app, session, experiment, NOW + k * INTERVAL)
    assert len(waits_logged()) == 2
    assert waits_logged()[1].endswith(
        f"paused after 4 failed jobs in a row, until {NOW + 11 * INTERVAL:%Y-%m-%d %H:%M:%S} UTC"
    )


def killed_mid_job(session: Session, job_id: int, at: datetime) -> None:
    """The job as a worker killed while loading the model (out of memory, SIGKILL) leaves it:
    running, its last progress at `at`, nothing written off at exit."""
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id) == job_id)
        .values(status="running", started_at=at, updated_at=at, message="loading the model")
    )
    session.commit()


def orders(report: RunReport) -> dict[int | None, int]:
    """The pass's orders for copy: job ids by segment."""
    return {e.segment_id: e.numbers["job_id"] for e in report.actions if e.action == "regenerate"}  # type: ignore[index]


def test_jobs_that_kill_their_worker_are_ordered_again_ever_more_slowly(
    app: Any, session: Session, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A model too big for the host kills the worker that loads it. Interrupted jobs did not
    count, as a deploy restart interrupts healthy ones, so each pass that gave one up ordered the
    next: a worker killed (and every request it was serving) every hour and a quarter, for ever,
    the wait never growing and the dashboard saying nothing of why."""
    tea = segment_id(session, experiment, TEA)
    at = NOW
    job = orders(run(app, at=at))[tea]
    killed_mid_job(session, job, at)

    # One job interrupted (a deploy restart, say) delays nothing.
    at += GIVEN_UP_AFTER
    report = run(app, at=at)
    assert job in report.interrupted_jobs
    job = orders(report)[tea]
    killed_mid_job(session, job, at)

    # The second in a row counts both: the next order waits two intervals from the give-up.
    at += GIVEN_UP_AFTER
    caplog.set_level(logging.WARNING, logger="service.lifecycle")
    report = run(app, at=at)
    assert job in report.interrupted_jobs
    assert tea not in orders(report)
    assert (
        f"lifecycle: segment {TEA} of experiment {experiment['id']} gets no new copy yet: paused "
        "after 2 failed jobs in a row (both interrupted mid-job: their worker stopped, out of "
        f"memory perhaps), until {at + 2 * INTERVAL:%Y-%m-%d %H:%M:%S} UTC"
    ) in caplog.messages
    assert tea not in orders(run(app, at=at + INTERVAL))

    report = run(app, at=at + 2 * INTERVAL)
    (resumed,) = [e for e in report.actions if e.action == "regenerate" and e.segment_id == tea]
    assert resumed.reason.endswith(
        "; ordering again after 2 failed jobs in a row (both interrupted mid-job: their worker "
        "stopped, out of memory perhaps)"
    )
    assert resumed.numbers is not None
    assert (resumed.numbers["failed_in_a_row"], resumed.numbers["interrupted"]) == (2, 2)


def stopped_mid_job(
    app: Any, session: Session, running: int, queued: list[int], at: datetime, reason: str
) -> None:
    """`lifecycle --once` stopped at `at` as it ran the job `running`, the jobs `queued` waiting
    their turn: all written off as the command writes them off, saying `reason`."""
    killed_mid_job(session, running, at)
    engine = app.extensions["copybandit.engine"]
    assert sorted(write_off(engine=engine, job_ids=[running, *queued], reason=reason)) == sorted(
        [running, *queued]
    )
    session.execute(
        sa.update(GenerationJob)
        .where(col(GenerationJob.id).in_([running, *queued]))
        .values(finished_at=at, updated_at=at)
    )
    session.commit()


@pytest.mark.parametrize(
    ("reason", "counted"),
    [(COMMAND_TERMINATED, True), (COMMAND_STOPPED, False)],
    ids=["sigterm", "ctrl-c"],
)
def test_jobs_that_overrun_a_cron_time_limit_are_ordered_again_ever_more_slowly(
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    reason: str,
    counted: bool,
) -> None:
    """`timeout 10m copybandit lifecycle --once` from cron, with a job that takes longer: SIGTERM
    wrote it off as a Ctrl-C does, which never counts, so every run ordered it again, ran it first
    and was stopped in it, and the segments queued behind it never got copy. Two in a row count,
    as two jobs given up after their worker died do; Ctrl-C, a person's choice, does not."""
    tea, parents = (segment_id(session, experiment, key) for key in (TEA, PARENTS))
    at = NOW
    for _ in range(2):
        ordered = orders(run(app, at=at))
        assert set(ordered) == {tea, parents}
        # Tea-lovers' job runs first and is still running at the time limit.
        at += INTERVAL
        stopped_mid_job(app, session, ordered[tea], [ordered[parents]], at, reason)

    caplog.set_level(logging.WARNING, logger="service.lifecycle")
    ordered = orders(run(app, at=at))
    # busy-parents' jobs never started: they count for nothing, and its copy is ordered again.
    assert parents in ordered
    assert (tea not in ordered) == counted
    if counted:
        assert (
            f"lifecycle: segment {TEA} of experiment {experiment['id']} gets no new copy yet: "
            "paused after 2 failed jobs in a row (both interrupted mid-job: the command running "
            "them was terminated, at a time limit perhaps), until "
            f"{at + 2 * INTERVAL:%Y-%m-%d %H:%M:%S} UTC"
        ) in caplog.messages


def test_a_wait_after_jobs_given_up_and_terminated_says_both(
    session: Session, experiment: dict[str, Any]
) -> None:
    from service.copy_backoff import copy_backoff

    first = NOW - GIVEN_UP_AFTER
    interrupted_while_running(
        session, experiment, ordered_at=first - GIVEN_UP_AFTER, given_up_at=first
    )
    interrupted_while_running(
        session,
        experiment,
        ordered_at=first,
        given_up_at=NOW,
        error=interruption(COMMAND_TERMINATED, by_lifecycle=True),
    )
    tea = session.exec(
        select(Segment).where(Segment.experiment_id == experiment["id"], Segment.key == TEA)
    ).one()

    backoff = copy_backoff(session, tea, interval=INTERVAL)
    assert backoff is not None
    assert backoff.paused().startswith(
        "paused after 2 failed jobs in a row (both interrupted mid-job: their worker or command "
        "stopped, out of memory or at a time limit perhaps), until "
    )


# SQLite's alone: its plans name the index whatever the tables hold; PostgreSQL's depend on the
# tables' statistics.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_segment_s_jobs_and_orders_are_read_through_its_indexes(
    session: Session, experiment: dict[str, Any]
) -> None:
    """Without an index on the segment, the jobs were read by scanning generation_job back from
    its newest row (all of it for a segment with few jobs), and the orders by experiment, every
    discount fold of every segment of it."""
    from service.copy_backoff import copy_backoff
    from service.long_briefs import last_record

    failed_in_a_row(session, experiment, TEA, 2, last_at=NOW)
    tea = session.get_one(Segment, segment_id(session, experiment, TEA))
    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    with statements_sent(engine) as sent:
        assert copy_backoff(session, tea, interval=INTERVAL) is not None
        last_record(session, tea)

    reads = {
        read.split(" (")[0] for read in sqlite_reads(engine, sent, "generation_job|lifecycle_event")
    }
    assert not any(read.startswith("SCAN") for read in reads), reads
    # The experiment's index, for its jobs for every segment, or the segment's again.
    assert reads - {"SEARCH generation_job USING INDEX ix_generation_job_experiment_id"} == {
        "SEARCH generation_job USING INDEX ix_generation_job_segment_id",
        "SEARCH generation_job USING INTEGER PRIMARY KEY",
        "SEARCH lifecycle_event USING INDEX ix_lifecycle_event_segment_id_action",
    }, reads


def test_a_pass_fails_jobs_no_worker_finished_within_an_hour_and_orders_again(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    tea, parents = (segment_id(session, experiment, key) for key in (TEA, PARENTS))
    # A worker killed mid-job, a job nothing ran, and one still within its hour.
    crashed, never_ran, recent = (
        GenerationJob(
            experiment_id=experiment["id"],
            segment_id=segment,
            n=2,
            status=status,
            created_at=NOW - age,
            updated_at=NOW - age,
        )
        for segment, status, age in [
            (tea, "running", timedelta(hours=3)),
            (tea, "queued", timedelta(minutes=61)),
            (parents, "queued", timedelta(minutes=59)),
        ]
    )
    session.add_all([crashed, never_ran, recent])
    session.commit()

    report = run(app)

    for job in (crashed, never_ran):
        shown = api.get(f"/v1/jobs/{job.id}").get_json()
        # Before, they said running and queued forever.
        assert shown["status"] == "failed"
        assert shown["message"].startswith("interrupted: no worker finished it within an hour")
        assert parse_time(shown["finished_at"]) == NOW
    assert api.get(f"/v1/jobs/{recent.id}").get_json()["status"] == "queued"
    assert sorted(report.interrupted_jobs) == sorted([crashed.id, never_ran.id])
    # Tea-lovers' lines will never come, so they are ordered again; busy-parents' are on their way.
    ordered = {e.segment_id: e.numbers["n"] for e in report.actions if e.action == "regenerate"}
    assert ordered == {tea: 2}


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_job_that_turns_an_hour_old_while_a_pass_runs_is_still_on_order(
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
    session: Session,
    experiment: dict[str, Any],
    status: str,
) -> None:
    """A pass writes off the jobs no worker will finish as it begins, then plans each segment at
    its own time, minutes later over many experiments. A job queued (or last heard from) 59
    minutes before the pass began was not written off, but by its segment's plan it was an hour
    old: left out of the copy on order, its copy was ordered again while its row still said
    queued, so a worker started it later and both jobs stored the segment's lines."""
    tea = segment_id(session, experiment, TEA)
    job = GenerationJob(
        experiment_id=experiment["id"],
        segment_id=tea,
        n=2,
        status=status,
        created_at=NOW - timedelta(minutes=59),
        updated_at=NOW - timedelta(minutes=59),
    )
    session.add(job)
    session.commit()
    # The pass begins at NOW and plans two minutes on.
    clock = iter([NOW])
    monkeypatch.setattr(lifecycle, "utcnow", lambda: next(clock, NOW + timedelta(minutes=2)))

    report = run_lifecycle(
        engine=app.extensions["copybandit.engine"], model="", submit_job=None, now=None
    )

    assert report.interrupted_jobs == []
    assert tea not in {e.segment_id for e in report.actions if e.action == "regenerate"}
    session.expire_all()
    assert session.get_one(GenerationJob, job.id).status == status


def test_a_stored_policy_that_no_longer_validates_leaves_only_its_experiment_alone(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    broken = api.create_experiment(name="Edited by hand")
    store_policy_by_hand(
        session, broken["id"], {"max_active": 2}
    )  # below the default target_active

    report = run(app)

    # Before, the pass raised at this experiment: no other experiment got anything.
    assert sorted(report.failed_segments) == sorted(
        segment_id(session, broken, key) for key in (TEA, PARENTS)
    )
    ordered = {e.experiment_id for e in report.actions if e.action == "regenerate"}
    assert ordered == {experiment["id"]}


def test_a_pass_logs_a_line_for_each_experiment_that_did_something_and_one_for_the_pass(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    three_arms: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It logged a line for every experiment every pass, most saying nothing happened: 62
    experiments wrote 62 lines a pass, burying the few that said something."""
    broken = api.create_experiment(name="Edited by hand")
    store_policy_by_hand(session, broken["id"], {"max_active": 2})
    quiet = api.create_experiment(name="Nothing to do")
    assert patch_policy(api, quiet, regenerate=False).status_code == 200
    caplog.set_level(logging.INFO, logger="service.lifecycle")

    run(app)

    said = info_lines(caplog)
    # tea-lovers retires its loser and declares its star; busy-parents has nothing to do. The
    # broken policy's experiment failed; the quiet one has no line of its own.
    assert len(said) == 3, said
    assert re.fullmatch(
        rf"lifecycle: experiment {experiment['id']}: 2 segments passed, 0 failed; 1 retired, "
        r"0 paused, 1 winner declared, 0 generation jobs ordered, 0 discount folds" + TOOK,
        said[0],
    ), said[0]
    assert said[1].startswith(f"lifecycle: experiment {broken['id']}: 0 segments passed, 2 failed;")
    assert re.fullmatch(
        r"lifecycle: pass over 3 experiments \(1 quiet\): 4 segments passed, 2 failed; 1 retired, "
        r"0 paused, 1 winner declared, 0 generation jobs ordered, 0 discount folds" + TOOK,
        said[2],
    ), said[2]


def test_an_experiment_whose_pass_only_folded_its_evidence_is_quiet(
    app: Any, api: Any, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A fold is every pass's bookkeeping where the policy discounts: a line for it each pass
    is the noise a line for nothing was. The pass's line still counts the folds."""
    changed = patch_policy(api, experiment, regenerate=False, discount_per_hour=0.999)
    assert changed.status_code == 200
    caplog.set_level(logging.INFO, logger="service.lifecycle")

    report = run(app)

    assert [e.action for e in report.actions] == ["discount", "discount"]
    (said,) = info_lines(caplog)
    assert re.fullmatch(
        r"lifecycle: pass over 1 experiment \(1 quiet\): 2 segments passed, 0 failed; 0 retired, "
        r"0 paused, 0 winners declared, 0 generation jobs ordered, 2 discount folds" + TOOK,
        said,
    ), said


def test_a_pass_s_lines_say_one_of_each_in_the_singular(
    app: Any, api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """It said "1 segments passed" and "1 generation jobs ordered"."""
    single = api.create_experiment(
        name="One segment", segments=[{"key": TEA, "description": "Brew loose-leaf tea daily."}]
    )
    caplog.set_level(logging.INFO, logger="service.lifecycle")

    run(app)

    one_of_each = (
        "1 segment passed, 0 failed; 0 retired, 0 paused, 0 winners declared, "
        "1 generation job ordered, 0 discount folds" + TOOK
    )
    said = info_lines(caplog)
    assert len(said) == 2, said
    assert re.fullmatch(rf"lifecycle: experiment {single['id']}: {one_of_each}", said[0]), said
    assert re.fullmatch(rf"lifecycle: pass over 1 experiment \(0 quiet\): {one_of_each}", said[1])


def test_the_readme_shows_what_a_pass_logs(
    app: Any,
    api: Any,
    experiment: dict[str, Any],
    three_arms: dict[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the README quotes of a pass's log is what a pass logs, but for ids and times."""
    quiet = api.create_experiment(name="Nothing to do")
    assert patch_policy(api, quiet, regenerate=False).status_code == 200
    caplog.set_level(logging.INFO, logger="service.lifecycle")

    run(app)

    text = README.read_text()
    lead = text.index("a second experiment with nothing to do:")
    start = text.index("```\n", lead) + len("```\n")
    shown = text[start : text.index("```", start)].splitlines()
    # The README's ids and times are an example's; the rest is the pass's own.
    said = [re.sub(r"experiment \d+:", "experiment 1:", line) for line in info_lines(caplog)]
    assert [re.sub(TOOK, "", line) for line in said] == [re.sub(TOOK, "", line) for line in shown]


def test_the_guardrail_leaves_an_experiment_with_a_broken_policy_alone_quietly(
    app: Any, api: Any, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    # It logged a traceback for each segment at every check, up to once a second while
    # conversions arrived.
    broken = api.create_experiment(name="Edited by hand")
    store_policy_by_hand(session, broken["id"], {"max_active": 2})
    watch = GuardrailWatch(app.extensions["copybandit.engine"])
    with caplog.at_level(logging.ERROR):
        events = watch.counters_changed({segment_id(session, broken, TEA)})
    assert events == [] and caplog.records == []


# --- the audit trail ---------------------------------------------------------------------------


def test_the_audit_trail_pages_and_filters_so_discount_rows_hide_nothing(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    tea = segment_id(session, experiment, TEA)
    # A retirement, then two days of discount folds (600 passes) on top of it.
    rows = [("retire", "prob_best 0.0100 < retire_below 0.02")] + [
        ("discount", "older evidence weighted by 0.999 per hour")
    ] * 600
    session.add_all(
        LifecycleEvent(experiment_id=experiment["id"], segment_id=tea, action=a, reason=r)
        for a, r in rows
    )
    session.commit()
    audit = f"/v1/experiments/{experiment['id']}/audit"

    first = api.get(audit).get_json()
    second = api.get(f"{audit}?before={first['next_before']}").get_json()
    retired = api.get(f"{audit}?action=retire").get_json()

    assert len(first["events"]) == 500 and {e["action"] for e in first["events"]} == {"discount"}
    # Before, the newest 500 were all there was: the retirement could not be reached.
    assert "retire" in {e["action"] for e in second["events"]}
    assert second["next_before"] is None
    every = session.exec(
        select(LifecycleEvent.id)
        .where(LifecycleEvent.experiment_id == experiment["id"])
        .order_by(col(LifecycleEvent.id).desc())
    ).all()
    assert [e["id"] for e in first["events"] + second["events"]] == every
    assert [(e["action"], e["segment"]) for e in retired["events"]] == [("retire", TEA)]
    assert retired["next_before"] is None
    # int() reads '1_000', '+5' and ' 5' (and pydantic with it): ids are written in digits only.
    odd_forms = ["before=1_000", "before=%2B5", "before=%205", "before=%EF%BC%95"]
    for bad, field in [("before=0", "before"), ("before=x", "before"), ("action=nap", "action")] + [
        (form, "before") for form in odd_forms
    ]:
        response = api.get(f"{audit}?{bad}")
        assert (response.status_code, response.get_json()["field"]) == (400, field), bad


# SQLite's alone, as above: PostgreSQL's plans depend on the tables' statistics.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_audit_trail_reads_each_action_s_newest_rows_from_its_index(
    session: Session, experiment: dict[str, Any]
) -> None:
    """Asked for several actions at once (the dashboard's default leaves out discount folds), an
    experiment's rows were read newest first by the experiment alone, through every discount fold
    to find a page of the rest; PostgreSQL walked the whole table back by id. Each action is now
    one range of an index, and the pages are those of reading every row."""
    tea = segment_id(session, experiment, TEA)
    session.add_all(
        LifecycleEvent(experiment_id=experiment["id"], segment_id=tea, action=a, reason="r")
        for a in ["retire", "discount", "prior", "discount", "regenerate", "discount"] * 10
    )
    session.commit()
    every = session.exec(
        select(LifecycleEvent.id, LifecycleEvent.action)
        .where(LifecycleEvent.experiment_id == experiment["id"])
        .order_by(col(LifecycleEvent.id).desc())
    ).all()
    middle = every[len(every) // 2][0]
    asked = [
        (lifecycle.AUDIT_ACTIONS, None),
        (("retire", "prior", "regenerate"), None),
        (("retire", "prior", "regenerate"), middle),
        (("discount",), middle),
        (("hold",), None),
    ]
    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    with statements_sent(engine) as sent:
        pages = [
            lifecycle.audit_trail(
                session, experiment_id=experiment["id"], limit=5, before=before, actions=actions
            )
            for actions, before in asked
        ]

    for (actions, before), page in zip(asked, pages, strict=True):
        expected = [i for i, a in every if a in actions and (before is None or i < before)][:5]
        assert [event.id for event in page] == expected, (actions, before)
    reads = {read.split(" (")[0] for read in sqlite_reads(engine, sent, "lifecycle_event")}
    assert reads == {
        "SEARCH lifecycle_event USING INDEX ix_lifecycle_event_experiment_id_action_id"
    }, reads


def test_the_audit_trail_reads_an_action_named_twice_once_and_none_as_no_rows(
    session: Session, experiment: dict[str, Any]
) -> None:
    # Read as one range per action named: one named twice came back twice, and none at all made a
    # query no database runs, where the `IN (...)` before had read each once and none as nothing.
    tea = segment_id(session, experiment, TEA)
    session.add_all(
        LifecycleEvent(experiment_id=experiment["id"], segment_id=tea, action=a, reason="r")
        for a in ["retire", "prior", "retire"]
    )
    session.commit()
    twice = lifecycle.audit_trail(
        session, experiment_id=experiment["id"], actions=("retire", "retire")
    )
    assert [event.action for event in twice] == ["retire", "retire"]
    assert lifecycle.audit_trail(session, experiment_id=experiment["id"], actions=()) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [("action=prior&action=retire", "action"), ("before=5&before=6", "before")],
)
def test_a_repeated_audit_parameter_is_refused(
    api: Any, experiment: dict[str, Any], query: str, field: str
) -> None:
    # The first value was used and the rest dropped: asked for prior and retire, it gave prior.
    response = api.get(f"/v1/experiments/{experiment['id']}/audit?{query}")
    assert response.status_code == 400, response.get_json()
    error = response.get_json()
    assert (error["error"], error["field"]) == ("invalid", field)
    assert error["message"] == f"{field}: give it once, not 2 times"
    # HEAD is a GET without the body: answered 200 for the first value alone.
    head = api.client.head(
        f"/v1/experiments/{experiment['id']}/audit?{query}", headers=api._headers("admin")
    )
    assert head.status_code == 400


# --- informed priors ----------------------------------------------------------------------------


@pytest.mark.parametrize("informed", [True, False])
def test_a_new_variant_starts_at_its_segments_prior(
    api: Any, session: Session, experiment: dict[str, Any], informed: bool
) -> None:
    tea, parents = ids(experiment, TEA), ids(experiment, PARENTS)
    history = {tea["control"]: (1000, 10), tea["manual"]: (1000, 30)}
    # The other segment's history, very different, must not leak into this one's prior.
    set_counts(session, {**history, parents["control"]: (500, 400), parents["manual"]: (10, 9)})
    if not informed:
        assert patch_policy(api, experiment, informed_priors=False).status_code == 200

    new = api.add_variant(experiment["id"], TEA, "Steep it right: the Aurora kettle.")

    expected = (
        empirical_bayes_prior([10, 30], [1000, 1000], max_pseudo_count=20.0)
        if informed
        else (1.0, 1.0)
    )
    row = variants(session, experiment)[new["id"]]
    assert (row.prior_alpha, row.prior_beta) == pytest.approx(expected, rel=1e-12)
    assert ((row.prior_alpha, row.prior_beta) != (1.0, 1.0)) is informed
    newest = api.get(f"/v1/experiments/{experiment['id']}/audit").get_json()["events"][0]
    assert (newest["action"], newest["variant_id"], newest["segment"]) == ("prior", new["id"], TEA)
    assert (newest["numbers"]["alpha"], newest["numbers"]["beta"]) == pytest.approx(expected)
    assert newest["numbers"]["informed_priors"] is informed
    assert ("empirical-Bayes" in newest["reason"]) is informed


def test_a_variant_converted_more_than_shown_does_not_refuse_new_copy(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    # A conversion replayed while `copybandit purge` had deleted its impression's event but not
    # yet the impression was counted again (purges before they deleted both in one transaction):
    # 2 conversions of 1 impression. Every variant added to that segment afterwards answered
    # 500, its informed prior refusing the history.
    tea = ids(experiment, TEA)
    set_counts(session, {tea["control"]: (1, 2), tea["manual"]: (1000, 30)})

    new = api.add_variant(experiment["id"], TEA, "Steep it right: the Aurora kettle.")

    expected = empirical_bayes_prior([1, 30], [1, 1000], max_pseudo_count=20.0)
    row = variants(session, experiment)[new["id"]]
    assert (row.prior_alpha, row.prior_beta) == pytest.approx(expected, rel=1e-12)


# --- the policy ---------------------------------------------------------------------------------


def test_policy_patch_merges_and_shows_everywhere(api: Any, experiment: dict[str, Any]) -> None:
    assert experiment["policy"] == DEFAULT_POLICY
    first = patch_policy(api, experiment, min_impressions=50, target_active=3)
    assert first.status_code == 200
    assert first.get_json() == {**DEFAULT_POLICY, "min_impressions": 50, "target_active": 3}
    second = patch_policy(api, experiment, declare_at=0.9)
    merged = {**DEFAULT_POLICY, "min_impressions": 50, "target_active": 3, "declare_at": 0.9}
    assert second.get_json() == merged
    assert api.get(f"/v1/experiments/{experiment['id']}").get_json()["policy"] == merged
    assert api.get(f"/v1/experiments/{experiment['id']}/report").get_json()["policy"] == merged


def _policy_edits(api: Any, experiment: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.get(f"/v1/experiments/{experiment['id']}/audit?action=edit")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["events"]  # type: ignore[no-any-return]


def test_each_policy_change_is_audited_with_who_and_each_rules_old_and_new_value(
    api: Any, experiment: dict[str, Any]
) -> None:
    # A PATCH changed when copy retires and when winners are declared with nothing in the audit
    # trail, where an edit to the brief says who changed what.
    by = f"API key {api.keys['admin'].split('_')[1]}"
    assert patch_policy(api, experiment, target_active=3, min_impressions=50).status_code == 200
    # min_impressions given again as it is: only the rules that change are named.
    changed = patch_policy(api, experiment, min_impressions=50, discount_per_hour=0.999)
    assert changed.status_code == 200

    second, first = _policy_edits(api, experiment)
    assert first["reason"] == (
        f"edited by {by}: policy.min_impressions 200 → 50; policy.target_active 4 → 3"
    )
    assert first["numbers"] == {"fields": ["policy.min_impressions", "policy.target_active"]}
    assert (first["segment"], first["variant_id"]) == (None, None)
    assert second["reason"] == f"edited by {by}: policy.discount_per_hour none → 0.999"
    assert second["numbers"] == {"fields": ["policy.discount_per_hour"]}


def test_a_policy_patch_that_changes_no_rule_writes_no_audit_row(
    api: Any, experiment: dict[str, Any]
) -> None:
    assert patch_policy(api, experiment, declare_at=0.9).status_code == 200
    [edit] = _policy_edits(api, experiment)
    # The value each has, and a default written out that was left out: the rules stay the same.
    assert patch_policy(api, experiment, declare_at=0.9, min_impressions=200).status_code == 200
    assert patch_policy(api, experiment, retire_below=0.02, regenerate=True).status_code == 200
    assert _policy_edits(api, experiment) == [edit]


def test_a_policy_patch_refused_writes_no_audit_row(api: Any, experiment: dict[str, Any]) -> None:
    assert patch_policy(api, experiment, min_impressions=50, max_active=2).status_code == 400
    assert _policy_edits(api, experiment) == []


def test_a_stored_policy_that_no_longer_validates_is_shown_with_why(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    # Written by hand, or by another version of copybandit.
    store_policy_by_hand(session, experiment["id"], {"max_active": 2})
    path = f"/v1/experiments/{experiment['id']}"

    # Before, every one of these answered 500.
    (listed,) = api.get("/v1/experiments").get_json()["experiments"]
    for shown in (listed, api.get(path).get_json(), api.get(f"{path}/report").get_json()):
        assert shown["policy"] == DEFAULT_POLICY
        assert shown["policy_error"] == (
            'stored policy {"max_active": 2} does not validate: '
            "max_active: must be >= target_active"
        )
    assert api.add_variant(experiment["id"], TEA, "Aurora: boils before you blink.")["id"]

    assert patch_policy(api, experiment, target_active=2).status_code == 200
    fixed = api.get(path).get_json()
    assert (fixed["policy"]["max_active"], fixed["policy_error"]) == (2, None)


def test_a_stored_policy_with_a_field_no_longer_known_is_fixed_by_a_patch(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    # A field another version of copybandit wrote: merged into every PATCH, it refused them all
    # ("retired_rule: Extra inputs are not permitted"), though the log says a PATCH makes it valid.
    store_policy_by_hand(session, experiment["id"], {"max_active": 8, "retired_rule": 3})
    response = patch_policy(api, experiment, min_impressions=50)
    assert response.status_code == 200, response.get_json()
    expected = {**DEFAULT_POLICY, "max_active": 8, "min_impressions": 50}
    assert response.get_json() == expected
    shown = api.get(f"/v1/experiments/{experiment['id']}").get_json()
    assert (shown["policy"], shown["policy_error"]) == (expected, None)
    session.expire_all()
    assert session.get(Experiment, experiment["id"]).policy == {  # type: ignore[union-attr]
        "max_active": 8,
        "min_impressions": 50,
    }


def test_an_empty_policy_patch_is_refused_naming_the_body_and_changes_nothing(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    # It was a 200 that dropped the stored field this version does not know, where the brief's
    # PATCH refuses `{}`.
    stored = {"min_impressions": 50, "retired_rule": 3}
    store_policy_by_hand(session, experiment["id"], stored)

    response = patch_policy(api, experiment)

    assert response.status_code == 400
    assert response.get_json() == {
        "error": "invalid",
        "field": "body",
        "message": "body: give at least one rule to change: min_impressions, retire_below, "
        "retire_loss_above, starved_after, target_active, max_active, declare_at, "
        "informed_priors, prior_max_trials, guardrail_at, regenerate, discount_per_hour",
    }
    session.expire_all()
    assert session.get(Experiment, experiment["id"]).policy == stored  # type: ignore[union-attr]
    assert _policy_edits(api, experiment) == []


@pytest.mark.parametrize(
    "body",
    [
        {"max_active": 2},
        {"retire_below": 2},
        {"declare_at": 0.5},
        {"min_impressions": "many"},
        {"starved_after": 1},
        {"starved_after": 2.5},
        {"retirement": "early"},
    ],
)
def test_an_invalid_policy_patch_is_rejected_and_changes_nothing(
    api: Any, experiment: dict[str, Any], body: dict[str, Any]
) -> None:
    assert patch_policy(api, experiment, min_impressions=50).status_code == 200
    response = patch_policy(api, experiment, **body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "invalid"
    assert error.get("field") in {"policy", *body}
    shown = api.get(f"/v1/experiments/{experiment['id']}").get_json()["policy"]
    assert shown == {**DEFAULT_POLICY, "min_impressions": 50}


@pytest.mark.parametrize(
    ("stored", "change", "refused"),
    [
        pytest.param({"target_active": 2}, {"max_active": 3}, None, id="max-above-stored-target"),
        pytest.param({"max_active": 20}, {"target_active": 10}, None, id="target-below-stored-max"),
        pytest.param(
            {"target_active": 2, "max_active": 3},
            {"target_active": 5},
            ("target_active", "target_active: must be <= max_active (3)"),
            id="target-above-stored-max",
        ),
        pytest.param(
            {"target_active": 2, "max_active": 3},
            {"max_active": 1},
            ("max_active", "max_active: must be >= target_active"),
            id="max-below-stored-target",
        ),
        pytest.param(
            {},
            {"target_active": 5, "max_active": 3},
            ("max_active", "max_active: must be >= target_active"),
            id="both-sent",
        ),
    ],
)
def test_a_policy_patch_is_judged_merged_with_the_stored_policy(
    api: Any,
    experiment: dict[str, Any],
    stored: dict[str, Any],
    change: dict[str, Any],
    refused: tuple[str, str] | None,
) -> None:
    accepted = refused is None
    if stored:  # `{}` changes nothing: a 400
        assert patch_policy(api, experiment, **stored).status_code == 200
    response = patch_policy(api, experiment, **change)
    assert response.status_code == (200 if accepted else 400), response.get_json()
    if not accepted:
        # It read "policy: Value error, max_active must be >= target_active", naming no field;
        # then it named max_active where the client had sent only target_active.
        error = response.get_json()
        assert (error["field"], error["message"]) == refused
    expected = {**DEFAULT_POLICY, **stored, **(change if accepted else {})}
    assert api.get(f"/v1/experiments/{experiment['id']}").get_json()["policy"] == expected


@pytest.mark.parametrize(
    ("field", "nullable"),
    [("min_impressions", False), ("informed_priors", False), ("discount_per_hour", True)],
)
def test_null_is_refused_as_null_where_a_rule_cannot_be_null(
    api: Any, experiment: dict[str, Any], field: str, nullable: bool
) -> None:
    # "min_impressions: Input should be a valid integer" answered a null, as if a number had
    # been mistyped; the brief's PATCH says "must not be null".
    response = patch_policy(api, experiment, **{field: None})
    if nullable:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    error = response.get_json()
    assert (error["field"], error["message"]) == (
        field,
        f"{field}: must not be null: leave it out to keep its value",
    )
    body = {
        "name": "Nulls",
        "product": {"name": "Kettle", "description": "A kettle."},
        "segments": [{"key": "all", "description": "Everyone."}],
        "policy": {field: None},
    }
    created = api.post("/v1/experiments", json=body)
    assert created.status_code == 400
    assert (created.get_json()["field"], created.get_json()["message"]) == (
        f"policy.{field}",
        f"policy.{field}: must not be null: leave it out for its default",
    )
    assert [e["name"] for e in api.get("/v1/experiments").get_json()["experiments"]] == [
        experiment["name"]
    ]


@pytest.mark.parametrize(
    ("policy", "refused"),
    [
        pytest.param(
            {"target_active": 5, "max_active": 3},
            ("policy.max_active", "policy.max_active: must be >= target_active"),
            id="both-sent",
        ),
        # It named max_active, which the client had not sent, as a PATCH of the same change no
        # longer did.
        pytest.param(
            {"target_active": 9},
            ("policy.target_active", "policy.target_active: must be <= max_active (8)"),
            id="target-above-default-max",
        ),
        pytest.param(
            {"max_active": 3},
            ("policy.max_active", "policy.max_active: must be >= target_active"),
            id="max-below-default-target",
        ),
    ],
)
def test_a_policy_given_at_creation_names_the_field_at_fault(
    api: Any, policy: dict[str, Any], refused: tuple[str, str]
) -> None:
    body = {
        "name": "Bounds",
        "product": {"name": "Kettle", "description": "A kettle."},
        "segments": [{"key": "all", "description": "Everyone."}],
        "policy": policy,
    }
    response = api.post("/v1/experiments", json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert (error["field"], error["message"]) == refused
    assert api.get("/v1/experiments").get_json()["experiments"] == []


# --- failures -----------------------------------------------------------------------------------


def test_a_crash_mid_segment_leaves_that_segment_unchanged(
    api: Any,
    app: Any,
    session: Session,
    experiment: dict[str, Any],
    three_arms: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fourth tea-lovers arm as weak as the manual one: two retirements in the same segment.
    twin = api.add_variant(experiment["id"], TEA, "The kettle for people who love tea.")
    parents = ids(experiment, PARENTS)
    # busy-parents: the manual arm trips the guardrail (one status change, in another segment).
    set_counts(
        session,
        {twin["id"]: (1000, 50), parents["control"]: (1000, 150), parents["manual"]: (1000, 50)},
    )
    assert patch_policy(api, experiment, target_active=1).status_code == 200

    real = lifecycle._set_status
    calls: list[int | None] = []

    def second_one_fails(session: Session, action: Any, now: datetime) -> bool:
        calls.append(action.variant_id)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(session, action, now)

    monkeypatch.setattr(lifecycle, "_set_status", second_one_fails)
    report = run(app)

    assert len(calls) == 3  # two in tea-lovers (the second failed), one in busy-parents
    tea_segment = segment_id(session, experiment, TEA)
    rows = variants(session, experiment)
    assert {v.status for v in rows.values() if v.segment_id == tea_segment} == {"active"}
    assert rows[parents["manual"]].status == "paused"
    events = lifecycle_events(session, experiment)
    assert all(e.segment_id != tea_segment for e in events)
    assert ("pause", parents["manual"]) in [(e.action, e.variant_id) for e in events]
    assert all(e.segment_id != tea_segment for e in report.actions)
    assert report.failed_segments == [tea_segment]
    session.expire_all()
    assert session.get(Segment, tea_segment).winner_variant_id is None  # type: ignore[union-attr]


# SQLite's query_only is a read-only file's error without making one (root may write any file).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_pass_on_a_database_it_cannot_write_logs_the_reason_once_per_segment(
    app: Any, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each segment's failed write was logged as a 30-line traceback; the reason (a read-only
    file) was its last line."""
    engine = make_engine(app.extensions["copybandit.settings"])

    @sa.event.listens_for(engine, "connect")
    def _query_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")

    try:
        with caplog.at_level(logging.WARNING, logger="service.lifecycle"):
            report = run_lifecycle(engine=engine, model="", now=NOW)
    finally:
        engine.dispose()

    assert len(report.failed_segments) == 2  # both of the experiment's segments
    assert [r.exc_info for r in caplog.records] == [None, None]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert all("left unchanged: database unavailable: " in r.getMessage() for r in caplog.records)


def _a_guardrail_case_in_each_segment(
    api: Any, session: Session, experiment: dict[str, Any]
) -> tuple[dict[str, int], dict[str, int]]:
    """In both segments the hand-written copy converts a tenth as often as the control, over
    enough impressions for the guardrail to judge; returns each segment's ids."""
    assert patch_policy(api, experiment, min_impressions=50).status_code == 200
    tea, parents = ids(experiment, TEA), ids(experiment, PARENTS)
    set_counts(
        session,
        {
            tea["control"]: (1000, 200),
            tea["manual"]: (1000, 20),
            parents["control"]: (1000, 200),
            parents["manual"]: (1000, 20),
        },
    )
    return tea, parents


def test_the_guardrail_pauses_on_a_conversion_event(
    api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    tea, parents = _a_guardrail_case_in_each_segment(api, session, experiment)
    assert variants(session, experiment)[tea["manual"]].status == "active"

    decision = api.decide(experiment["id"], segment=TEA)
    sent = api.post(
        "/v1/events",
        json={"impression_id": decision["impression_id"], "type": "conversion"},
        key="serve",
    )
    assert sent.status_code == 200 and sent.get_json()["accepted"] == 1

    rows = variants(session, experiment)
    assert rows[tea["manual"]].status == "paused"
    assert rows[tea["manual"]].status_reason.startswith("guardrail")  # type: ignore[union-attr]
    assert rows[tea["control"]].status == "active"
    # Only the segment whose counters changed is checked.
    assert rows[parents["manual"]].status == "active"
    trail = api.get(f"/v1/experiments/{experiment['id']}/audit").get_json()["events"]
    pauses = [e for e in trail if e["action"] == "pause"]
    assert [(e["variant_id"], e["segment"]) for e in pauses] == [(tea["manual"], TEA)]
    assert pauses[0]["numbers"]["p_below_control"] >= 0.99


def test_a_guardrail_pause_after_conversions_is_logged(
    api: Any, session: Session, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Live, copy the guardrail took off air between passes was in the audit trail alone: the
    log's pass lines said '0 paused' while two variants had stopped being served."""
    tea, _ = _a_guardrail_case_in_each_segment(api, session, experiment)
    decision = api.decide(experiment["id"], segment=TEA)
    with caplog.at_level(logging.INFO, logger="service.lifecycle"):
        sent = api.post(
            "/v1/events",
            json={"impression_id": decision["impression_id"], "type": "conversion"},
            key="serve",
        )
    assert sent.status_code == 200
    reason = variants(session, experiment)[tea["manual"]].status_reason
    assert (
        f"lifecycle: experiment {experiment['id']}: variant {tea['manual']} of segment {TEA} "
        f"paused after conversions: {reason}"
    ) in caplog.messages


def test_the_guardrail_checks_at_most_its_share_of_segments_per_call_and_the_rest_next(
    app: Any, api: Any, session: Session, experiment: dict[str, Any]
) -> None:
    """A batch of conversions across a thousand segments held its request for a check of each
    (15.6 s on SQLite); the segments past the limit wait for the next calls, none dropped."""
    tea, parents = _a_guardrail_case_in_each_segment(api, session, experiment)
    watch = GuardrailWatch(app.extensions["copybandit.engine"], max_checks=1)
    segments = [segment_id(session, experiment, key) for key in (TEA, PARENTS)]

    first = watch.counters_changed(set(segments))
    rows = variants(session, experiment)
    assert [e.segment_id for e in first] == [min(segments)]
    assert sorted(rows[v].status for v in (tea["manual"], parents["manual"])) == [
        "active",
        "paused",
    ]

    # A call whose own batch changed no counters still checks a segment that was waiting.
    second = watch.counters_changed(set())
    assert [e.segment_id for e in second] == [max(segments)]
    rows = variants(session, experiment)
    assert rows[tea["manual"]].status == rows[parents["manual"]].status == "paused"
    assert watch.counters_changed(set()) == []


def test_segments_left_waiting_are_checked_before_a_later_request_s_own(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oldest first, as README says: taken by id instead, a steady stream of conversions in
    low-numbered segments would keep a high-numbered one waiting for good."""
    watch = GuardrailWatch(app.extensions["copybandit.engine"], max_checks=2)
    checked: list[int] = []

    def check(_session: Session, segment_id: int) -> list[LifecycleEvent]:
        checked.append(segment_id)
        return []

    monkeypatch.setattr(watch, "_check", check)

    watch.counters_changed({7, 8, 9})
    watch.counters_changed({1, 2})
    watch.counters_changed({3})

    # Each call's share in id order, as a pass takes the segments' locks.
    assert checked == [7, 8, 1, 9, 2, 3]


def test_the_guardrail_forgets_a_segment_s_check_once_it_is_due_again(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch kept when it last checked every segment that ever converted, about 100 B each,
    for the life of the process; it now keeps only the checks of the last interval, and checks
    a segment as often as it did."""
    now = [0.0]
    watch = GuardrailWatch(
        app.extensions["copybandit.engine"], max_checks=1_000, clock=lambda: now[0]
    )
    checked: list[int] = []

    def check(_session: Session, segment_id: int) -> list[LifecycleEvent]:
        checked.append(segment_id)
        return []

    monkeypatch.setattr(watch, "_check", check)

    watch.counters_changed(set(range(1, 1_001)))
    now[0] = 0.5
    watch.counters_changed({1, 1_001})
    assert checked == [*range(1, 1_001), 1_001]  # segment 1 was checked half a second ago
    assert len(watch._last) == 1_001

    now[0] = 1.0
    watch.counters_changed({1})
    assert checked[1_001:] == [1]
    assert list(watch._last) == [1_001, 1]

    now[0] = 1.5
    watch.counters_changed({1, 1_001})
    assert checked[1_002:] == [1_001]
    assert list(watch._last) == [1, 1_001]


def test_the_guardrail_s_pauses_stay_readable_when_a_later_segment_s_check_fails(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _a_guardrail_case_in_each_segment(api, session, experiment)
    planned = lifecycle.plan_guardrail
    checked: list[int] = []

    def second_check_fails(*args: Any, **kwargs: Any) -> list[lifecycle.Action]:
        checked.append(1)
        if len(checked) == 2:
            raise RuntimeError("the database went away")
        return planned(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "plan_guardrail", second_check_fails)
    segments = {segment_id(session, experiment, key) for key in (TEA, PARENTS)}
    events = GuardrailWatch(app.extensions["copybandit.engine"]).counters_changed(segments)

    # Before, the second check's rollback expired the first one's pause, and the events endpoint,
    # reading its experiment to drop the snapshot, answered 500 (DetachedInstanceError).
    assert [(e.action, e.experiment_id) for e in events] == [("pause", experiment["id"])]


def test_a_guardrail_pause_another_writer_made_first_is_no_failure(
    app: Any,
    api: Any,
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On SQLite the guardrail plans without a lock: another worker's guardrail (or a pass, or a
    pause by hand) can pause the same variant between its plan and its write."""
    assert patch_policy(api, experiment, min_impressions=50).status_code == 200
    twin = api.add_variant(experiment["id"], TEA, "The kettle for people who love tea.")
    tea = ids(experiment, TEA)
    set_counts(
        session,
        {tea["control"]: (1000, 200), tea["manual"]: (1000, 20), twin["id"]: (1000, 20)},
    )
    engine = app.extensions["copybandit.engine"]
    planned = lifecycle.plan_guardrail

    def paused_elsewhere_meanwhile(*args: Any, **kwargs: Any) -> list[lifecycle.Action]:
        actions = planned(*args, **kwargs)
        with engine.begin() as elsewhere:
            elsewhere.execute(
                sa.update(Variant)
                .where(col(Variant.id) == tea["manual"])
                .values(status="paused", status_reason="another worker's guardrail")
            )
        return actions

    monkeypatch.setattr(lifecycle, "plan_guardrail", paused_elsewhere_meanwhile)
    with caplog.at_level(logging.INFO, logger="service.lifecycle"):
        events = GuardrailWatch(engine).counters_changed({segment_id(session, experiment, TEA)})

    # Before, the check raised "changed during the lifecycle run": an ERROR with a traceback, and
    # the twin, which nothing else had paused, stayed in service.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # Said at INFO, where an operator asking why the audit lacks the pause can find it.
    assert (
        f"lifecycle: pause of variant {tea['manual']} in segment {TEA} skipped: another writer"
        " changed it first"
    ) in [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    rows = variants(session, experiment)
    assert rows[twin["id"]].status == "paused"
    assert rows[tea["manual"]].status_reason == "another worker's guardrail"
    assert [(e.action, e.variant_id) for e in events] == [("pause", twin["id"])]
    assert [(e.action, e.variant_id) for e in lifecycle_events(session, experiment)] == [
        ("pause", twin["id"])
    ]


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def clear_leader(
    session: Session,
    experiment: dict[str, Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tea-lovers' manual arm clearly ahead, and the CLI pointed at the test database."""
    tea = ids(experiment, TEA)
    set_counts(session, {tea["control"]: (1000, 50), tea["manual"]: (1000, 150)})
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_prints_what_it_did(
    session: Session, experiment: dict[str, Any]
) -> None:
    result = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])

    assert result.exit_code == 0, result.output
    # Segments by experiment and key, as the audit trail names them; before, by row id, and a
    # regenerate row read "variant None".
    tea = f"experiment {experiment['id']} segment {TEA}"
    winner = ids(experiment, TEA)["manual"]
    assert f"{tea} variant {winner}: declare_winner: prob_best" in result.output
    assert "None" not in result.output
    assert not [line for line in result.output.splitlines() if line.startswith("job ")]


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_no_generate_orders_no_copy_and_says_what_it_would_have(
    session: Session, experiment: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """It queued the jobs and ran none, and nothing else runs a job a command queued: each stayed
    queued until a pass wrote it off an hour later ("nothing ran it"), its copy ordered again."""
    caplog.set_level(logging.INFO, logger="service.lifecycle")
    for _ in range(2):  # the second orders no more than the first, as nothing was ordered
        result = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])

        assert result.exit_code == 0, result.output
        for key in (TEA, PARENTS):
            place = f"experiment {experiment['id']} segment {key}"
            assert f"{place}: not ordered (--no-generate): " in result.output
            assert f"{place}: regenerate: " not in result.output
        assert "asking the model for 2 more" in result.output
        assert "0 generation jobs queued, 2 not ordered" in result.output
    session.expire_all()
    assert session.exec(select(GenerationJob)).all() == []
    orders = session.exec(select(LifecycleEvent).where(LifecycleEvent.action == "regenerate"))
    assert orders.all() == []
    passes = [r.getMessage() for r in caplog.records if "lifecycle: pass over" in r.getMessage()]
    assert "0 generation jobs ordered, 0 discount folds, 2 not ordered" in passes[-1]


def test_cli_lifecycle_once_judges_a_brief_too_long_by_the_model_it_is_configured_with(
    clear_leader: None,
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COPYBANDIT_MODEL", raising=False)
    held_as_too_long(session, experiment, TEA, "")
    tea = f"experiment {experiment['id']} segment {TEA}: not ordered (--no-generate): "

    held = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])
    assert held.exit_code == 0, held.output
    assert tea not in held.output and "0 generation jobs queued, 1 not ordered" in held.output

    monkeypatch.setenv("COPYBANDIT_MODEL", "/models/longer")
    lifted = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])
    assert lifted.exit_code == 0, lifted.output
    assert tea in lifted.output and "0 generation jobs queued, 2 not ordered" in lifted.output


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_exits_1_when_a_job_it_ran_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_model(_: Any) -> None:
        raise RuntimeError("no model here")

    monkeypatch.setattr(cli, "default_writer", no_model)

    result = CliRunner().invoke(main, ["lifecycle", "--once"])

    # Before, it exited 0 while `copybandit generate` with the same failure exits 1.
    assert result.exit_code == 1, result.output
    # With the why, which was only in the log: "job 1: failed: failed".
    assert "job 1: failed: RuntimeError: no model here\n" in result.output
    assert "2 generation jobs did not succeed: 1, 2" in result.output


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_prints_a_failed_jobs_error_that_begins_on_its_second_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """transformers words a library it misses from a line break on: the job's error is
    "ImportError: \\nAutoModelForCausalLM requires ...", and its first line alone said
    "job 1: failed: ImportError: ", nothing of what failed (the dashboard's note reads on)."""

    def no_torch(_: Any) -> None:
        raise ImportError(
            "\nAutoModelForCausalLM requires the PyTorch library but it was not found in your "
            "environment.\nCheck out the instructions on the installation page."
        )

    monkeypatch.setattr(cli, "default_writer", no_torch)

    result = CliRunner().invoke(main, ["lifecycle", "--once"])

    assert result.exit_code == 1, result.output
    assert (
        "job 1: failed: ImportError: AutoModelForCausalLM requires the PyTorch library but it "
        "was not found in your environment.\n"
    ) in result.output


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_loads_the_model_once_for_all_its_jobs(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each job loaded it again: the pass's two jobs here, two loads of the same weights."""
    from tests.test_generation_service import GOOD, ScriptedWriter

    loaded: list[ScriptedWriter] = []

    def load(_: Any) -> ScriptedWriter:
        loaded.append(ScriptedWriter(GOOD))
        return loaded[-1]

    monkeypatch.setattr(cli, "default_writer", load)

    result = CliRunner().invoke(main, ["lifecycle", "--once"])

    assert result.exit_code == 0, result.output
    assert "job 1: succeeded: " in result.output and "job 2: succeeded: " in result.output
    assert len(loaded) == 1 and len(loaded[0].calls) == 2


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_exits_0_when_a_job_it_ran_was_cancelled(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A marketer's cancel is no failure of the pass: counted as one, it made the cron job exit
    1, "generation job(s) did not succeed", an alert for what someone asked for."""
    from service.job_cancel import cancel_job
    from tests.test_generation_service import GOOD, ScriptedWriter

    class CancelledWhileItSamples(ScriptedWriter):
        def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Any]:
            running = session.exec(select(GenerationJob).where(GenerationJob.status == "running"))
            for job in running.all():
                cancel_job(session=session, job_id=job.id, by="mia@example.com")  # type: ignore[arg-type]
            return super().sample(messages, n, seed)

    monkeypatch.setattr(cli, "default_writer", lambda _: CancelledWhileItSamples(GOOD))

    result = CliRunner().invoke(main, ["lifecycle", "--once"])

    assert result.exit_code == 0, result.output
    said = "cancelled: cancelled by mia@example.com; it had stored no copy yet"
    assert f"job 1: {said}" in result.output and f"job 2: {said}" in result.output
    assert "did not succeed" not in result.output


@pytest.mark.parametrize(
    ("raised", "logged"),
    [
        (
            lambda: sa.exc.OperationalError(
                "SELECT", {}, sqlite3.OperationalError("disk I/O error")
            ),
            "hourly traffic: database unavailable, hours not counted: disk I/O error",
        ),
        (lambda: RuntimeError("a bug"), "hourly traffic: counting failed"),
    ],
    ids=["database-unavailable", "bug"],
)
@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_reports_and_runs_its_jobs_when_counting_the_charts_hours_fails(
    monkeypatch: pytest.MonkeyPatch,
    experiment: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    raised: Callable[[], Exception],
    logged: str,
) -> None:
    """The count ran between the pass and its report: where it raised, the command ended in a
    traceback, its actions unprinted and the jobs the pass queued not run."""

    def no_model(_: Any) -> None:
        raise RuntimeError("no model here")

    def fails(**_: Any) -> None:
        # Made here: an exception made once for the session kept the traceback of its raise,
        # and through its frames the command's jobs, for the rest of the worker's tests.
        raise raised()

    monkeypatch.setattr(cli, "default_writer", no_model)
    monkeypatch.setattr(hourly_traffic, "count_hours", fails)
    result = CliRunner().invoke(main, ["lifecycle", "--once"])

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    tea = f"experiment {experiment['id']} segment {TEA}"
    assert f"{tea} variant {ids(experiment, TEA)['manual']}: declare_winner: " in result.output
    assert "1 experiment, 3 actions, 2 generation jobs queued" in result.output
    said = "failed: RuntimeError: no model here"
    assert f"job 1: {said}" in result.output and f"job 2: {said}" in result.output
    assert (
        "counting the charts' hours failed (logged above); the next run counts them; "
        "2 generation jobs did not succeed: 1, 2"
    ) in result.output
    assert logged in [r.getMessage() for r in caplog.records if r.name == "service.cli"]


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_prints_what_it_did_before_a_later_segment_failed(
    experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = lifecycle.plan_segment

    def busy_parents_fails(arms: list[lifecycle.Arm], *args: Any, **kwargs: Any) -> Any:
        if {a.variant_id for a in arms} == set(ids(experiment, PARENTS).values()):
            raise RuntimeError("the database went away")
        return planned(arms, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "plan_segment", busy_parents_fails)
    result = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])

    # Before, the failure's rollback expired the first segment's audit rows, and reading them
    # once the pass's session had closed raised DetachedInstanceError: no output, a traceback.
    assert result.exit_code == 1, result.output
    tea = f"experiment {experiment['id']} segment {TEA}"
    assert f"{tea} variant {ids(experiment, TEA)['manual']}: declare_winner: " in result.output
    assert "1 experiment, 1 action, 0 generation jobs queued, 1 not ordered" in result.output
    parents = f"experiment {experiment['id']} segment {PARENTS}"
    # "1 segment(s) left unchanged" below the singular "1 experiment, 1 action" above it.
    assert f"1 segment left unchanged after an error (logged above): {parents}" in result.output


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_no_generate_says_nothing_would_be_ordered_in_a_segment_that_failed(
    experiment: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The order it would have made was noted as planned, before the segment's changes failed
    and rolled back: tea-lovers was printed as "not ordered (--no-generate)", and counted so in
    the output and the pass's line, and then as left unchanged after an error."""
    caplog.set_level(logging.INFO, logger="service.lifecycle")

    def fails(*_: Any) -> bool:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(lifecycle, "_declare_winner", fails)
    result = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])

    assert result.exit_code == 1, result.output
    tea = f"experiment {experiment['id']} segment {TEA}"
    parents = f"experiment {experiment['id']} segment {PARENTS}"
    assert f"{tea}: not ordered" not in result.output
    assert f"{parents}: not ordered (--no-generate): " in result.output
    assert "1 experiment, 0 actions, 0 generation jobs queued, 1 not ordered" in result.output
    assert f"1 segment left unchanged after an error (logged above): {tea}" in result.output
    (passed,) = [r.getMessage() for r in caplog.records if "lifecycle: pass over" in r.getMessage()]
    assert "1 segment passed, 1 failed; " in passed and ", 1 not ordered (" in passed


@pytest.mark.usefixtures("clear_leader")
def test_cli_lifecycle_once_exits_1_when_a_segment_failed(
    monkeypatch: pytest.MonkeyPatch, experiment: dict[str, Any]
) -> None:
    def fails(*_: Any, **__: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(lifecycle, "plan_segment", fails)

    result = CliRunner().invoke(main, ["lifecycle", "--once", "--no-generate"])

    # Before, it exited 0: a cron job saw success.
    assert result.exit_code == 1, result.output
    place = f"experiment {experiment['id']} segment"
    named = f"(logged above): {place} {TEA}, {place} {PARENTS}"  # before: "1, 2", the row ids
    assert f"2 segments left unchanged after an error {named}" in result.output
