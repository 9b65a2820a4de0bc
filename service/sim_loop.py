"""Full-loop simulation: Thompson sampling serves, the lifecycle retires and regenerates, the model
writes challengers, and the scenario's hidden response model decides how well each line sells.

Each round sends traffic through the bandit; then the same `plan_segment` the service runs decides
retirements and how many new lines to ask for, and `generate_variants` writes them (the real model,
or a fast phrase-bank writer for quick runs). A static A/B split of the first round's copy sees the
same traffic, so the table shows what the loop earns round by round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits import BetaBernoulliTS
from bandits.priors import empirical_bayes_prior
from bandits.worlds import Segment, World
from generation import Brief, generate_variants
from generation.writer import Sample, Writer
from service.demo import DEMO
from service.lifecycle import Arm, ServedSince, plan_segment
from service.models import Origin, VariantStatus
from service.policy import LifecyclePolicy

BATCH = 100


class PhraseWriter:
    """A fast stand-in for the model: recombines a bank of phrases, so lines differ in the words
    the response model weighs. Seeded like the real writer."""

    model_id = "phrase-bank"
    _OPENERS = (
        "Ridgeline trail-running shoes:",
        "Meet Ridgeline:",
        "Ridgeline shoes bring",
        "On every trail, Ridgeline gives you",
        "Weekend or race day, Ridgeline means",
    )
    _CLAIMS = (
        "comfort for every mile",
        "grip on wet rock",
        "all-day cushioning",
        "fast, light strides",
        "a rock plate underfoot",
        "comfort and grip that last",
        "quick-drying comfort",
        "sure grip on loose gravel",
    )
    _CLOSERS = (".", " for $129.", "!", ", season after season.", " from the first step.")

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        rng = np.random.default_rng(seed)
        lines = []
        for _ in range(n):
            claims = rng.choice(self._CLAIMS, size=2, replace=False)
            text = (
                f"{rng.choice(self._OPENERS)} {claims[0]} and {claims[1]}"
                f"{rng.choice(self._CLOSERS)}"
            )
            lines.append(
                Sample(
                    text=text, finished=True, logprob=float(-rng.random()), tokens=len(text) // 4
                )
            )
        return lines


@dataclass
class _Copy:
    id: int
    text: str
    origin: str
    rate: float
    alpha: float = 1.0
    beta: float = 1.0
    wins: float = 0.0
    trials: float = 0.0
    status: str = VariantStatus.ACTIVE
    # The segment's impressions when it went live, for the lifecycle's starved_after rule.
    live_since: int = 0

    def arm(self) -> Arm:
        return Arm(
            self.id,
            self.origin,
            self.status,
            int(self.trials),
            int(self.wins),
            self.alpha + self.wins,
            self.beta + self.trials - self.wins,
        )


def _brief(segment: Segment, leaders: tuple[str, ...]) -> Brief:
    personas = {s["key"]: s["description"] for s in DEMO["segments"]}  # type: ignore[index]
    product: dict[str, Any] = DEMO["product"]  # type: ignore[assignment]
    return Brief(
        product_name=product["name"],
        product_description=product["description"],
        segment=personas.get(segment.key, segment.key.replace("-", " ")),
        price=product["price"],
        leaders=leaders,
    )


def full_loop(
    world: World,
    *,
    writer: Writer,
    rounds: int = 6,
    round_impressions: int = 20_000,
    policy: LifecyclePolicy | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the loop and the static A/B side by side; JSON-ready per-round figures."""
    # Brisker than the service defaults, so a few rounds show copy turning over.
    policy = policy or LifecyclePolicy(min_impressions=300, target_active=5, max_active=6)
    rng = np.random.default_rng(seed)
    segments = [s for s in world.segments if s.response is not None]
    if not segments:
        raise ValueError("full-loop mode needs a scenario with response models (text -> rate)")
    shares = np.array([s.share for s in segments]) / sum(s.share for s in segments)
    next_id = iter(range(1, 1_000_000))
    live = {
        s.key: [
            _Copy(next(next_id), t, Origin.MANUAL, s.response.rate(t))  # type: ignore[union-attr]
            for t in s.variants
        ]
        for s in segments
    }
    static_rates = {s.key: np.array([c.rate for c in live[s.key]]) for s in segments}
    served = dict.fromkeys(live, 0)
    history: list[dict[str, Any]] = []
    # Summed from the counts, not rebuilt from the rounded per-round rates (that was off by 2
    # in 46,715 conversions).
    total_loop = total_static = 0.0
    for round_index in range(rounds):
        counts = rng.multinomial(round_impressions, shares)
        loop_conv = static_conv = 0.0
        for segment, count in zip(segments, counts, strict=True):
            loop_conv += _serve(live[segment.key], int(count), rng)
            served[segment.key] += int(count)
            static_conv += float(
                rng.binomial(1, rng.choice(static_rates[segment.key], size=int(count))).sum()
            )
        total_loop += loop_conv
        total_static += static_conv
        changes = [
            _lifecycle(
                segment,
                live[segment.key],
                policy,
                writer,
                seed * 1000 + round_index,
                next_id,
                served[segment.key],
            )
            for segment in segments
        ]
        history.append(
            {
                "round": round_index + 1,
                "loop_rate": round(loop_conv / round_impressions, 5),
                "static_ab_rate": round(static_conv / round_impressions, 5),
                "retired": sum(c["retired"] for c in changes),
                "written": sum(c["written"] for c in changes),
                "best_live_rate": {
                    s.key: round(
                        max(c.rate for c in live[s.key] if c.status == VariantStatus.ACTIVE), 5
                    )
                    for s in segments
                },
            }
        )
        if progress is not None:
            progress(round_index + 1, rounds)
    return {
        "mode": "full-loop",
        "writer": writer.model_id,
        "rounds": history,
        "round_impressions": round_impressions,
        "policy": policy.model_dump(),
        "loop_conversions": round(total_loop),
        "static_ab_conversions": round(total_static),
        "lift": round(total_loop / total_static - 1, 4) if total_static else None,
    }


