"""The lifecycle loop: retire losers, pause what the guardrail catches, declare winners, ask the
model for challengers, and write down why.

`plan_segment` decides from numbers alone (pure, testable with fake counters); `run_lifecycle`
applies each segment's plan in one transaction, so a crash mid-run leaves that segment as it was
(the discount fold, when the policy asks for one, commits just before: a fold alone is a whole
state, and its row locks then need not wait out the planning).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import operator
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from bandits import stats
from bandits.priors import discount_factor, empirical_bayes_prior
from service.config import Settings
from service.copy_backoff import copy_backoff, orders_of
from service.db import database_unavailable, rows_changed
from service.errors import first_problem
from service.long_briefs import (
    HOLD_LIFTED,
    hold_lifted,
    hold_said,
    hold_said_ended,
    last_recorded,
    refusal,
)
from service.metrics import Metrics, count
from service.models import (
    Experiment,
    GenerationJob,
    Impression,
    LifecycleEvent,
    Origin,
    Segment,
    Variant,
    VariantStatus,
    utcnow,
)
from service.policy import LifecyclePolicy, policy_of, policy_shown
from service.scheduler import NotStarted
from service.segment_guard import another_stays_active, lock_row, lock_segment

log = logging.getLogger(__name__)

# What a pass's backoff counts from when not told: the interval's default.
DEFAULT_INTERVAL = timedelta(seconds=Settings.lifecycle_interval_seconds)


@dataclass(frozen=True)
class Arm:
    variant_id: int
    origin: str
    status: str
    impressions: int
    conversions: int
    alpha: float
    beta: float

    @classmethod
    def of(cls, variant: Variant) -> Arm:
        return cls(
            variant.id,  # type: ignore[arg-type]
            variant.origin,
            variant.status,
            variant.impressions,
            variant.conversions,
            *variant.posterior(),
        )


# The segment's impressions since a variant went live, counted up to a limit (the count stops
# there): (variant_id, limit) -> impressions.
ServedSince = Callable[[int, int], int]


@dataclass(frozen=True)
class Action:
    kind: str  # "pause", "retire", "declare_winner", "regenerate"
    variant_id: int | None
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def plan_segment(
    arms: Sequence[Arm],
    policy: LifecyclePolicy,
    *,
    winner_id: int | None = None,
    pending: int = 0,
    on_order: int = 0,
    served_since: ServedSince | None = None,
) -> list[Action]:
    """What the lifecycle would do to one segment now. Never leaves it without a live variant,
    never retires or pauses the control.

    `served_since`: asked only of copy starving under the policy's starved_after (see _starved);
    without it, no copy counts as starved.

    `pending`: variants waiting for review; `on_order`: lines that queued or running generation
    jobs will deliver. Both take room under max_active; lines on order also count toward
    target_active, so a pass does not ask again for copy already asked for.

    Probability best, expected loss and the guardrail's P(rate below control) are integrated
    (stats.summarize_exact, stats.prob_below_exact), as the report's are, so a line retired at
    0.0199 under retire_below 0.02, or declared at 0.9502, reads so on the page; from 20,000
    seeded draws they were up to 0.35% off the page's figures, and a line could be retired below
    0.02 that the page showed above it.
    """
    active = [a for a in arms if a.status == VariantStatus.ACTIVE]
    actions: list[Action] = []
    live = {a.variant_id for a in active}
    if len(active) >= 2:
        summary = stats.summarize_exact([a.alpha for a in active], [a.beta for a in active])
        by_id = {a.variant_id: i for i, a in enumerate(active)}
        starved = _starved(active, policy, summary["prob_best"], served_since)
        actions += _guardrail(active, policy, live)
        actions += _retirements(active, policy, summary, by_id, live, starved)
        winner = _winner(active, policy, summary, winner_id, starved)
        if winner is not None:
            actions.append(winner)
    n = copy_to_order(policy, live=len(live), pending=pending, on_order=on_order)
    if n > 0:
        actions.append(
            Action(
                "regenerate",
                None,
                _order_reason(policy, live=len(live), pending=pending, on_order=on_order, n=n),
                {"live": len(live), "pending": pending, "on_order": on_order, "n": n},
            )
        )
    return actions


def _order_reason(
    policy: LifecyclePolicy, *, live: int, pending: int, on_order: int, n: int
) -> str:
    """Why a pass orders `n` lines, with what made them fewer than the target misses: "1 live
    variants, target 4: asking the model for 1 more" was an order cut by the lines on order or by
    the room under max_active, which the reason left out (and one variant read "variants")."""
    said = f"{_counted(live, 'live variant')}, target {policy.target_active}"
    if on_order:
        said += f", {on_order} more on order"
    if n < policy.target_active - live - on_order:
        said += f"; room for {n} under max_active {policy.max_active}"
        if pending:
            said += f", {pending} pending review"
    return f"{said}: asking the model for {n} more"


def copy_to_order(policy: LifecyclePolicy, *, live: int, pending: int, on_order: int) -> int:
    """How many lines a pass orders for a segment with `live` active variants once its plan's
    pauses and retirements are done (see plan_segment for `pending` and `on_order`): 0 when the
    segment is not short of copy, or the policy orders none."""
    if not policy.regenerate:
        return 0
    missing = policy.target_active - live - on_order
    room = policy.max_active - live - pending - on_order
    return max(0, min(missing, room))


def short_of_copy(
    session: Session,
    segments: Sequence[Segment],
    policy: LifecyclePolicy,
    on_order: Mapping[int, Sequence[GenerationJob]],
) -> set[int]:
    """Those of `segments` (ids) a pass would order copy for, by their variants and orders as
    they stand (without the pauses or retirements its plan may add): what a note that the
    lifecycle holds back an order is about. `on_order`: each one's jobs on order, as
    generation_jobs.jobs_on_order reads them, which the page reads once for this and its list of
    them. One query however many segments there are: asked one segment at a time, the experiment
    page sent two per segment."""
    ids = [segment.id for segment in segments]
    if not ids:
        return set()
    statuses: dict[tuple[int, str], int] = {
        (segment_id, status): n
        for segment_id, status, n in session.execute(
            sa.select(col(Variant.segment_id), col(Variant.status), sa.func.count())
            .where(col(Variant.segment_id).in_(ids))
            .group_by(col(Variant.segment_id), col(Variant.status))
        )
    }
    return {
        segment.id
        for segment in segments
        if segment.id is not None
        and copy_to_order(
            policy,
            live=statuses.get((segment.id, VariantStatus.ACTIVE.value), 0),
            pending=statuses.get((segment.id, VariantStatus.PENDING_REVIEW.value), 0),
            on_order=sum(job.n for job in on_order[segment.id]),
        )
        > 0
    }


def plan_guardrail(arms: Sequence[Arm], policy: LifecyclePolicy) -> list[Action]:
    """Only the circuit breaker: cheap enough to run whenever counters change."""
    active = [a for a in arms if a.status == VariantStatus.ACTIVE]
    return _guardrail(active, policy, {a.variant_id for a in active})


def _guardrail(
    active: list[Arm],
    policy: LifecyclePolicy,
    live: set[int],
) -> list[Action]:
    control = next((a for a in active if a.origin == Origin.CONTROL), None)
    if control is None or control.impressions < policy.min_impressions:
        return []
    judged = [a for a in active if a is not control and a.impressions >= policy.min_impressions]
    if not judged:
        return []
    worse = stats.prob_below_exact(
        [a.alpha for a in judged], [a.beta for a in judged], control.alpha, control.beta
    )
    actions = []
    for arm, p in zip(judged, worse, strict=True):
        if p >= policy.guardrail_at and len(live) > 1:
            live.discard(arm.variant_id)
            actions.append(
                Action(
                    "pause",
                    arm.variant_id,
                    f"guardrail: P(rate below control) = "
                    f"{_shown(p, operator.ge, policy.guardrail_at, 4)} >= {policy.guardrail_at}",
                    {
                        "p_below_control": float(_shown(p, operator.ge, policy.guardrail_at, 6)),
                        "guardrail_at": policy.guardrail_at,
                        **_counts(arm),
                        "control_variant_id": control.variant_id,
                        **{f"control_{k}": v for k, v in _counts(control).items()},
                    },
                )
            )
    return actions


def _starved(
    active: list[Arm],
    policy: LifecyclePolicy,
    prob_best: np.ndarray,
    served_since: ServedSince | None,
) -> set[int]:
    """Copy still under min_impressions, with probability best below retire_below, after its
    segment served starved_after x min_impressions impressions since it went live.

    Thompson sampling gives such copy about its probability best as its share of traffic, so it
    may never reach min_impressions: a .02 line beside a .10 one took 2.3M segment impressions to
    reach 200, and meanwhile it was never retired, no copy was ordered in its place and no winner
    was declared. Being that far behind after that many impressions, while the segment had every
    chance to show it more, is the evidence against it; the posterior, not its count, says how
    sure that is. Only these candidates cost the look-up in `served_since`."""
    if policy.starved_after is None or served_since is None:
        return set()
    after = _starved_at(policy)
    return {
        arm.variant_id
        for arm, best in zip(active, prob_best, strict=True)
        if arm.impressions < policy.min_impressions
        and best < policy.retire_below
        and served_since(arm.variant_id, after) >= after
    }


def _retirements(
    active: list[Arm],
    policy: LifecyclePolicy,
    summary: dict[str, np.ndarray],
    by_id: dict[int, int],
    live: set[int],
    starved: set[int],
) -> list[Action]:
    actions = []
    # The current leader always stays: retiring it could leave only worse copy (or a worse control).
    # So does the best of the copy judged so far: new lines' probability best is their prior's,
    # and two at Beta(1, 1) beside a proven 5% line put it at 0.0025, so the line the model had
    # been asked to beat was retired for copy nobody had yet seen convert.
    prob_best = summary["prob_best"]
    judged = [i for i, a in enumerate(active) if a.impressions >= policy.min_impressions]
    kept = {active[int(np.argmax(prob_best))].variant_id}
    if judged:
        kept.add(active[max(judged, key=lambda i: prob_best[i])].variant_id)
    # Worst first, so when the floor of one live variant binds, the better ones are the ones kept.
    for arm in sorted(active, key=lambda a: prob_best[by_id[a.variant_id]]):
        if arm.origin == Origin.CONTROL or arm.variant_id in kept or arm.variant_id not in live:
            continue
        if len(live) <= 1:
            continue
        if arm.impressions < policy.min_impressions and arm.variant_id not in starved:
            continue
        i = by_id[arm.variant_id]
        best, loss = float(summary["prob_best"][i]), float(summary["expected_loss"][i])
        numbers = {
            "prob_best": round(best, 6),
            "expected_loss": round(loss, 6),
            **_counts(arm),
            "min_impressions": policy.min_impressions,
        }
        below, above = policy.retire_below, policy.retire_loss_above
        if arm.variant_id in starved:
            reason = _starved_reason(arm, policy, best)
            numbers["prob_best"] = float(_shown(best, operator.lt, below, 6))
            numbers["retire_below"] = below
            numbers["starved_after"] = policy.starved_after
            numbers["segment_impressions_since_live"] = _starved_at(policy)
        elif best < below:
            reason = f"prob_best {_shown(best, operator.lt, below, 4)} < retire_below {below}"
            numbers["prob_best"] = float(_shown(best, operator.lt, below, 6))
            numbers["retire_below"] = below
        elif above is not None and loss > above:
            reason = (
                f"expected_loss {_shown(loss, operator.gt, above, 5)} > retire_loss_above {above}"
            )
            numbers["expected_loss"] = float(_shown(loss, operator.gt, above, 6))
            numbers["retire_loss_above"] = above
        else:
            continue
        live.discard(arm.variant_id)
        actions.append(Action("retire", arm.variant_id, reason, numbers))
    return actions


def _starved_at(policy: LifecyclePolicy) -> int:
    """The segment impressions after which copy under min_impressions counts as starved."""
    assert policy.starved_after is not None  # asked only of starved copy
    return policy.starved_after * policy.min_impressions


def _starved_reason(arm: Arm, policy: LifecyclePolicy, best: float) -> str:
    below = policy.retire_below
    return (
        f"starved: {_counted(arm.impressions, 'impression')}, under min_impressions "
        f"{policy.min_impressions}, after its segment served {_starved_at(policy)} since it "
        f"went live (starved_after {policy.starved_after}); "
        f"prob_best {_shown(best, operator.lt, below, 4)} < retire_below {below}"
    )


def _winner(
    active: list[Arm],
    policy: LifecyclePolicy,
    summary: dict[str, np.ndarray],
    winner_id: int | None,
    starved: set[int],
) -> Action | None:
    """The leader, once every live variant has min_impressions or is starved (see _starved): the
    control too, which is never retired, stops holding the winner back once starved, as its
    posterior is in the leader's probability best like every other line's. The leader itself
    always needs min_impressions."""
    i = int(np.argmax(summary["prob_best"]))
    waiting = [
        a for a in active if a.impressions < policy.min_impressions and a.variant_id not in starved
    ]
    if waiting or active[i].impressions < policy.min_impressions:
        return None
    best = float(summary["prob_best"][i])
    if best < policy.declare_at or active[i].variant_id == winner_id:
        return None
    at = policy.declare_at
    numbers = {
        "prob_best": float(_shown(best, operator.ge, at, 6)),
        "declare_at": at,
        **_counts(active[i]),
    }
    if starved:
        numbers["starved_not_waited_for"] = sorted(starved)
    return Action(
        "declare_winner",
        active[i].variant_id,
        f"prob_best {_shown(best, operator.ge, at, 4)} >= declare_at {at}",
        numbers,
    )


def _shown(
    value: float, compare: Callable[[float, float], bool], threshold: float, places: int
) -> str:
    """`value` to `places` decimals, or to more where fewer would make `compare(value,
    threshold)`, printed beside it, read false: 0.04995 is 0.0500 at four, and "prob_best 0.0500
    < retire_below 0.05" stood as the reason a variant was retired. The threshold prints exactly
    (str of a float), and so in the end does `value`."""
    for more in range(places, 18):
        shown = f"{value:.{more}f}"
        if compare(float(shown), threshold):
            return shown
    return repr(float(value))


def _counts(arm: Arm) -> dict[str, Any]:
    return {"impressions": arm.impressions, "conversions": arm.conversions}


# --- applying plans -----------------------------------------------------------------------------

SubmitJob = Callable[[int], None]


@dataclass
class RunReport:
    experiments: int = 0
    actions: list[LifecycleEvent] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    # Segments whose pass failed (logged) and were left as they were.
    failed_segments: list[int] = field(default_factory=list)
    # Generation jobs failed as interrupted (see generation_jobs.JOB_STALE_AFTER).
    interrupted_jobs: list[int] = field(default_factory=list)
    # The orders a pass told to order no copy would have made (`lifecycle --once --no-generate`),
    # as their audit rows would read; none of them stored.
    not_ordered: list[LifecycleEvent] = field(default_factory=list)


def run_lifecycle(
    *,
    engine: sa.Engine,
    model: str,
    submit_job: SubmitJob | None = None,
    now: datetime | None = None,
    interval: timedelta = DEFAULT_INTERVAL,
    order_copy: bool = True,
    on_queued: SubmitJob | None = None,
) -> RunReport:
    """One pass over every experiment; each segment's changes commit on their own. `model`: as
    configured (Settings.model), which a brief held as too long for the model is judged against
    (service.long_briefs). `interval`: between passes (Settings.lifecycle_interval_seconds), the
    first wait of a segment whose ordered copy failed (service.copy_backoff). `order_copy` False:
    no job is queued and no order audited, for a pass whose caller runs none; what it would have
    ordered is in the report's `not_ordered`. Queued all the same, nothing ran those jobs, and a
    pass wrote them off as interrupted an hour later. `on_queued`: told each job's id as it is
    queued, before its segment's changes commit (submit_job: once they have), for a caller that
    must end the jobs it ordered should it be stopped (a stop raised in the commit, or just after
    it, left a job stored that submit_job was never told of); an id whose segment then failed
    names no job stored, and on SQLite may be a later job's, another process's."""
    ordering = _Ordering(model, interval, order_copy, on_queued)
    with Session(engine, expire_on_commit=False) as session:
        report, experiments = _begin_pass(session, now)
        _pass_over(session, report, experiments, submit_job, now, ordering)
    return report


def scheduled_pass(
    *,
    engine: sa.Engine,
    model: str,
    submit_job: SubmitJob | None = None,
    interval: timedelta = DEFAULT_INTERVAL,
) -> RunReport:
    """run_lifecycle for the scheduler: a pass that meets an unavailable database before its
    first segment raises NotStarted, and the process holding the slot runs it again at its next
    tick. A PostgreSQL restart that ended the pooled connection a pass started on lost the
    interval's pass."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            report, experiments = _begin_pass(session, None)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            raise NotStarted(str(exc.orig)) from exc
        _pass_over(session, report, experiments, submit_job, None, _Ordering(model, interval))
    return report


