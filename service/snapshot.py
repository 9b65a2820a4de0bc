"""Each worker's cached view of an experiment's posteriors, so a decision reads no variant rows.

A view is reloaded from the database counters when it is older than the configured TTL, and dropped
at once when this worker changes something the posterior depends on (a conversion, a status
change). Impressions this worker records are applied to its view in memory, from the next block of
posterior draws (bandits.blocks), so a burst of decisions between reloads does not keep favouring
the same arm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlmodel import Session, col, select

from bandits import BetaBernoulliTS
from bandits.blocks import BlockSampler
from service.errors import NotFound
from service.models import Experiment, Segment, Variant, VariantStatus


@dataclass
class SegmentArms:
    segment_id: int
    key: str
    variant_ids: list[int]
    texts: list[str]
    # Hands out one Thompson draw per decision, drawn in blocks (see bandits.blocks).
    sampler: BlockSampler | None
    # P(each arm is chosen) under the posterior as loaded; recorded with every impression.
    propensities: np.ndarray
    arm_of: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.arm_of = {variant_id: arm for arm, variant_id in enumerate(self.variant_ids)}

    @property
    def policy(self) -> BetaBernoulliTS | None:
        return self.sampler.policy if self.sampler is not None else None


@dataclass
class ExperimentView:
    experiment_id: int
    sticky: bool
    segments: dict[str, SegmentArms]
    default_key: str
    loaded_at: float

    def segment(self, key: str | None) -> SegmentArms:
        """Unknown or missing keys fall back to the experiment's first segment."""
        return self.segments.get(key or self.default_key) or self.segments[self.default_key]


class SnapshotCache:
    def __init__(
        self,
        *,
        ttl_seconds: float,
        propensity_samples: int,
        rng: np.random.Generator | int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._samples = propensity_samples
        self._rng = np.random.default_rng(rng)
        self._clock = clock
        self._views: dict[int, ExperimentView] = {}
        # numpy Generators are not thread-safe; threaded servers share this cache.
        self._lock = threading.Lock()

    def get(self, *, session: Session, experiment_id: int) -> ExperimentView:
        view = self.fresh(experiment_id)
        if view is None:
            view = self._load(session, experiment_id)
            self._views[experiment_id] = view
        return view

    def fresh(self, experiment_id: int) -> ExperimentView | None:
        """The cached view while it is younger than the TTL, else None; reads no database."""
        view = self._views.get(experiment_id)
        if view is None or self._clock() - view.loaded_at >= self._ttl:
            return None
        return view

    def invalidate(self, experiment_id: int) -> None:
        self._views.pop(experiment_id, None)

    def select(self, arms: SegmentArms) -> int:
        assert arms.sampler is not None
        return arms.sampler.select()

    def record_impression(self, arms: SegmentArms, arm: int) -> None:
        """An impression is a trial whose reward is 0 until a conversion says otherwise; it
        reaches the posterior at the sampler's next block."""
        if arms.sampler is not None:
            arms.sampler.update(arm, 0.0)

    def _load(self, session: Session, experiment_id: int) -> ExperimentView:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None:
            raise NotFound(f"no experiment with id {experiment_id}", field="experiment")
        segments = session.exec(
            select(Segment)
            .where(Segment.experiment_id == experiment_id)
            .order_by(col(Segment.position))
        ).all()
        active = session.exec(
            select(Variant)
            .where(Variant.experiment_id == experiment_id, Variant.status == VariantStatus.ACTIVE)
            .order_by(col(Variant.id))
        ).all()
        by_segment: dict[int, list[Variant]] = {segment.id: [] for segment in segments}  # type: ignore[misc]
        for variant in active:
            by_segment[variant.segment_id].append(variant)
        views = {s.key: self._arms(s, by_segment[s.id]) for s in segments}  # type: ignore[index]
        return ExperimentView(
            experiment_id=experiment_id,
            sticky=experiment.sticky,
            segments=views,
            default_key=segments[0].key,
            loaded_at=self._clock(),
        )

    def _arms(self, segment: Segment, variants: list[Variant]) -> SegmentArms:
        policy = None
        propensities = np.zeros(0)
        if variants:
            alpha, beta = np.array([v.posterior() for v in variants]).T
            with self._lock:
                policy = BetaBernoulliTS(len(variants), alpha=alpha, beta=beta, rng=self._rng)
                # Floored at the Monte-Carlo resolution: an arm that won no simulated draw can
                # still win a real one, and a recorded propensity of 0 breaks IPS estimators.
                propensities = np.maximum(policy.propensities(self._samples), 1 / self._samples)
        return SegmentArms(
            segment_id=segment.id,  # type: ignore[arg-type]
            key=segment.key,
            variant_ids=[v.id for v in variants],  # type: ignore[misc]
            texts=[v.text for v in variants],
            sampler=BlockSampler(policy, lock=self._lock) if policy is not None else None,
            propensities=propensities,
        )