def _serve(copies: list[_Copy], count: int, rng: np.random.Generator) -> float:
    active = [c for c in copies if c.status == VariantStatus.ACTIVE]
    bandit = BetaBernoulliTS(
        len(active),
        alpha=[c.alpha + c.wins for c in active],
        beta=[c.beta + c.trials - c.wins for c in active],
        rng=rng,
    )
    conversions = 0.0
    for start in range(0, count, BATCH):
        arms = bandit.select(min(BATCH, count - start))
        rewards = (rng.random(arms.size) < np.array([active[a].rate for a in arms])).astype(float)
        bandit.update(arms, rewards)
        for arm, reward in zip(arms.tolist(), rewards.tolist(), strict=True):
            active[arm].trials += 1
            active[arm].wins += reward
        conversions += rewards.sum()
    return conversions


def _lifecycle(
    segment: Segment,
    copies: list[_Copy],
    policy: LifecyclePolicy,
    writer: Writer,
    seed: int,
    next_id: Any,
    served: int,
) -> dict[str, int]:
    by_id = {c.id: c for c in copies}
    retired = written = 0
    actions = plan_segment(
        [c.arm() for c in copies], policy, served_since=_served_since(copies, served)
    )
    for action in actions:
        if action.kind in ("retire", "pause") and action.variant_id is not None:
            by_id[action.variant_id].status = VariantStatus.RETIRED
            retired += 1
        elif action.kind == "regenerate":
            active = sorted(
                (c for c in copies if c.status == VariantStatus.ACTIVE),
                key=lambda c: -(c.alpha + c.wins) / (c.alpha + c.beta + c.trials),
            )
            result = generate_variants(
                _brief(segment, tuple(c.text for c in active[:2])),
                action.numbers["n"],
                writer=writer,
                seed=seed,
                existing=[c.text for c in copies],
            )
            alpha, beta = _new_copy_prior(copies, policy)
            for candidate in result.accepted:
                copies.append(
                    _Copy(
                        next(next_id),
                        candidate.text,
                        Origin.GENERATED,
                        segment.response.rate(candidate.text),  # type: ignore[union-attr]
                        alpha=alpha,
                        beta=beta,
                        live_since=served,
                    )
                )
                written += 1
    return {"retired": retired, "written": written}


def _new_copy_prior(copies: list[_Copy], policy: LifecyclePolicy) -> tuple[float, float]:
    """As the service starts a new line (lifecycle.new_arm_prior): Beta(1, 1) unless the policy
    asks for informed priors. A policy with informed_priors false was fitted priors all the same,
    and its run read as the one with them."""
    if not policy.informed_priors:
        return 1.0, 1.0
    return empirical_bayes_prior(
        [c.wins for c in copies],
        [c.trials for c in copies],
        max_pseudo_count=policy.prior_max_trials,
    )


def _served_since(copies: list[_Copy], served: int) -> ServedSince:
    """As the service counts it (lifecycle._served_since): the segment's impressions since a
    line went live, up to `limit`."""
    by_id = {c.id: c for c in copies}
    return lambda variant_id, limit: min(limit, served - by_id[variant_id].live_since)


def winner_declared_at(
    rates: list[float],
    *,
    policy: LifecyclePolicy,
    impressions: int = 200_000,
    pass_every: int = 1_000,
    seed: int = 0,
) -> int | None:
    """The segment impressions after which the lifecycle declared a winner among fixed copy at
    `rates` (the first the control; nothing regenerated), a pass every `pass_every`
    impressions; None when it declared none within `impressions`. For the starvation figures in
    README ("The lifecycle loop")."""
    rng = np.random.default_rng(seed)
    copies = [
        _Copy(i, f"line {i}", Origin.CONTROL if i == 1 else Origin.MANUAL, rate)
        for i, rate in enumerate(rates, start=1)
    ]
    for served in range(pass_every, impressions + 1, pass_every):
        _serve(copies, pass_every, rng)
        actions = plan_segment(
            [c.arm() for c in copies],
            policy,
            served_since=_served_since(copies, served),
        )
        for action in actions:
            if action.kind == "declare_winner":
                return served
            if action.kind in ("retire", "pause"):
                copies[action.variant_id - 1].status = VariantStatus.RETIRED  # type: ignore[operator]
    return None