@dataclass(frozen=True)
class _Ordering:
    """What a pass judges its orders for copy by: the configured model, which a brief held as too
    long is judged against, and the interval between passes, a backoff's first wait; whether it
    orders any, and whom it tells of each job as it is queued (`run_lifecycle`'s order_copy and
    on_queued)."""

    model: str
    interval: timedelta
    order_copy: bool = True
    on_queued: SubmitJob | None = None


def _begin_pass(session: Session, now: datetime | None) -> tuple[RunReport, Sequence[Experiment]]:
    """Fail the jobs that will never end, then read the experiments; nothing else has changed
    if this raises (failing a job twice fails none)."""
    # Imported here: generation_jobs imports this module (assign_prior).
    from service.generation_jobs import fail_interrupted_jobs

    report = RunReport()
    # First, so the jobs that will never deliver no longer count as copy on order, and their rows
    # say so before the pass orders their copy again.
    report.interrupted_jobs = fail_interrupted_jobs(session=session, now=now or utcnow())
    experiments = session.exec(select(Experiment).order_by(col(Experiment.id))).all()
    return report, experiments


def _pass_over(
    session: Session,
    report: RunReport,
    experiments: Sequence[Experiment],
    submit_job: SubmitJob | None,
    now: datetime | None,
    ordering: _Ordering,
) -> None:
    """Each experiment in turn. Logs a line for each that did something or failed, and one for
    the pass whatever it did: the scheduler's "running for slot" was all the log said of a pass,
    and then a line for every experiment every pass (62 experiments: about 6,000 a day at the
    default interval, nearly all saying nothing happened) buried the lines that said something."""
    started = time.monotonic()
    passed = quiet = 0
    for experiment in experiments:
        report.experiments += 1
        began = time.monotonic()
        mark = _Mark.of(report)
        passed_here = _pass_over_experiment(session, report, experiment, submit_job, now, ordering)
        passed += passed_here
        here = _Tally.since(mark, report, passed=passed_here)
        if here.eventful():
            log.info(
                "lifecycle: experiment %s: %s; %.2f s",
                experiment.id,
                here,
                time.monotonic() - began,
            )
        else:
            quiet += 1
    log.info(
        "lifecycle: pass over %s (%d quiet): %s; %.2f s",
        _counted(report.experiments, "experiment"),
        quiet,
        _Tally.since(_Mark(), report, passed=passed),
        time.monotonic() - started,
    )


