"""Each worker's cached view of an experiment's posteriors, so a decision reads no variant rows.

A view is reloaded from the database counters when it is older than the configured TTL, and dropped
at once when this worker changes which copy is served (copy or a segment added, a status change,
the guardrail's pause after conversions). Conversions, this worker's too, reach it at the next
reload (see service.api.serving.events). Impressions this worker records are applied to its view
in memory, from the next block of posterior draws (bandits.blocks), so a burst of decisions between
reloads does not keep favouring the same arm. Each decision's propensity comes with its draw, from
the block it was drawn in.
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

# The largest block of decisions a busy segment draws at once: its pending impressions reach the
# posterior at least this often between reloads.
MAX_BLOCK = 1024


@dataclass
class SegmentArms:
    segment_id: int
    key: str
    variant_ids: list[int]
    texts: list[str]
    # Hands out one Thompson draw per decision with its propensity, drawn in blocks (see
    # bandits.blocks).
    sampler: BlockSampler | None
    arm_of: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.arm_of = {variant_id: arm for arm, variant_id in enumerate(self.variant_ids)}

    @property
    def policy(self) -> BetaBernoulliTS | None:
        return self.sampler.policy if self.sampler is not None else None


@dataclass(frozen=True)
class LoadedSegment:
    """A segment's active variants and their posteriors, as read at the view's load."""

    segment_id: int
    key: str
    variant_ids: list[int]
    texts: list[str]
    alpha: np.ndarray
    beta: np.ndarray


@dataclass
class ExperimentView:
    experiment_id: int
    sticky: bool
    loaded: dict[str, LoadedSegment]
    default_key: str
    loaded_at: float
    # Turns a loaded segment into arms: its sampler and the propensities it records.
    arms_of: Callable[[LoadedSegment], SegmentArms]
    _arms: dict[str, SegmentArms] = field(default_factory=dict)

    def segment(self, key: str | None) -> SegmentArms:
        """Unknown or missing keys fall back to the experiment's first segment, and so does a
        segment with no active copy yet (one just added, or whose copy waits for review): a
        storefront already sending its key had been served the first segment's copy, and got a
        409 for every impression from the moment the segment was added until its copy was live.

        A segment's arms are built at its first decision after a load, not at the load: when each
        segment's arms came with Monte-Carlo propensities (~4 ms a segment), a decision that
        reloaded a 50-segment experiment paid for all fifty (0.4-1.4 s), about once a second per
        worker, and a segment no one asks for still needs no draws."""
        loaded = self.loaded.get(key) if key is not None else None
        if loaded is None or not loaded.variant_ids:
            loaded = self.loaded[self.default_key]
        arms = self._arms.get(loaded.key)
        if arms is None:
            # Two threads may both build it; the first stored is the one every decision uses.
            arms = self._arms.setdefault(loaded.key, self.arms_of(loaded))
        return arms


class SnapshotCache:
    def __init__(
        self,
        *,
        ttl_seconds: float,
        propensity_draws: int,
        rng: np.random.Generator | int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._propensity_draws = propensity_draws
        self._rng = np.random.default_rng(rng)
        self._clock = clock
        self._views: dict[int, ExperimentView] = {}
        self._swept_at = clock()
        # numpy Generators are not thread-safe; threaded servers share this cache.
        self._lock = threading.Lock()

    def get(self, *, session: Session, experiment_id: int) -> ExperimentView:
        view = self.fresh(experiment_id)
        if view is None:
            view = self._load(session, experiment_id)
            self._views[experiment_id] = view
            self._drop_stale()
        return view

    def fresh(self, experiment_id: int) -> ExperimentView | None:
        """The cached view while it is younger than the TTL, else None; reads no database."""
        view = self._views.get(experiment_id)
        if view is None or self._clock() - view.loaded_at >= self._ttl:
            return None
        return view

    def _drop_stale(self) -> None:
        """Forget the views past their TTL, at most once a TTL.

        A stale view is never served again (the next decision reloads it), yet each was kept for
        the life of the worker: every experiment a worker had ever decided for, and experiments are
        never deleted. Measured under `serve`: about 3 KB a worker for a 1-segment experiment, 165
        KB for one of 50 segments with 5 lines each, so a storefront that asked once for each of a
        thousand such experiments held 165 MB in every worker for good. Now a worker holds only
        the experiments decided for in the last one to two TTLs. A sweep walks every view, so it
        runs on a load, which comes at most once a TTL per experiment, and once a TTL at most."""
        now = self._clock()
        if now - self._swept_at < self._ttl:
            return
        self._swept_at = now
        # A copy: another thread may store a view meanwhile. One it stored just after the copy and
        # dropped here is only loaded again by the next decision.
        for experiment_id, view in tuple(self._views.items()):
            if now - view.loaded_at >= self._ttl:
                self._views.pop(experiment_id, None)

    def invalidate(self, experiment_id: int) -> None:
        self._views.pop(experiment_id, None)

    def choose(self, arms: SegmentArms) -> tuple[int, float]:
        """An arm by Thompson sampling, and the probability it had of being chosen."""
        assert arms.sampler is not None
        return arms.sampler.choose()

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
        return ExperimentView(
            experiment_id=experiment_id,
            sticky=experiment.sticky,
            loaded={s.key: _loaded(s, by_segment[s.id]) for s in segments},  # type: ignore[index]
            default_key=segments[0].key,
            loaded_at=self._clock(),
            arms_of=self.arms_for,
        )

    def arms_for(self, segment: LoadedSegment) -> SegmentArms:
        """A loaded segment's arms: a sampler over its posteriors, or none without variants."""
        sampler = None
        if segment.variant_ids:
            with self._lock:
                policy = BetaBernoulliTS(
                    len(segment.variant_ids), alpha=segment.alpha, beta=segment.beta, rng=self._rng
                )
            # Blocks grow to the propensity draws a refill makes anyway, so none are wasted once
            # a segment is busy.
            sampler = BlockSampler(
                policy,
                max_block=max(MAX_BLOCK, self._propensity_draws),
                lock=self._lock,
                propensity_draws=self._propensity_draws,
            )
        return SegmentArms(
            segment_id=segment.segment_id,
            key=segment.key,
            variant_ids=segment.variant_ids,
            texts=segment.texts,
            sampler=sampler,
        )


def _loaded(segment: Segment, variants: list[Variant]) -> LoadedSegment:
    alpha, beta = np.array([v.posterior() for v in variants]).reshape(-1, 2).T
    return LoadedSegment(
        segment_id=segment.id,  # type: ignore[arg-type]
        key=segment.key,
        variant_ids=[v.id for v in variants],  # type: ignore[misc]
        texts=[v.text for v in variants],
        alpha=alpha,
        beta=beta,
    )
