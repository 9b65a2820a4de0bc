"""In-process simulation of bandit policies against a world with hidden true rates.

Runs are vectorised per batch: each batch's impressions are split among segments, each segment's
policy picks arms for its share, and Bernoulli outcomes are drawn from the true rates. Outcomes
reach the policy after an optional exponential delay (a conversion window), so a policy may keep
choosing for a while without knowing how its latest choices did.

Randomness: one ``SeedSequence(seed)`` is split into a *traffic* stream (segment draws, outcome
uniforms, delays) and a *policy* stream (one child per segment); a third child, once the winner
checks' draws, is still split off so a seed's traffic and policies stay what they were. Traffic
draws never depend on the policy's choices, so different policies on the same seed see the same
visitors and the same luck (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bandits._validation import FloatArray, require_count
from bandits.priors import empirical_bayes_prior
from bandits.stats import best_and_loss_exact
from bandits.thompson import BetaBernoulliTS
from bandits.worlds import World

__all__ = [
    "POLICIES",
    "EpsilonGreedy",
    "Oracle",
    "Policy",
    "Thompson",
    "ThompsonInformed",
    "Trace",
    "UniformAB",
    "check_policy_names",
    "compare",
    "lai_robbins_bound",
    "lai_robbins_constant",
    "simulate",
    "world_summary",
]

IntArray = NDArray[np.int64]
History = tuple[ArrayLike, ArrayLike]
Progress = Callable[[int, int], None]

WINNER_THRESHOLD = 0.95
WINNER_CHECK_EVERY = 10  # batches between winner checks


# ---------------------------------------------------------------------------------------------
# Policies


@runtime_checkable
class Policy(Protocol):
    """What :func:`simulate` needs from a policy (one instance per segment)."""

    name: str

    def select(self, n: int) -> IntArray:
        """Arms for the next ``n`` impressions, shape (n,)."""
        ...

    def update(self, arms: ArrayLike, rewards: ArrayLike) -> None:
        """Outcomes that have become known: arms and rewards, shape (k,) each."""
        ...


@runtime_checkable
class HasPosterior(Protocol):
    """A policy with Beta posteriors, whose winner can be declared by prob_best."""

    def posterior(self) -> tuple[FloatArray, FloatArray]: ...


@runtime_checkable
class KnowsRates(Protocol):
    """A policy that is told the true current rates (only the oracle)."""

    def set_true_rates(self, rates: FloatArray) -> None: ...


PolicyFactory = Callable[[int, np.random.Generator, "History | None"], Policy]


class Thompson:
    """Thompson sampling with Beta(1, 1) priors, wrapping :class:`BetaBernoulliTS`.

    Parameters
    ----------
    n_arms : int
    rng : numpy.random.Generator
    history : (successes, trials) or None
        Ignored: every arm starts at Beta(1, 1).
    """

    name = "thompson"

    def __init__(
        self, n_arms: int, rng: np.random.Generator, history: History | None = None
    ) -> None:
        self._ts = BetaBernoulliTS(n_arms, rng=rng)

    def select(self, n: int) -> IntArray:
        """Arms for ``n`` impressions, shape (n,)."""
        return self._ts.select(n)

    def update(self, arms: ArrayLike, rewards: ArrayLike) -> None:
        """Add known outcomes to the posterior; arms and rewards shape (k,)."""
        self._ts.update(arms, rewards)

    def posterior(self) -> tuple[FloatArray, FloatArray]:
        """Posterior (alpha, beta), each shape (n_arms,)."""
        return self._ts.posterior()

    def add_arm(self) -> int:
        """Append an arm at Beta(1, 1); returns its index."""
        return self._ts.add_arm()

    def remove_arm(self, index: int) -> None:
        """Drop arm ``index``; later arms shift down."""
        self._ts.remove_arm(index)


class ThompsonInformed(Thompson):
    """Thompson sampling whose new arms start at the empirical-Bayes prior of arms seen so far.

    Initial arms start at ``empirical_bayes_prior(*history)`` (Beta(1, 1) without a history);
    :meth:`add_arm` fits the prior to the current arms' observed outcomes. In a static world with
    no history and no new arms this behaves exactly like :class:`Thompson`.
    """

    name = "thompson_informed"

    def __init__(
        self, n_arms: int, rng: np.random.Generator, history: History | None = None
    ) -> None:
        alpha, beta = (1.0, 1.0) if history is None else empirical_bayes_prior(*history)
        self._ts = BetaBernoulliTS(n_arms, alpha=alpha, beta=beta, rng=rng)
        self._prior_a = np.full(n_arms, alpha)
        self._prior_b = np.full(n_arms, beta)

    def add_arm(self) -> int:
        """Append an arm at the empirical-Bayes prior of the current arms; returns its index."""
        a, b = self._ts.posterior()
        successes = np.maximum(a - self._prior_a, 0.0)
        trials = np.maximum(successes + b - self._prior_b, successes)
        alpha, beta = empirical_bayes_prior(successes, trials)
        self._prior_a = np.append(self._prior_a, alpha)
        self._prior_b = np.append(self._prior_b, beta)
        return self._ts.add_arm(alpha, beta)

    def remove_arm(self, index: int) -> None:
        """Drop arm ``index``; later arms shift down."""
        self._ts.remove_arm(index)
        self._prior_a = np.delete(self._prior_a, index)
        self._prior_b = np.delete(self._prior_b, index)


class _Counting:
    """Base for policies that keep per-arm observed successes and trials."""

    name = "counting"

    def __init__(
        self, n_arms: int, rng: np.random.Generator, history: History | None = None
    ) -> None:
        self.n_arms = require_count("n_arms", n_arms)
        self._rng = rng
        self.successes = np.zeros(self.n_arms)
        self.trials = np.zeros(self.n_arms)

    def update(self, arms: ArrayLike, rewards: ArrayLike) -> None:
        """Count known outcomes; arms and rewards shape (k,)."""
        idx = np.atleast_1d(np.asarray(arms, dtype=np.intp))
        r = np.atleast_1d(np.asarray(rewards, dtype=np.float64))
        self.successes += np.bincount(idx, weights=r, minlength=self.n_arms)
        self.trials += np.bincount(idx, minlength=self.n_arms)

    def add_arm(self) -> int:
        """Append an unplayed arm; returns its index."""
        self.successes = np.append(self.successes, 0.0)
        self.trials = np.append(self.trials, 0.0)
        self.n_arms += 1
        return self.n_arms - 1

    def remove_arm(self, index: int) -> None:
        """Drop arm ``index``; later arms shift down."""
        if self.n_arms == 1:
            raise ValueError("cannot remove the last arm")
        self.successes = np.delete(self.successes, index)
        self.trials = np.delete(self.trials, index)
        self.n_arms -= 1


class UniformAB(_Counting):
    """Classic A/B/n test: every impression goes to a uniformly random arm."""

    name = "uniform"

    def select(self, n: int) -> IntArray:
        """Uniform random arms, shape (n,)."""
        return self._rng.integers(0, self.n_arms, size=n, dtype=np.int64)


class EpsilonGreedy(_Counting):
    """Greedy on the empirical mean, exploring uniformly with probability ``epsilon``.

    Arms with no known outcome yet are played first (spread evenly over the batch's greedy
    picks); ties for the best mean are broken at random.
    """

    name = "epsilon_greedy"

    def __init__(
        self,
        n_arms: int,
        rng: np.random.Generator,
        history: History | None = None,
        epsilon: float = 0.1,
    ) -> None:
        super().__init__(n_arms, rng, history)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.epsilon = epsilon

    def select(self, n: int) -> IntArray:
        """Arms for ``n`` impressions, shape (n,)."""
        explore = self._rng.random(n) < self.epsilon
        out = self._rng.integers(0, self.n_arms, size=n, dtype=np.int64)
        n_greedy = int(n - explore.sum())
        unplayed = np.flatnonzero(self.trials == 0)
        if unplayed.size:
            greedy = np.resize(self._rng.permutation(unplayed), n_greedy)
        else:
            means = self.successes / self.trials
            best = np.flatnonzero(means == means.max())
            greedy = (
                np.full(n_greedy, best[0]) if best.size == 1 else self._rng.choice(best, n_greedy)
            )
        out[~explore] = greedy
        return out


class Oracle:
    """Always plays the arm with the highest true current rate (it is told the rates)."""

    name = "oracle"

    def __init__(
        self, n_arms: int, rng: np.random.Generator, history: History | None = None
    ) -> None:
        self.n_arms = require_count("n_arms", n_arms)
        self._best = 0

    def set_true_rates(self, rates: FloatArray) -> None:
        """Learn the true rates, shape (n_arms,)."""
        self._best = int(np.argmax(rates))

    def select(self, n: int) -> IntArray:
        """The best arm ``n`` times, shape (n,)."""
        return np.full(n, self._best, dtype=np.int64)

    def update(self, arms: ArrayLike, rewards: ArrayLike) -> None:
        """Ignored: the oracle has nothing to learn."""


POLICIES: dict[str, Callable[..., Policy]] = {
    "thompson": Thompson,
    "thompson_informed": ThompsonInformed,
    "uniform": UniformAB,
    "epsilon_greedy": EpsilonGreedy,
    "oracle": Oracle,
}


# ---------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class Trace:
    """What one simulated run did, batch by batch.

    Attributes
    ----------
    policy : str
    seed : int
    impressions : ndarray of int64, shape (n_batches,)
        Cumulative impressions at the end of each batch.
    conversions : ndarray of int64, shape (n_batches,)
        Cumulative conversions, counted at impression time (whether or not the policy has
        heard about them yet).
    regret : ndarray of float64, shape (n_batches,)
        Cumulative expected regret: sum over impressions of (best current true rate in the
        impression's segment - true rate of the arm shown).
    rate : ndarray of float64, shape (n_batches,)
        Conversions per impression within each batch.
    traffic : ndarray of int64, shape (n_batches, n_segments)
        Impressions each segment got in each batch (the same for every policy on one seed).
    share : dict of str to ndarray of float64, shape (n_batches, n_arms)
        Per segment key: fraction of that batch's segment traffic each arm got; NaN rows for
        batches in which the segment got no traffic.
    total_conversions : int
    total_regret : float
    share_to_best : float
        Fraction of all impressions shown the (current) best arm of their segment.
    impressions_to_winner : int or None
        First cumulative impression count at which, in every segment, the posterior probability
        that the truly best arm is best reached 0.95 (checked every 10 batches and at the end).
        None if never, or if the policy has no posterior.
    """

    policy: str
    seed: int
    impressions: NDArray[np.int64]
    conversions: NDArray[np.int64]
    regret: FloatArray
    rate: FloatArray
    traffic: NDArray[np.int64]
    share: dict[str, FloatArray]
    total_conversions: int
    total_regret: float
    share_to_best: float
    impressions_to_winner: int | None


def _policy_factory(policy_name: str) -> Callable[..., Policy]:
    try:
        return POLICIES[policy_name]
    except KeyError:
        raise ValueError(
            f"unknown policy {policy_name!r}; choose from {', '.join(POLICIES)}"
        ) from None


def check_policy_names(names: Sequence[str]) -> None:
    """ValueError unless each name is a policy of POLICIES, named once: the summary has one row
    per name, so a policy named twice ran twice and showed once."""
    for name in names:
        _policy_factory(name)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"name each policy once; named more than once: {', '.join(repeated)}")


def simulate(
    world: World,
    policy_name: str,
    *,
    impressions: int | None = None,
    seed: int = 0,
    batch: int | None = None,
    progress: Progress | None = None,
) -> Trace:
    """Run one policy (one instance per segment) against ``world``.

    Parameters
    ----------
    world : World
    policy_name : str
        A key of :data:`POLICIES`.
    impressions : int or None
        Total impressions; None uses ``world.impressions``.
    seed : int
        The same seed gives an identical trace; all policies on one seed see the same traffic.
    batch : int or None
        Impressions per batch (the policy is updated between batches); None uses
        ``world.batch``.
    progress : callable (done, total) or None
        Called with impression counts every 50 batches and at the end.

    Returns
    -------
    Trace
    """
    factory = _policy_factory(policy_name)
    total = require_count("impressions", world.impressions if impressions is None else impressions)
    size = require_count("batch", world.batch if batch is None else batch)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    world.check_run_size(impressions=total, batch=size, seeds=1, batch_given=batch is not None)

    traffic_ss, policy_ss, _ = np.random.SeedSequence(int(seed)).spawn(3)
    traffic = np.random.default_rng(traffic_ss)
    segments = world.segments
    n_seg = len(segments)
    policies = [
        factory(seg.n_arms, np.random.default_rng(child))
        for seg, child in zip(segments, policy_ss.spawn(n_seg), strict=True)
    ]
    rates = world.rates(drifted=False)
    drift_at = world.drift_batch(total, size)

    def tell_rates() -> None:
        for pol, r in zip(policies, rates, strict=True):
            if isinstance(pol, KnowsRates):
                pol.set_true_rates(r)

    tell_rates()
    best = np.array([r.max() for r in rates])
    shares = world.shares
    delay = world.delay_mean
    has_posterior = all(isinstance(p, HasPosterior) for p in policies)

    n_batches = math.ceil(total / size)
    cum_imp = np.zeros(n_batches, dtype=np.int64)
    cum_conv = np.zeros(n_batches, dtype=np.int64)
    cum_regret = np.zeros(n_batches)
    batch_rate = np.zeros(n_batches)
    traffic_counts = np.zeros((n_batches, n_seg), dtype=np.int64)
    share = {seg.key: np.full((n_batches, seg.n_arms), np.nan) for seg in segments}
    pend_t: list[FloatArray] = [np.empty(0) for _ in segments]
    pend_a: list[IntArray] = [np.empty(0, dtype=np.int64) for _ in segments]
    pend_r: list[FloatArray] = [np.empty(0) for _ in segments]
    # Outcomes that arrive more than `span` impressions after their batch wait apart, by the
    # block of `span` impressions they arrive in, and join the pending ones when their block
    # begins. Every outcome in one pending list, filtered and grown again each batch, made a long
    # delay quadratic: 1,000,000 impressions with a mean delay as long took 66 s (2 s now).
    span = max(16 * size, 4096)
    later: list[dict[int, list[tuple[FloatArray, IntArray, FloatArray]]]] = [{} for _ in segments]
    joined = 0  # blocks up to this one have joined the pending lists

    conversions = 0
    regret = 0.0
    to_best = 0
    winner: int | None = None
    for b in range(n_batches):
        start = b * size
        n_now = min(size, total - start)
        end = start + n_now
        if b == drift_at:
            rates = world.rates(drifted=True)
            best = np.array([r.max() for r in rates])
            tell_rates()
        counts = traffic.multinomial(n_now, shares) if n_seg > 1 else np.array([n_now])
        traffic_counts[b] = counts
        offset = start
        batch_conv = 0
        for s in range(n_seg):
            c = int(counts[s])
            if c == 0:
                continue
            pol = policies[s]
            arms = np.asarray(pol.select(c), dtype=np.int64)
            true = rates[s][arms]
            rewards = (traffic.random(c) < true).astype(np.float64)
            batch_conv += int(rewards.sum())
            regret += float((best[s] - true).sum())  # exactly 0 for the best arm
            to_best += int(np.count_nonzero(true == best[s]))
            share[segments[s].key][b] = np.bincount(arms, minlength=segments[s].n_arms) / c
            if delay > 0:
                arrive = offset + np.arange(c) + traffic.exponential(delay, c)
                far = arrive > end + span
                if far.any():
                    _file_by_block(later[s], arrive[far], arms[far], rewards[far], span, total)
                    arrive, arms, rewards = arrive[~far], arms[~far], rewards[~far]
                pend_t[s] = np.concatenate([pend_t[s], arrive])
                pend_a[s] = np.concatenate([pend_a[s], arms])
                pend_r[s] = np.concatenate([pend_r[s], rewards])
            else:
                pol.update(arms, rewards)
            offset += c
        if delay > 0:  # deliver every outcome whose arrival time has passed
            for block in range(joined + 1, end // span + 1):
                for s in range(n_seg):
                    chunks = later[s].pop(block, [])
                    pend_t[s] = np.concatenate([pend_t[s], *(t for t, _, _ in chunks)])
                    pend_a[s] = np.concatenate([pend_a[s], *(a for _, a, _ in chunks)])
                    pend_r[s] = np.concatenate([pend_r[s], *(r for _, _, r in chunks)])
            joined = max(joined, end // span)
            for s in range(n_seg):
                due = pend_t[s] <= end
                if due.any():
                    policies[s].update(pend_a[s][due], pend_r[s][due])
                    keep = ~due
                    pend_t[s], pend_a[s], pend_r[s] = (
                        pend_t[s][keep],
                        pend_a[s][keep],
                        pend_r[s][keep],
                    )
        conversions += batch_conv
        cum_imp[b], cum_conv[b], cum_regret[b] = end, conversions, regret
        batch_rate[b] = batch_conv / n_now
        last = b == n_batches - 1
        check = has_posterior and winner is None and ((b + 1) % WINNER_CHECK_EVERY == 0 or last)
        if check and all(
            _prob_truly_best(pol, r) >= WINNER_THRESHOLD
            for pol, r in zip(policies, rates, strict=True)
        ):
            winner = end
        if progress is not None and ((b + 1) % 50 == 0 or last):
            progress(end, total)

    return Trace(
        policy=policy_name,
        seed=int(seed),
        impressions=cum_imp,
        conversions=cum_conv,
        regret=cum_regret,
        rate=batch_rate,
        traffic=traffic_counts,
        share=share,
        total_conversions=conversions,
        total_regret=regret,
        share_to_best=to_best / total,
        impressions_to_winner=winner,
    )


def _file_by_block(
    later: dict[int, list[tuple[FloatArray, IntArray, FloatArray]]],
    arrive: FloatArray,
    arms: IntArray,
    rewards: FloatArray,
    span: int,
    total: int,
) -> None:
    """File outcomes (arrival times, arms, rewards) under the block of `span` impressions each
    arrives in; one that arrives after the run's `total` impressions never does."""
    inside = np.flatnonzero(arrive <= total)
    if not inside.size:
        return
    # Sorted by block, so each block's outcomes are one slice: a mask per block cost a pass over
    # them all for each of the dozens of blocks a long delay spreads one batch over.
    order = inside[np.argsort(arrive[inside] // span, kind="stable")]
    arrive, arms, rewards = arrive[order], arms[order], rewards[order]
    blocks = (arrive // span).astype(np.int64)
    starts = np.flatnonzero(np.diff(blocks, prepend=-1)).tolist()
    for start, stop in zip(starts, [*starts[1:], blocks.size], strict=True):
        mine = slice(start, stop)
        later.setdefault(int(blocks[start]), []).append((arrive[mine], arms[mine], rewards[mine]))


def _prob_truly_best(policy: Policy, rates: FloatArray) -> float:
    """Integrated, as the lifecycle's declare_at and the report's figures are: 1,000 draws were
    0.7% off at 0.95, so a check could cross the threshold on their luck and a run's
    impressions_to_winner came early against the lifecycle it stands for. About 1.5 ms a check of
    10 arms against 1.1 (a run of a million impressions checks ~100 times, 2 s in all)."""
    assert isinstance(policy, HasPosterior)
    alpha, beta = policy.posterior()
    best, _ = best_and_loss_exact(alpha, beta)
    return float(best[int(np.argmax(rates))])


# ---------------------------------------------------------------------------------------------
# Many runs


def _interval(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "low": None, "high": None}
    arr = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(arr, [2.5, 97.5])
    return {"mean": float(arr.mean()), "low": float(low), "high": float(high)}


def _thin(n: int, max_points: int) -> list[NDArray[np.intp]]:
    """Split range(n) into at most ``max_points`` consecutive bins."""
    return [b for b in np.array_split(np.arange(n), min(n, max_points)) if b.size]


def _json_floats(values: Iterable[float]) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), 8) for v in values]


def compare(
    world: World,
    policies: Iterable[str],
    *,
    impressions: int | None = None,
    seeds: int | Sequence[int] | None = None,
    batch: int | None = None,
    progress: Progress | None = None,
    max_points: int = 200,
) -> dict[str, Any]:
    """Run several policies over several seeds and summarise, JSON-ready.

    Intervals are empirical 2.5th-97.5th percentiles over seeds (the spread of single runs, not a
    confidence interval for the mean). Regret is expected regret against the best current true
    rate, which is regret against the oracle (the oracle's own regret is 0, drift included,
    because drift happens on a batch boundary and the oracle is told at once).

    Parameters
    ----------
    world : World
    policies : iterable of str
        Keys of :data:`POLICIES`.
    impressions, batch : int or None
        None uses the world's defaults.
    seeds : int, sequence of int, or None
        An int ``k`` means seeds ``0 .. k-1``; None uses ``world.seeds``.
    progress : callable (done, total) or None
        Called every 50 batches of each run and at its end, with impressions simulated so far
        and in all.
    max_points : int
        Curves are thinned to at most this many points: regret at each point's last batch, rate
        and share over the impressions of its batches.

    Returns
    -------
    dict
        ``{"world", "impressions", "batch", "seeds", "interval", "policies": {name: {
        "conversions", "regret", "share_to_best": {"mean", "low", "high"},
        "impressions_to_winner": {"mean", "low", "high", "declared", "runs"}}},
        "curves": {"impressions": [...], "regret": {name: [...]}, "rate": {name: [...]},
        "share": {name: {"segment", "variants", "values": [[per arm] per point]}}},
        "lai_robbins_constant": {segment key: float}}``. Winner statistics are over the runs
        that declared a winner (None where none did).
    """
    names = list(policies)
    check_policy_names(names)
    total = require_count("impressions", world.impressions if impressions is None else impressions)
    size = require_count("batch", world.batch if batch is None else batch)
    count = len(seeds) if isinstance(seeds, Sequence) else world.seeds if seeds is None else seeds
    # Before the seeds are listed: a count of 10**12 ended in a MemoryError there.
    world.check_run_size(impressions=total, batch=size, seeds=count, batch_given=batch is not None)
    seed_list = [int(s) for s in seeds] if isinstance(seeds, Sequence) else list(range(count))
    if not seed_list:
        raise ValueError("seeds must name at least one seed")

    n_batches = math.ceil(total / size)
    bins = _thin(n_batches, max_points)
    first = world.segments[0]
    done, grand_total = 0, total * len(seed_list) * len(names)
    summary: dict[str, Any] = {}
    curves: dict[str, Any] = {
        "impressions": [int(min((b[-1] + 1) * size, total)) for b in bins],
        "regret": {},
        "rate": {},
        "share": {},
    }
    for name in names:
        traces: list[Trace] = []
        for seed in seed_list:
            # Passed into the run, not called after it: one long run (--seeds 1, a large
            # --impressions) held the bar at 0% until it ended. The run reports its end too.
            run_progress = (
                None
                if progress is None
                else lambda d, _t, before=done: progress(before + d, grand_total)
            )
            traces.append(
                simulate(
                    world, name, impressions=total, seed=seed, batch=size, progress=run_progress
                )
            )
            done += total
        winners = [t.impressions_to_winner for t in traces if t.impressions_to_winner is not None]
        summary[name] = {
            "conversions": _interval([t.total_conversions for t in traces]),
            "regret": _interval([t.total_regret for t in traces]),
            "share_to_best": _interval([t.share_to_best for t in traces]),
            "impressions_to_winner": {
                **_interval([float(w) for w in winners]),
                "declared": len(winners),
                "runs": len(traces),
            },
        }
        regret = np.mean([t.regret for t in traces], axis=0)
        # Rate and share over the impressions of each point, not a mean of its batches' own: a
        # batch of 1 impression (the last of 1,001 in batches of 100) weighed as much as one of
        # 100, and its 0 or 1 moved the curve's last point by a tenth.
        shown = np.sum([t.traffic[:, 0] for t in traces], axis=0)
        arms_shown = np.sum(
            [np.nan_to_num(t.share[first.key]) * t.traffic[:, [0]] for t in traces], axis=0
        )
        converted = np.sum([np.diff(t.conversions, prepend=0) for t in traces], axis=0)
        served = np.diff(traces[0].impressions, prepend=0) * len(traces)
        with np.errstate(divide="ignore", invalid="ignore"):  # no traffic to the segment there
            share_pts = [arms_shown[b].sum(axis=0) / shown[b].sum() for b in bins]
        curves["regret"][name] = _json_floats(regret[b[-1]] for b in bins)
        curves["rate"][name] = _json_floats(converted[b].sum() / served[b].sum() for b in bins)
        curves["share"][name] = {
            "segment": first.key,
            "variants": list(first.variants),
            "values": [_json_floats(p) for p in share_pts],
        }
    return {
        "world": world.name,
        "impressions": total,
        "batch": size,
        "seeds": seed_list,
        "interval": "2.5th-97.5th percentile over seeds",
        "policies": summary,
        "curves": curves,
        "lai_robbins_constant": {
            seg.key: lai_robbins_constant(seg.rates) for seg in world.segments
        },
    }


# ---------------------------------------------------------------------------------------------
# Theory


def _bernoulli_kl(p: FloatArray, q: float) -> FloatArray:
    """KL(Bernoulli(p) || Bernoulli(q)), elementwise; inf where q is 0 or 1 and p differs."""
    # log1p of the relative difference, not log of the ratio: for close rates the ratio's
    # rounding error outweighed the KL itself, which came out negative. But log of the ratio for
    # p far below q: there (p - q) / q rounds to -1 (p = 1e-20, q = 0.1), log1p made -inf, and
    # the arm's term, and so a constant of 0.95, came out 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(p < q / 2, np.log(p / q), np.log1p((p - q) / q))
        a = np.where(p > 0, p * log_ratio, 0.0)
        b = np.where(p < 1, (1 - p) * np.log1p((q - p) / (1 - q)), 0.0)
    result: FloatArray = a + b
    return result


def lai_robbins_constant(rates: ArrayLike) -> float:
    """Lai-Robbins constant: sum over suboptimal arms of (mu* - mu_i) / KL(mu_i || mu*).

    Any consistent policy's expected regret after T impressions is asymptotically at least this
    constant times ln T (Bernoulli arms).

    Parameters
    ----------
    rates : array_like, shape (n_arms,)
        True rates in [0, 1].

    Returns
    -------
    float
        0.0 when every arm is optimal (or the best rate is 1, where the KL is infinite). An arm
        whose rate equals the best's up to rounding (math.isclose) is an optimal arm.
    """
    mu = np.asarray(rates, dtype=np.float64)
    if mu.ndim != 1 or mu.size == 0 or not np.all((mu >= 0) & (mu <= 1)):
        raise ValueError(f"rates must be a non-empty 1-D array in [0, 1], got {rates!r}")
    star = float(mu.max())
    # Rates a rounding step apart (0.3 and 0.1 + 0.2) made a huge or negative constant: the
    # gap over a KL that is all rounding error.
    sub = np.array([m for m in mu if not math.isclose(m, star)])
    if sub.size == 0:
        return 0.0
    kl = _bernoulli_kl(sub, star)
    return float(np.sum((star - sub) / kl))


def lai_robbins_bound(rates: ArrayLike, impressions: int | ArrayLike) -> float | FloatArray:
    """Asymptotic regret lower bound ``lai_robbins_constant(rates) * ln(T)``.

    Parameters
    ----------
    rates : array_like, shape (n_arms,)
    impressions : int or array_like of shape (k,)
        T, the horizon(s), >= 1.

    Returns
    -------
    float, or ndarray of float64 of shape (k,) for an array of horizons
    """
    t = np.asarray(impressions, dtype=np.float64)
    if np.any(t < 1):
        raise ValueError(f"impressions must be >= 1, got {impressions!r}")
    bound = lai_robbins_constant(rates) * np.log(t)
    return float(bound) if bound.ndim == 0 else bound


def world_summary(world: World) -> dict[str, Any]:
    """The world's true rates, per segment, JSON-ready (what the oracle knows)."""
    out: dict[str, Any] = {}
    for i, seg in enumerate(world.segments):
        entry: dict[str, Any] = {
            "share": seg.share,
            "variants": list(seg.variants),
            "rates": [float(r) for r in seg.rates],
            "best": int(np.argmax(seg.rates)),
        }
        if world.drift is not None and i in world.drift.rates:
            entry["rates_after_drift"] = [float(r) for r in world.drift.rates[i]]
        out[seg.key] = entry
    return out
