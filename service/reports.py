"""GET /v1/experiments/<id>/report: which copy is winning, and how sure we are."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sqlmodel import Session, col, select

from bandits import stats
from service.experiments import get_experiment, segment_variants_of, segments_of, variants_of
from service.lifecycle import posteriors
from service.models import Segment, Variant, VariantStatus, utcnow
from service.policy import policy_shown
from service.schemas import (
    Leader,
    Report,
    SegmentReport,
    ThinLead,
    VariantStats,
    Verdict,
    Winner,
)


def experiment_report(*, session: Session, experiment_id: int) -> Report:
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    # No audit: the report shows none, and each is a generated line's whole prompt to decode.
    variants = variants_of(session=session, experiment_id=experiment_id, with_audit=False)
    policy, policy_error = policy_shown(experiment.policy)
    posterior = posteriors(variants, policy.discount_per_hour)
    # Grouped once: each segment picking its own out of the experiment's every variant was 250-300
    # ms of an experiment of 50 segments of 100 variants.
    by_segment: dict[int, list[Variant]] = defaultdict(list)
    for variant in variants:
        by_segment[variant.segment_id].append(variant)
    segments = [
        _segment_report(
            segment,
            by_segment[segment.id],  # type: ignore[index]
            posterior,
            policy.min_impressions,
        )
        for segment in segments_of(session=session, experiment_id=experiment_id)
    ]
    return Report(
        experiment_id=experiment_id,
        name=experiment.name,
        policy=policy,
        policy_error=policy_error,
        generated_at=utcnow(),
        segments=segments,
    )


def segment_report(*, session: Session, segment: Segment) -> SegmentReport:
    """One segment's part of experiment_report, the same figures, from its own variants alone:
    the CSV export of one segment of 50 ran the Monte Carlo of all 50 (3.4 s of CPU for 100
    variants each). No segment's figures depend on another's: its posteriors are decayed from its
    own latest fold, and its probability best and expected loss are integrated from those alone
    (or, where integration cannot resolve them, drawn from a generator seeded afresh)."""
    experiment = get_experiment(session=session, experiment_id=segment.experiment_id)
    policy, _ = policy_shown(experiment.policy)
    segment_id = segment.id or 0  # a segment read from the database has an id
    variants = segment_variants_of(session=session, segment_id=segment_id, with_audit=False)
    posterior = posteriors(variants, policy.discount_per_hour)
    return _segment_report(segment, variants, posterior, policy.min_impressions)


def serving_winners(session: Session, segments: list[Segment]) -> set[int]:
    """The segments (ids) whose declared winner is still served. Copy paused or retired after
    it won is no segment's winner any more: the report and the dashboard showed it as one, beside
    a leader that was actually winning the traffic."""
    declared: dict[int, int] = {
        s.winner_variant_id: s.id  # type: ignore[misc]
        for s in segments
        if s.winner_variant_id is not None
    }
    if not declared:
        return set()
    serving = session.exec(
        select(col(Variant.id)).where(
            col(Variant.id).in_(declared), Variant.status == VariantStatus.ACTIVE.value
        )
    )
    return {declared[variant_id] for variant_id in serving if variant_id is not None}


def _segment_report(
    segment: Segment,
    variants: Sequence[Variant],
    posterior: dict[int, tuple[float, float]],
    min_impressions: int,
) -> SegmentReport:
    alpha, beta = np.array([posterior[v.id or 0] for v in variants]).reshape(-1, 2).T
    # Probability best is a contest among what can be served; retired copy has left the race.
    # Integrated, not drawn: 20,000 draws of each segment's live copy were 60-100 ms a segment of
    # 43 lines, 3.4-5 s of every view of an experiment page of 50 such segments.
    active = np.array([v.status == VariantStatus.ACTIVE for v in variants], dtype=bool)
    prob_best = np.full(len(variants), np.nan)
    loss = np.full(len(variants), np.nan)
    if active.any():
        summary = stats.summarize_exact(alpha[active], beta[active])
        prob_best[active] = summary["prob_best"]
        loss[active] = summary["expected_loss"]
    rows = []
    if variants:
        mean = stats.posterior_mean(alpha, beta)
        interval = stats.credible_interval(alpha, beta)
        for i, v in enumerate(variants):
            rows.append(
                VariantStats(
                    variant_id=v.id,  # type: ignore[arg-type]
                    text=v.text,
                    origin=v.origin,  # type: ignore[arg-type]
                    status=v.status,  # type: ignore[arg-type]
                    impressions=v.impressions,
                    conversions=v.conversions,
                    rate=v.conversions / v.impressions if v.impressions else None,
                    posterior_mean=float(mean[i]),
                    interval=(float(interval[i, 0]), float(interval[i, 1])),
                    prob_best=None if np.isnan(prob_best[i]) else float(prob_best[i]),
                    expected_loss=None if np.isnan(loss[i]) else float(loss[i]),
                )
            )
    rows.sort(key=lambda row: -1.0 if row.prob_best is None else row.prob_best, reverse=True)
    leader = next(
        (
            Leader(
                variant_id=r.variant_id,
                text=r.text,
                prob_best=r.prob_best,
                impressions=r.impressions,
                proven=r.impressions >= min_impressions,
            )
            for r in rows
            if r.prob_best is not None
        ),
        None,
    )
    winner = None
    winner_id = segment.winner_variant_id
    if (
        winner_id is not None
        and segment.winner_declared_at is not None
        and winner_id in {v.id for v in variants if v.status == VariantStatus.ACTIVE}
    ):
        winner = Winner(variant_id=winner_id, declared_at=segment.winner_declared_at)
    return SegmentReport(
        key=segment.key,
        winner=winner,
        impressions=sum(v.impressions for v in variants),
        conversions=sum(v.conversions for v in variants),
        leader=leader,
        verdict=_verdict(rows, winner, min_impressions),
        variants=rows,
    )


def _verdict(
    rows: list[VariantStats], winner: Winner | None, min_impressions: int
) -> Verdict | None:
    """What a segment's results say, for the report and the dashboard's headline alike: the two
    disagreed when the report named a line served 3 times its leader, where the page said it
    was too early to tell. `rows` are in order of probability best, as the report lists them.

    The leader is "leader" only with min_impressions, the evidence the lifecycle asks of a
    winner; beside a thin leader, the best line that has them is the one the lifecycle keeps
    serving as the best judged so far, not a loser."""
    racing = [row for row in rows if row.prob_best is not None]
    # The lifecycle declares a winner only among two or more live lines: a lone line's
    # probability best of 1 is a race it runs alone, and "no winner yet" promised one.
    alone = len(racing) == 1
    if winner is not None:
        return Verdict(
            kind="winner",
            variant_id=winner.variant_id,
            thin_lead=None,
            alone=alone,
            none_shown=False,
        )
    if not racing:
        return None
    leader = racing[0]
    if leader.impressions >= min_impressions:
        return Verdict(
            kind="leader",
            variant_id=leader.variant_id,
            thin_lead=None,
            alone=alone,
            none_shown=False,
        )
    thin = ThinLead(
        variant_id=leader.variant_id,
        impressions=leader.impressions,
        needed=min_impressions,
        alone=alone,
    )
    proven = next((row for row in racing if row.impressions >= min_impressions), None)
    if proven is None:
        # Lines never shown split probability best by their priors alone (equal priors, evenly):
        # the one on top is ahead of nothing.
        none_shown = all(row.impressions == 0 for row in racing)
        return Verdict(
            kind="early",
            variant_id=leader.variant_id,
            thin_lead=thin,
            alone=alone,
            none_shown=none_shown,
        )
    return Verdict(
        kind="proven", variant_id=proven.variant_id, thin_lead=thin, alone=alone, none_shown=False
    )
