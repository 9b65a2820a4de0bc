"""The per-worker posterior view: reloaded after its TTL, or when this worker invalidates it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from service.errors import NotFound
from service.models import Variant
from service.snapshot import LoadedSegment, SegmentArms, SnapshotCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> SnapshotCache:
    return SnapshotCache(ttl_seconds=1.0, propensity_draws=1000, rng=3, clock=clock)


def _set_counters(session: Session, variant_id: int, impressions: int, conversions: int) -> None:
    session.execute(
        sa.update(Variant)
        .where(Variant.id == variant_id)  # type: ignore[arg-type]
        .values(impressions=impressions, conversions=conversions)
    )
    session.commit()


def _alpha(cache: SnapshotCache, session: Session, experiment_id: int) -> np.ndarray:
    arms = cache.get(session=session, experiment_id=experiment_id).segment("tea-lovers")
    assert arms.policy is not None
    return arms.policy.posterior()[0]


def test_counters_are_reread_only_after_the_ttl(
    cache: SnapshotCache, clock: Clock, session: Session, experiment: dict[str, Any]
) -> None:
    first_variant = experiment["segments"][0]["variants"][0]["id"]
    assert _alpha(cache, session, experiment["id"]).tolist() == [1.0, 1.0]

    _set_counters(session, first_variant, impressions=50, conversions=9)
    clock.now += 0.5
    assert _alpha(cache, session, experiment["id"]).tolist() == [1.0, 1.0]  # still cached
    clock.now += 0.6
    assert _alpha(cache, session, experiment["id"]).tolist() == [10.0, 1.0]


def test_invalidate_forces_a_reload(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    first_variant = experiment["segments"][0]["variants"][0]["id"]
    _alpha(cache, session, experiment["id"])
    _set_counters(session, first_variant, impressions=5, conversions=4)
    cache.invalidate(experiment["id"])
    assert _alpha(cache, session, experiment["id"]).tolist() == [5.0, 1.0]


def test_local_impressions_count_as_trials_from_the_next_block_of_draws(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    arms = cache.get(session=session, experiment_id=experiment["id"]).segment("tea-lovers")
    assert arms.policy is not None
    cache.record_impression(arms, 1)
    cache.record_impression(arms, 1)
    assert arms.policy.posterior()[1].tolist() == [1.0, 1.0]  # pending until the next draw
    cache.choose(arms)
    alpha, beta = arms.policy.posterior()
    assert alpha.tolist() == [1.0, 1.0] and beta.tolist() == [1.0, 3.0]


def test_a_fresh_view_is_handed_out_without_the_database_until_its_ttl(
    cache: SnapshotCache, clock: Clock, session: Session, experiment: dict[str, Any]
) -> None:
    assert cache.fresh(experiment["id"]) is None
    loaded = cache.get(session=session, experiment_id=experiment["id"])
    clock.now += 0.9
    assert cache.fresh(experiment["id"]) is loaded
    clock.now += 0.1
    assert cache.fresh(experiment["id"]) is None
    assert cache.get(session=session, experiment_id=experiment["id"]) is not loaded


def test_unknown_and_missing_segments_fall_back_to_the_first(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    view = cache.get(session=session, experiment_id=experiment["id"])
    assert view.segment(None).key == "tea-lovers"
    assert view.segment("no-such-segment").key == "tea-lovers"
    assert view.segment("busy-parents").key == "busy-parents"


def test_recorded_propensities_match_how_often_each_arm_is_served(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    """Importance weights 1/propensity must average 1 for every arm, as IPS assumes, though the
    worker's own impressions move the posterior between reloads: propensities worked out once at
    the load drifted from what the later blocks served (one arm's weights averaged 1.4)."""
    first, second = (v["id"] for v in experiment["segments"][0]["variants"])
    _set_counters(session, first, impressions=10, conversions=3)
    _set_counters(session, second, impressions=10, conversions=2)
    arms = cache.get(session=session, experiment_id=experiment["id"]).segment("tea-lovers")
    decisions = 40_000
    weights = np.zeros(2)
    for _ in range(decisions):
        arm, propensity = cache.choose(arms)
        assert 0 < propensity <= 1
        weights[arm] += 1 / propensity
        cache.record_impression(arms, arm)
    assert arms.policy is not None and arms.policy.posterior()[1].sum() > 20_000  # it moved
    assert weights / decisions == pytest.approx([1.0, 1.0], abs=0.05)


def test_unknown_experiment_is_not_found(cache: SnapshotCache, session: Session) -> None:
    with pytest.raises(NotFound):
        cache.get(session=session, experiment_id=4242)


def test_a_rarely_chosen_arm_records_its_share_never_zero(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    """IPS divides by the propensity: the weak arm, when a block's draw picks it, records the
    share of that block's draws it won (1 in 1,000 or more), the strong arm nearly 1."""
    strong, weak = (v["id"] for v in experiment["segments"][0]["variants"])
    _set_counters(session, strong, impressions=10_000, conversions=5_000)
    _set_counters(session, weak, impressions=1_000, conversions=480)
    arms = cache.get(session=session, experiment_id=experiment["id"]).segment("tea-lovers")
    recorded: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(20_000):
        arm, propensity = cache.choose(arms)
        recorded[arm].append(propensity)
    assert recorded[1], "the weak arm should win a few draws"
    assert min(recorded[1]) >= 1 / 1000 and max(recorded[1]) < 0.2
    assert min(recorded[0]) > 0.8


def test_a_load_builds_only_the_segments_decisions_ask_for(
    cache: SnapshotCache,
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Arms cost posterior draws; a decision that reloaded a 50-segment experiment once built
    all fifty before answering."""
    built: list[str] = []
    original = SnapshotCache.arms_for

    def counting(self: SnapshotCache, segment: LoadedSegment) -> SegmentArms:
        built.append(segment.key)
        return original(self, segment)

    monkeypatch.setattr(SnapshotCache, "arms_for", counting)
    view = cache.get(session=session, experiment_id=experiment["id"])
    assert built == []
    tea = view.segment("tea-lovers")
    assert built == ["tea-lovers"]
    # Later decisions in the segment reuse its arms: their sampler carries the in-memory updates.
    assert view.segment("tea-lovers") is tea and view.segment("unknown") is tea
    assert built == ["tea-lovers"]
    view.segment("busy-parents")
    assert built == ["tea-lovers", "busy-parents"]


def test_a_worker_keeps_only_the_views_decided_for_within_a_ttl_or_two(
    cache: SnapshotCache, clock: Clock, session: Session, api: Any
) -> None:
    """Every experiment a worker had ever decided for stayed in memory, stale, for good: 165 KB a
    worker for one of 50 segments, and experiments are never deleted."""
    ids = [api.create_experiment(name=f"Launch {n}")["id"] for n in range(30)]
    for experiment_id in ids:
        cache.get(session=session, experiment_id=experiment_id)
        assert len(cache._views) <= 3  # TTL 1 s, a decision every 0.5 s: the last two to three
        clock.now += 0.5
    clock.now -= 0.5
    assert cache.fresh(ids[-1]) is not None  # a view within its TTL is kept