def _pass_over_experiment(
    session: Session,
    report: RunReport,
    experiment: Experiment,
    submit_job: SubmitJob | None,
    now: datetime | None,
    ordering: _Ordering,
) -> int:
    """The experiment's segments passed, each applied on its own; how many passed."""
    segments = session.exec(
        select(Segment)
        .where(Segment.experiment_id == experiment.id)
        .order_by(col(Segment.position))
    ).all()
    try:
        policy = policy_of(experiment.policy)
    except ValidationError as exc:
        # Every other experiment still gets its pass (one such policy stopped them all).
        log.error(
            "lifecycle: experiment %s left unchanged: its stored policy does not validate"
            " (%s); PATCH /v1/experiments/%s/policy makes it valid",
            experiment.id,
            first_problem(exc)[0],
            experiment.id,
        )
        report.failed_segments += [s.id for s in segments]  # type: ignore[misc]
        return 0
    passed = 0
    for segment in segments:
        at = now or utcnow()
        folded = False
        try:
            if policy.discount_per_hour is not None:
                # Reported as soon as it commits: a plan that then failed (a lock wait
                # that timed out, say) left the fold done and out of the pass's output.
                fold = fold_segment(session, experiment, segment, at)
                if fold is not None:
                    report.actions.append(fold)
                    folded = True
            events, job_id = apply_segment(
                session,
                experiment,
                segment,
                policy,
                at,
                model=ordering.model,
                interval=ordering.interval,
                not_ordered=None if ordering.order_copy else report.not_ordered,
                on_queued=ordering.on_queued,
            )
        except Exception as exc:
            session.rollback()
            _log_left_unchanged(experiment, segment, exc, folded=folded)
            report.failed_segments.append(segment.id)  # type: ignore[arg-type]
            continue
        passed += 1
        report.actions += events
        if job_id is not None:
            report.jobs.append(job_id)
            if submit_job is not None:
                submit_job(job_id)
    return passed


