"""The per-worker posterior view: reloaded after its TTL, or when this worker invalidates it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from service.errors import NotFound
from service.models import Variant
from service.snapshot import SnapshotCache


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
    return SnapshotCache(ttl_seconds=1.0, propensity_samples=1000, rng=3, clock=clock)


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
    cache.select(arms)
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


def test_view_carries_propensities_and_default_segment(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    view = cache.get(session=session, experiment_id=experiment["id"])
    assert view.segment(None).key == "tea-lovers"
    assert view.segment("no-such-segment").key == "tea-lovers"
    assert view.segment("busy-parents").key == "busy-parents"
    propensities = view.segment("busy-parents").propensities
    assert propensities.sum() == pytest.approx(1.0)
    assert propensities == pytest.approx([0.5, 0.5], abs=0.06)


def test_unknown_experiment_is_not_found(cache: SnapshotCache, session: Session) -> None:
    with pytest.raises(NotFound):
        cache.get(session=session, experiment_id=4242)


def test_propensities_never_record_zero(
    cache: SnapshotCache, session: Session, experiment: dict[str, Any]
) -> None:
    """An arm that wins no simulated draw can still win a real one; IPS must not divide by 0."""
    strong, weak = (v["id"] for v in experiment["segments"][0]["variants"])
    _set_counters(session, strong, impressions=10_000, conversions=5_000)
    _set_counters(session, weak, impressions=10_000, conversions=10)
    arms = cache.get(session=session, experiment_id=experiment["id"]).segment("tea-lovers")
    assert arms.propensities[0] > 0.99
    assert arms.propensities[1] == 1 / 1000


def test_a_load_builds_only_the_segments_decisions_ask_for(
    cache: SnapshotCache,
    session: Session,
    experiment: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The propensities cost milliseconds a segment; a decision that reloaded a 50-segment
    experiment computed all fifty before answering."""
    from bandits import BetaBernoulliTS

    computed: list[int] = []
    original = BetaBernoulliTS.propensities

    def counting(policy: BetaBernoulliTS, n_samples: int = 10_000) -> np.ndarray:
        computed.append(policy.n_arms)
        return original(policy, n_samples)

    monkeypatch.setattr(BetaBernoulliTS, "propensities", counting)
    view = cache.get(session=session, experiment_id=experiment["id"])
    assert computed == []
    tea = view.segment("tea-lovers")
    assert len(computed) == 1
    # Later decisions in the segment reuse its arms: their sampler carries the in-memory updates.
    assert view.segment("tea-lovers") is tea and view.segment("unknown") is tea
    assert len(computed) == 1
    view.segment("busy-parents")
    assert len(computed) == 2