@dataclass(frozen=True)
class _Mark:
    """How far a pass's report had got: its actions, jobs and failed segments."""

    actions: int = 0
    jobs: int = 0
    failed: int = 0
    not_ordered: int = 0

    @classmethod
    def of(cls, report: RunReport) -> _Mark:
        return cls(
            len(report.actions),
            len(report.jobs),
            len(report.failed_segments),
            len(report.not_ordered),
        )


@dataclass(frozen=True)
class _Tally:
    """What a pass did, over one experiment or all of them, as its log lines say it."""

    actions: Sequence[LifecycleEvent]
    jobs: int
    failed: int
    passed: int
    not_ordered: int = 0

    @classmethod
    def since(cls, mark: _Mark, report: RunReport, *, passed: int) -> _Tally:
        """What the report gained after `mark`; `passed`: the segments passed meanwhile."""
        return cls(
            report.actions[mark.actions :],
            len(report.jobs) - mark.jobs,
            len(report.failed_segments) - mark.failed,
            passed,
            len(report.not_ordered) - mark.not_ordered,
        )

    def eventful(self) -> bool:
        """Whether an experiment's pass is worth a line of its own. A discount fold alone is
        not: it is every pass's bookkeeping where the policy discounts (the dashboard's audit
        page leaves folds out too)."""
        return bool(
            self.failed
            or self.jobs
            or self.not_ordered
            or any(e.action != "discount" for e in self.actions)
        )

    def __str__(self) -> str:
        done = {kind: sum(e.action == kind for e in self.actions) for kind in AUDIT_ACTIONS}
        said = (
            f"{_counted(self.passed, 'segment')} passed, {self.failed} failed; "
            f"{done['retire']} retired, {done['pause']} paused, "
            f"{_counted(done['declare_winner'], 'winner')} declared, "
            f"{_counted(self.jobs, 'generation job')} ordered, "
            f"{_counted(done['discount'], 'discount fold')}"
        )
        if done["hold"]:
            # Its audit row, written where a hold began again with no job to say so, was all a
            # pass did in such a segment, and the line read only zeros.
            said += f", {_counted(done['hold'], 'segment')} held (brief too long for the model)"
        if self.not_ordered:
            # A pass told to order no copy (--no-generate): "0 ordered" alone hid what it found.
            said += f", {self.not_ordered} not ordered (told to order no copy)"
        return said


def _counted(n: int, noun: str) -> str:
    # "1 winners declared" read as a slip in a line people grep and quote.
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _log_left_unchanged(
    experiment: Experiment, segment: Segment, exc: Exception, *, folded: bool
) -> None:
    """Called while `exc` is handled. `folded`: its discount fold committed before the error."""
    where = f"lifecycle: segment {segment.key} of experiment {experiment.id} left unchanged" + (
        " but for its discount fold" if folded else ""
    )
    if database_unavailable(exc):
        # The reason is the news (a read-only file, a lost server), not where in the pass it met
        # it: a traceback per segment buried it.
        log.warning("%s: database unavailable: %s", where, exc.orig)
    else:
        log.exception(where)


def _in_id_order(segment: Segment) -> SelectOfScalar[Variant]:
    """The segment's variants in id order, as event batches update counters: two writers locking
    rows in opposite orders deadlock on PostgreSQL (event batches answered 503, lifecycle passes
    were lost)."""
    return (
        select(Variant)
        .where(Variant.segment_id == segment.id)
        .order_by(col(Variant.id))
        # Rows as they are now, not as this session last loaded them (before the fold, say).
        .execution_options(populate_existing=True)
    )


def fold_segment(
    session: Session, experiment: Experiment, segment: Segment, now: datetime
) -> LifecycleEvent | None:
    """Discount the segment's older evidence (see _fold) and commit, before the plan: the fold's
    row locks then need not wait out the plan's figures.

    The discount is the policy's as it stands under the experiment's lock, which a PATCH of the
    policy takes too: the policy the pass read at its start may have been changed since, and a
    fold after a PATCH that turned discounting off (and cleared every fold) folded again, so the
    posterior then read decayed counts no pass would fold any more (and turning discounting on
    later decayed all the hours since at once, not nothing)."""
    lock_row(session, experiment)
    per_hour = policy_shown(experiment.policy)[0].discount_per_hour
    if per_hour is None:
        session.commit()
        return None
    variants = session.exec(_in_id_order(segment)).all()
    fold = _fold(session, experiment, segment, variants, per_hour, now)
    if fold is not None:
        session.add(fold)
    session.commit()
    if fold is not None:
        count(lambda m: m.lifecycle_actions.labels(fold.action).inc())
        session.expunge(fold)  # as apply_segment's: the plan's rollback must not expire it
    return fold


def apply_segment(
    session: Session,
    experiment: Experiment,
    segment: Segment,
    policy: LifecyclePolicy,
    now: datetime | None = None,
    *,
    guardrail_only: bool = False,
    model: str | None = None,
    interval: timedelta = DEFAULT_INTERVAL,
    not_ordered: list[LifecycleEvent] | None = None,
    on_queued: SubmitJob | None = None,
) -> tuple[list[LifecycleEvent], int | None]:
    """Plan the segment (its fold, when the policy discounts, is fold_segment's) and apply the
    plan in one transaction. `model`: as configured, for a pass, whose order for copy a brief
    held as too long for that model withholds; the guardrail orders none and needs none.
    `interval`: between passes, the first wait after an order for copy failed. `not_ordered`:
    given, the plan's order for copy is not made but appended there, as its audit row would
    read, unstored, once the plan's other changes commit. `on_queued`: told the id of the job
    the plan orders as it is queued, before the commit (run_lifecycle's)."""
    now = now or utcnow()
    in_id_order = _in_id_order(segment)
    events: list[LifecycleEvent] = []
    would_order: list[LifecycleEvent] = []
    # A status change by hand in this segment, or another pass's order for it, commits before the
    # plan reads what it changed (two passes at once on SQLite, where a plain read locks nothing,
    # each counted the other's order as missing: 52 jobs for 30 segments). The guardrail alone
    # orders nothing and its pauses check their own condition; on SQLite the write lock would
    # hold every writer back for its Monte Carlo, about once a second per segment.
    (lock_segment if guardrail_only else lock_row)(session, segment)
    variants = session.exec(in_id_order).all()
    arms = [Arm.of(v) for v in variants]
    if guardrail_only:
        actions = plan_guardrail(arms, policy)
    else:
        actions = plan_segment(
            arms,
            policy,
            winner_id=segment.winner_variant_id,
            pending=sum(v.status == VariantStatus.PENDING_REVIEW for v in variants),
            on_order=_copy_on_order(session, segment),
            served_since=_served_since(session, variants),
        )
        if model is None:
            raise TypeError("apply_segment: a pass orders copy, and needs the configured model")
        actions = _unless_brief_refused(session, experiment, segment, actions, model=model)
        actions = _unless_backing_off(session, segment, actions, now, interval)
        if not_ordered is not None:
            would_order = [
                _audited(experiment, segment, action, now)
                for action in actions
                if action.kind == "regenerate"
            ]
            actions = _without_order(actions)
    job_id = None
    # A pause or retirement that no longer applies is left out of the audit: on SQLite the
    # guardrail plans without a lock, so another worker's guardrail, a pass or a pause by hand can
    # change the variant first. Raising for it logged a traceback as a failed check, and rolled
    # back the segment's other pauses.
    not_applied = [
        action
        for action in sorted(_status_changes(actions), key=lambda a: a.variant_id or 0)
        if not _set_status(session, action, now)
    ]
    for stale in not_applied:
        # Expected of the guardrail on SQLite; in a pass, which planned under the segment's lock,
        # a writer went around the lock (SQL by hand, an older release), and the plan's other
        # actions (a winner, the copy to order) were reckoned with this one done.
        log.log(
            logging.INFO if guardrail_only else logging.WARNING,
            "lifecycle: %s of variant %s in segment %s skipped: another writer changed it first",
            stale.kind,
            stale.variant_id,
            segment.key,
        )
    skipped = {id(stale) for stale in not_applied}
    for action in actions:
        if id(action) in skipped:
            continue
        if action.kind == "declare_winner":
            if not _declare_winner(session, segment, action.variant_id, now):  # type: ignore[arg-type]
                continue
        elif action.kind == "regenerate":
            job = GenerationJob(
                experiment_id=experiment.id,  # type: ignore[arg-type]
                segment_id=segment.id,
                n=action.numbers["n"],
                message="queued by the lifecycle",
            )
            session.add(job)
            session.flush()
            job_id = job.id
            action.numbers["job_id"] = job.id
            if on_queued is not None:
                on_queued(job.id)  # type: ignore[arg-type]
        events.append(_audited(experiment, segment, action, now))
    session.add_all(events)
    session.commit()
    if not_ordered is not None:
        # Once the rest commits: noted as planned, a segment whose changes then failed and rolled
        # back was printed as not ordered, and as left unchanged, both.
        not_ordered += would_order

    def count_actions(m: Metrics) -> None:
        for event in events:
            m.lifecycle_actions.labels(event.action).inc()

    count(count_actions)
    for event in events:
        # The caller's record of what was done, kept out of later transactions: a later segment's
        # rollback expired them, and `lifecycle --once` then died reading them once the session
        # had closed (DetachedInstanceError), before it printed anything or ran its jobs.
        session.expunge(event)
    return events, job_id


def _audited(
    experiment: Experiment, segment: Segment, action: Action, now: datetime
) -> LifecycleEvent:
    """The action's audit row."""
    return LifecycleEvent(
        experiment_id=experiment.id,  # type: ignore[arg-type]
        segment_id=segment.id,
        variant_id=action.variant_id,
        action=action.kind,
        reason=action.reason,
        numbers=action.numbers,
        created_at=now,
    )


def _declare_winner(session: Session, segment: Segment, variant_id: int, now: datetime) -> bool:
    """Declare it only while it is still active: a writer that does not lock the segment first
    (SQL by hand, an older copybandit) can pause it between the plan and this write, and a variant
    paused that way was declared the winner."""
    still_active = sa.exists().where(
        col(Variant.id) == variant_id, col(Variant.status) == VariantStatus.ACTIVE.value
    )
    declared = rows_changed(
        session,
        sa.update(Segment)
        .where(col(Segment.id) == segment.id, still_active)
        .values(winner_variant_id=variant_id, winner_declared_at=now),
    )
    if declared:
        set_committed_value(segment, "winner_variant_id", variant_id)
        set_committed_value(segment, "winner_declared_at", now)
    return declared == 1


def _unless_brief_refused(
    session: Session,
    experiment: Experiment,
    segment: Segment,
    actions: list[Action],
    *,
    model: str,
) -> list[Action]:
    """The plan without its order for copy when a job found the segment's brief, unchanged since,
    too long for the model, still the one configured: every job for it fails, and each pass
    ordered another (loading the model every time). Logged by the first pass that holds back an
    order (_WAITS_LOGGED), as a wait after failed jobs is; the order that ends a hold says what
    changed, as the hold's audit row said why it began."""
    if not any(action.kind == "regenerate" for action in actions):
        return actions
    engine = session.get_bind()
    recorded = last_recorded(session, segment)
    record = None if recorded is None else recorded[0]
    lifted = None if record is None else hold_lifted(record, experiment, segment, model=model)
    if record is None or lifted is not None:
        _WAITS_LOGGED.ended(engine, ("hold", segment.id))  # type: ignore[arg-type]
    if record is None:
        return actions
    if lifted is not None:
        # Said by the first order after it: one that ended unfinished left the record lifted.
        if hold_said_ended(session, segment):
            return actions
        note = f"the hold on a brief too long for the model ended: {_LIFTED_BY[lifted]}"
        return _order_noted(actions, note, {HOLD_LIFTED: lifted})
    why = refusal(record)
    # Logged each pass, a brief held for a month was 2,900 lines of the same words.
    if _WAITS_LOGGED.is_news(engine, ("hold", segment.id), why):  # type: ignore[arg-type]
        log.warning(
            "lifecycle: segment %s of experiment %s gets no new copy: %s",
            segment.key,
            experiment.id,
            why,
        )
    withheld = _without_order(actions)
    if recorded is not None and hold_said_ended(session, segment):
        # Held again with no job to say so: the order that said the hold ended never ran to its
        # end, and the brief (or the model) went back to the one held. The trail's last word
        # was "ended" while no copy came, and the next end went unsaid, as said already.
        reason, numbers = hold_said(record, job_id=recorded[1])
        withheld.append(Action("hold", None, reason, numbers))
    return withheld


def _unless_backing_off(
    session: Session, segment: Segment, actions: list[Action], now: datetime, interval: timedelta
) -> list[Action]:
    """The plan without its order for copy while the segment's last orders failed and the next
    waits (service.copy_backoff); the order that ends a wait says how many failed. Only logged,
    by the first pass that finds the wait (_WAITS_LOGGED): an audit row each pass was the noise
    the failed jobs were, and so was the same warning each pass, up to 96 a day per segment."""
    if not any(action.kind == "regenerate" for action in actions):
        return actions
    backoff = copy_backoff(session, segment, interval=interval)
    if backoff is None or not backoff.holds_at(now, interval):
        _WAITS_LOGGED.ended(session.get_bind(), ("backoff", segment.id))  # type: ignore[arg-type]
    if backoff is None:
        return actions
    if not backoff.holds_at(now, interval):
        numbers = {"failed_in_a_row": backoff.failed_in_a_row}
        if backoff.interrupted:
            numbers["interrupted"] = backoff.interrupted
        return _order_noted(actions, backoff.resumed(), numbers)
    if _WAITS_LOGGED.is_news(session.get_bind(), ("backoff", segment.id), backoff.until):  # type: ignore[arg-type]
        log.warning(
            "lifecycle: segment %s of experiment %s gets no new copy yet: %s",
            segment.key,
            segment.experiment_id,
            backoff.paused(),
        )
    return _without_order(actions)


class _WaitsLogged:
    """The waits this process has logged (a segment's copy backoff, its held brief), by database
    and wait, with what each was logged with: a wait is news when it begins, and again when what
    it says changes (a new failure moves a backoff's end). Per process, so each process that runs
    passes (the scheduler's slot moves between them, and each `lifecycle --once` is one) logs a
    wait once; a database stored none of it. By database: two apps in a process (tests) number
    their segments alike."""

    def __init__(self) -> None:
        self._said: weakref.WeakKeyDictionary[sa.Engine, dict[Hashable, object]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def is_news(self, engine: sa.Engine, wait: Hashable, said: object) -> bool:
        """Whether `wait` saying `said` has not been logged yet; it has been after."""
        with self._lock:
            logged = self._said.setdefault(engine, {})
            news = logged.get(wait) != said
            logged[wait] = said
        return news

    def ended(self, engine: sa.Engine, wait: Hashable) -> None:
        """Forget the wait, over or gone: kept, every segment that ever waited stayed here for
        the life of the process."""
        with self._lock:
            self._said.get(engine, {}).pop(wait, None)


_WAITS_LOGGED = _WaitsLogged()


_LIFTED_BY = {"brief": "the brief changed", "model": "the configured model changed"}


def _without_order(actions: list[Action]) -> list[Action]:
    return [action for action in actions if action.kind != "regenerate"]


def _order_noted(actions: list[Action], note: str, numbers: dict[str, Any]) -> list[Action]:
    """The plan with its order for copy saying `note` after its reason, and `numbers` besides."""
    return [
        dataclasses.replace(
            action,
            reason=f"{action.reason}; {note}",
            numbers={**action.numbers, **numbers},
        )
        if action.kind == "regenerate"
        else action
        for action in actions
    ]


def _status_changes(actions: list[Action]) -> list[Action]:
    return [action for action in actions if action.kind in ("pause", "retire")]


def _served_since(session: Session, variants: Sequence[Variant]) -> ServedSince:
    """The segment's impressions since a variant went live, counted up to a limit: the rows of
    every variant of the segment (the retired ones served some too) stamped since then. Each
    count reads at most `limit` entries of the impression index on (variant_id, created_at), and
    only copy the plan finds starving asks.

    An active variant's updated_at is when it went live: only status changes and a pending
    variant's edits write it (create, approve, resume), so no migration is needed. Impressions
    `copybandit purge` deleted are not counted: copy live for longer than the purge's age is
    found starved later, never sooner."""
    went_live = {v.id: v.updated_at for v in variants}
    segment_variants = list(went_live)

    def served(variant_id: int, limit: int) -> int:
        shown = (
            sa.select(sa.literal(1))
            .select_from(Impression)
            .where(
                col(Impression.variant_id).in_(segment_variants),
                col(Impression.created_at) >= went_live[variant_id],
            )
            .limit(limit)
            .subquery()
        )
        return int(session.execute(sa.select(sa.func.count()).select_from(shown)).scalar_one())

    return served


def _copy_on_order(session: Session, segment: Segment) -> int:
    """Lines the jobs on order for the segment will deliver, so a pass does not order twice."""
    # Imported here: generation_jobs imports this module (assign_prior).
    from service.generation_jobs import jobs_on_order

    (jobs,) = jobs_on_order(session=session, segments=[segment], now=None).values()
    return sum(job.n for job in jobs)


def jobs_it_ordered(session: Session, job_ids: Collection[int]) -> set[int]:
    """Those of the generation jobs a pass ordered (its regenerate events name them); the others
    were started by hand, and a pass orders only what its plan misses, not their copy."""
    return set(orders_of(session, job_ids))


def _fold(
    session: Session,
    experiment: Experiment,
    segment: Segment,
    variants: Sequence[Variant],
    per_hour: float,
    now: datetime,
) -> LifecycleEvent | None:
    """Decay each variant's evidence by the hours since its last fold, then fold in what arrived
    since at full weight (it is at most one interval old). A variant's first fold has nothing to
    decay: all its evidence so far enters at full weight. One UPDATE per row reads and writes the
    counters together, so increments racing with the fold are neither lost nor counted twice.

    A variant is folded only from the fold it was read at: another pass (the scheduler's and
    `copybandit lifecycle --once`, say) that folded it meanwhile has already decayed that
    evidence, and applying this pass's factor too decayed it twice. None when no variant was
    folded, so the audit shows no discount that did not happen."""
    factors = []
    folded = first_folds = 0
    unchanged_since_read: sa.ColumnElement[bool]
    for variant in variants:
        if _left_unfolded(variant):
            continue
        read_at = variant.folded_at
        if read_at is not None and read_at >= now:
            # Folded by a pass that started later: moving folded_at back would decay the same
            # hours again at the next fold.
            continue
        if read_at is None:
            factor = 1.0
            unchanged_since_read = col(Variant.folded_at).is_(None)
        else:
            factor = discount_factor(per_hour, (now - read_at).total_seconds() / 3600)
            unchanged_since_read = col(Variant.folded_at) == read_at
        failures = (
            col(Variant.decayed_failures) * factor
            + (col(Variant.impressions) - col(Variant.conversions))
            - (col(Variant.folded_impressions) - col(Variant.folded_conversions))
        )
        changed = rows_changed(
            session,
            sa.update(Variant)
            .where(col(Variant.id) == variant.id, unchanged_since_read)
            .values(
                decayed_successes=col(Variant.decayed_successes) * factor
                + (col(Variant.conversions) - col(Variant.folded_conversions)),
                # Late conversions of folded impressions can take off more than is left (see
                # Variant.posterior).
                decayed_failures=sa.case((failures < 0, 0.0), else_=failures),
                folded_conversions=col(Variant.conversions),
                folded_impressions=col(Variant.impressions),
                folded_at=now,
            ),
        )
        if not changed:
            continue
        folded += 1
        if read_at is None:
            # The audit says what weighed the evidence: a factor for nothing made a first fold
            # look like a decay (factor_min 0.00072 over a month-old variant kept in full).
            first_folds += 1
        else:
            factors.append(factor)
    if not folded:
        return None
    return LifecycleEvent(
        experiment_id=experiment.id,  # type: ignore[arg-type]
        segment_id=segment.id,
        variant_id=None,
        action="discount",
        reason=f"older evidence weighted by {per_hour} per hour"
        + (f"; {first_folds} folded for the first time, in full" if first_folds else ""),
        numbers={
            "discount_per_hour": per_hour,
            "variants": folded,
            "first_folds": first_folds,
            # Over the variants folded before, whose older evidence was decayed.
            "factor_min": round(min(factors, default=1.0), 6),
            "factor_max": round(max(factors, default=1.0), 6),
        },
        created_at=now,
    )


# Copy that is never served again (retired, rejected): nothing decides from its posterior, and
# its fold was one UPDATE per variant and pass, more with every variant retired.
_OUT_OF_SERVICE = (VariantStatus.RETIRED, VariantStatus.REJECTED)


def _left_unfolded(variant: Variant) -> bool:
    """Out of service, folded once since discounting began, and nothing new since: the passes
    leave it to `posteriors`, which decays it as their folds would have. Its first fold still
    happens, as does a fold of late conversions: each says from when on its evidence decays."""
    return (
        variant.status in _OUT_OF_SERVICE
        and variant.folded_at is not None
        and variant.impressions == variant.folded_impressions
        and variant.conversions == variant.folded_conversions
    )


def posteriors(
    variants: Sequence[Variant], discount_per_hour: float | None
) -> dict[int, tuple[float, float]]:
    """Each variant's posterior by id, out-of-service copy's folded evidence decayed as the folds
    the passes leave out (see _left_unfolded) would have left it: by the hours from its last fold
    to its segment's latest. A late conversion not folded yet counts in full beside it, as it
    would after such a fold; decayed only once folded, the older evidence read as it stood at
    the retirement until the next pass. For readers that show out-of-service copy beside the rest
    (the report, off-policy evaluation); `variants` are whole segments, `discount_per_hour` the
    experiment's."""
    latest: dict[int, datetime] = {}
    for variant in variants:
        if variant.folded_at is not None:
            latest[variant.segment_id] = max(
                variant.folded_at, latest.get(variant.segment_id, variant.folded_at)
            )
    result: dict[int, tuple[float, float]] = {}
    for variant in variants:
        decay, folded_at = 1.0, variant.folded_at
        if (
            discount_per_hour is not None
            and folded_at is not None
            and variant.status in _OUT_OF_SERVICE
        ):
            hours = (latest[variant.segment_id] - folded_at).total_seconds() / 3600
            decay = discount_factor(discount_per_hour, hours)
        # Rows read from the database always have an id.
        result[variant.id or 0] = variant.posterior(decay=decay)
    return result


def _set_status(session: Session, action: Action, now: datetime) -> bool:
    """False when the variant is no longer active, or is its segment's last active one."""
    target = VariantStatus.PAUSED if action.kind == "pause" else VariantStatus.RETIRED
    changed = rows_changed(
        session,
        sa.update(Variant)
        .where(
            col(Variant.id) == action.variant_id,
            col(Variant.status) == VariantStatus.ACTIVE,
            another_stays_active(),
        )
        .values(status=target.value, status_reason=action.reason[:500], updated_at=now),
    )
    return changed == 1


# --- informed priors ----------------------------------------------------------------------------


def assign_prior(session: Session, variant: Variant, policy: LifecyclePolicy) -> None:
    """Start a new variant at its segment's prior and record why; the caller commits."""
    variant.prior_alpha, variant.prior_beta = new_arm_prior(
        session, segment_id=variant.segment_id, policy=policy
    )
    session.add(variant)
    session.flush()
    informed = (variant.prior_alpha, variant.prior_beta) != (1.0, 1.0)
    session.add(
        LifecycleEvent(
            experiment_id=variant.experiment_id,
            segment_id=variant.segment_id,
            variant_id=variant.id,
            action="prior",
            reason=(
                "empirical-Bayes prior from the segment's past variants"
                if informed
                else "uniform Beta(1, 1) prior"
            ),
            numbers={
                "alpha": round(variant.prior_alpha, 6),
                "beta": round(variant.prior_beta, 6),
                "informed_priors": policy.informed_priors,
                "prior_max_trials": policy.prior_max_trials,
            },
        )
    )


def new_arm_prior(
    session: Session, *, segment_id: int, policy: LifecyclePolicy
) -> tuple[float, float]:
    """Beta(1, 1), or the segment's empirical-Bayes prior when the policy asks for it."""
    if not policy.informed_priors:
        return 1.0, 1.0
    history = session.exec(
        select(Variant.conversions, Variant.impressions).where(Variant.segment_id == segment_id)
    ).all()
    # A conversion replayed while a purge had deleted its event but not yet its impression (before
    # `copybandit purge` deleted both in one transaction) counted twice, so a variant purged then
    # can read more conversions than impressions; the prior refused such a history, and every
    # variant added to the segment afterwards answered 500.
    return empirical_bayes_prior(
        [min(c, n) for c, n in history],
        [n for _, n in history],
        max_pseudo_count=policy.prior_max_trials,
    )


# Every kind of row in the audit trail.
AUDIT_ACTIONS = (
    "pause",
    "retire",
    "declare_winner",
    "regenerate",
    "prior",
    "discount",
    "edit",
    "hold",
)
AUDIT_PAGE = 500


def audit_trail(
    session: Session,
    *,
    experiment_id: int,
    limit: int = AUDIT_PAGE,
    before: int | None = None,
    actions: Collection[str] = AUDIT_ACTIONS,
) -> list[LifecycleEvent]:
    """Newest first; `before` an event id: only older ones, the page after the one it ended."""

    # Each action's newest rows (an index range each), then the newest of those. Asked for all
    # the actions at once, the rows were read newest first through every discount fold (one per
    # segment and pass) to find a page of the rest, and PostgreSQL walked the whole table back
    # by id, every experiment's rows, for an experiment that folds: 0.2 s at 590,000 rows.
    def newest(action: str) -> sa.Select[Any]:
        query = select(LifecycleEvent).where(
            LifecycleEvent.experiment_id == experiment_id, LifecycleEvent.action == action
        )
        if before is not None:
            query = query.where(col(LifecycleEvent.id) < before)
        return query.order_by(col(LifecycleEvent.id).desc()).limit(limit).subquery().select()

    # Each action once, as `IN (...)` read them: one named twice was read twice, and none at all
    # made no query SQL can run.
    distinct = sorted(set(actions))
    if not distinct:
        return []
    event = aliased(LifecycleEvent, sa.union_all(*map(newest, distinct)).subquery())
    return list(session.exec(select(event).order_by(col(event.id).desc()).limit(limit)))


# A check is a few reads and a Monte Carlo over the segment's arms, 14 ms on SQLite here: a batch
# of 1,000 conversions in 1,000 segments held its request 15.6 s, half gunicorn's worker timeout.
GUARDRAIL_CHECKS_PER_REQUEST = 20


class GuardrailWatch:
    """Runs the guardrail on segments whose counters just changed, at most once a second each,
    so a burst of conversions costs one check, not one per request; and at most `max_checks`
    segments per call, the rest waiting, oldest first, for the next calls."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        min_interval: float = 1.0,
        max_checks: int = GUARDRAIL_CHECKS_PER_REQUEST,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self.min_interval = min_interval
        self.max_checks = max_checks
        self.clock = clock or time.monotonic
        # When each segment checked in the last `min_interval` was checked, oldest first.
        self._last: OrderedDict[int, float] = OrderedDict()
        # Due but not yet checked, in the order they came due (a dict as an ordered set).
        self._waiting: dict[int, None] = {}
        self._lock = threading.Lock()

    def counters_changed(self, segment_ids: set[int]) -> list[LifecycleEvent]:
        with self._lock:
            # Read under the lock: read before another call forgot a check at a later time, it
            # would find that check gone where its own time still held the segment back.
            now = self.clock()
            self._forget_checks_due_again(now)
            for s in sorted(segment_ids):
                if now - self._last.get(s, -1e18) >= self.min_interval:
                    self._waiting.setdefault(s)
            taken = list(itertools.islice(self._waiting, self.max_checks))
            for s in taken:
                del self._waiting[s]
        # In id order, as a pass takes the segments' locks.
        due = sorted(taken)
        events: list[LifecycleEvent] = []
        if not due:
            return events
        with Session(self.engine, expire_on_commit=False) as session:
            for position, segment_id in enumerate(due):
                self._checked(segment_id, at=now)
                # The conversions that set the check off have committed, and their request
                # answers as stored whatever happens here: the scheduled pass checks again.
                try:
                    events += self._check(session, segment_id)
                except Exception as exc:
                    session.rollback()
                    if not database_unavailable(exc):
                        log.exception("guardrail check failed for segment %s", segment_id)
                        continue
                    # The rest would meet it too: each segment's lock, held by another writer,
                    # had its own lock wait, and a batch over three segments held its worker
                    # 30 s, gunicorn's limit, where a request waits about 10 s at most.
                    log.warning(
                        "guardrail check skipped for segments %s: database unavailable: %s",
                        ", ".join(str(s) for s in due[position:]),
                        exc.orig,
                    )
                    break
        return events

    def _checked(self, segment_id: int, *, at: float) -> None:
        with self._lock:
            self._last[segment_id] = at
            self._last.move_to_end(segment_id)

    def _forget_checks_due_again(self, now: float) -> None:
        """Drop the segments checked `min_interval` or longer ago. Such a segment is due as one
        never checked is, so forgetting it changes no decision; kept, every segment that ever
        converted stayed in `_last` for the life of the process, about 100 B each."""
        while self._last:
            segment_id, checked_at = next(iter(self._last.items()))
            if now - checked_at < self.min_interval:
                # Those after it were checked later (or, by a call that read the clock first and
                # wrote last, a little earlier: kept a while longer, they are due just the same).
                return
            del self._last[segment_id]

    def _check(self, session: Session, segment_id: int) -> list[LifecycleEvent]:
        segment = session.get(Segment, segment_id)
        experiment = session.get(Experiment, segment.experiment_id) if segment else None
        if segment is None or experiment is None:
            return []
        policy, why = policy_shown(experiment.policy)
        if why is not None:
            # Left alone, as the lifecycle leaves it, until a PATCH fixes the policy; its pass
            # logs why, and a traceback per segment each second here told no more.
            return []
        new, _ = apply_segment(session, experiment, segment, policy, guardrail_only=True)
        for event in new:
            # Between passes this is the only word of it: the pass's own line counts its pauses.
            log.info(
                "lifecycle: experiment %s: variant %s of segment %s %s after conversions: %s",
                experiment.id,
                event.variant_id,
                segment.key,
                "paused" if event.action == "pause" else event.action,
                event.reason,
            )
        return new
