"""bandits.priors (empirical-Bayes prior, discounting) and stats.prob_below (drawn and exact)."""

from __future__ import annotations

import math
from statistics import fmean, pvariance
from typing import Any

import numpy as np
import pytest

from bandits import stats
from bandits.priors import discount_factor, empirical_bayes_prior


def by_hand(successes: list[int], trials: list[int], cap: float) -> tuple[float, float]:
    """The method of moments as the docstring states it, written out independently."""
    m = (sum(successes) + 1) / (sum(trials) + 2)
    rates = [s / n for s, n in zip(successes, trials, strict=True)]
    between = pvariance(rates) - fmean(m * (1 - m) / n for n in trials)
    concentration = min(m * (1 - m) / between - 1, cap) if between > 0 else cap
    return m * concentration, (1 - m) * concentration


HISTORIES = [
    pytest.param([10, 30, 20], [1000, 1000, 1000], 20.0, id="capped-at-20"),
    pytest.param([10, 30, 20], [1000, 1000, 1000], 10_000.0, id="uncapped-425"),
    pytest.param([10, 100, 300], [1000, 1000, 1000], 20.0, id="wide-spread-7"),
    pytest.param([5, 40, 12, 90], [200, 800, 300, 1500], 100.0, id="unequal-trials"),
]


@pytest.mark.parametrize(("successes", "trials", "cap"), HISTORIES)
def test_method_of_moments_by_hand(successes: list[int], trials: list[int], cap: float) -> None:
    alpha, beta = empirical_bayes_prior(successes, trials, max_pseudo_count=cap)
    want_alpha, want_beta = by_hand(successes, trials, cap)
    assert alpha == pytest.approx(want_alpha, rel=1e-9)
    assert beta == pytest.approx(want_beta, rel=1e-9)
    pooled = (sum(successes) + 1) / (sum(trials) + 2)
    assert alpha / (alpha + beta) == pytest.approx(pooled, rel=1e-12)


def test_the_worked_example_values() -> None:
    # m = 61/3002; rate variance 2e-4/3; binomial noise m(1-m)/1000: concentration ~424.7.
    m = 61 / 3002
    between = 2e-4 / 3 - m * (1 - m) / 1000
    concentration = m * (1 - m) / between - 1
    assert 424 < concentration < 426
    alpha, beta = empirical_bayes_prior([10, 30, 20], [1000] * 3, max_pseudo_count=1000)
    assert (alpha, beta) == pytest.approx((m * concentration, (1 - m) * concentration))
    assert empirical_bayes_prior([10, 30, 20], [1000] * 3) == pytest.approx((20 * m, 20 * (1 - m)))


@pytest.mark.parametrize("cap", [0.5, 5.0, 20.0, 1000.0])
@pytest.mark.parametrize(
    ("successes", "trials"),
    [
        ([20, 20, 20], [1000, 1000, 1000]),
        ([19, 21, 20], [1000, 1000, 1000]),
        ([10, 30, 20], [1000, 1000, 1000]),
        ([0, 500, 1000], [1000, 1000, 1000]),
        ([3, 9], [10, 10]),
    ],
)
def test_never_worth_more_than_the_cap(successes: list[int], trials: list[int], cap: float) -> None:
    alpha, beta = empirical_bayes_prior(successes, trials, max_pseudo_count=cap)
    assert alpha > 0 and beta > 0
    assert alpha + beta <= cap * (1 + 1e-12)


def test_a_cap_below_the_concentration_floor_is_still_a_cap() -> None:
    # The policy accepts any prior_max_trials > 0; the docstring promises alpha + beta <= cap.
    alpha, beta = empirical_bayes_prior([20, 21, 19], [1000, 1000, 1000], max_pseudo_count=1e-4)
    assert alpha > 0 and beta > 0
    assert alpha + beta <= 1e-4 * (1 + 1e-12)


@pytest.mark.parametrize("cap", [math.ulp(0.0), 1e-320, 1e-300])
def test_a_cap_so_small_that_a_product_underflows_still_gives_positive_parameters(
    cap: float,
) -> None:
    # A zero parameter made every later draw for the segment raise (decide answered 500).
    alpha, beta = empirical_bayes_prior([20, 21, 19], [1000, 1000, 1000], max_pseudo_count=cap)
    assert alpha > 0 and beta > 0
    assert alpha + beta <= cap + 2 * math.ulp(0.0)


def test_a_widely_spread_history_gives_a_prior_whose_draws_are_not_all_zero() -> None:
    # A 0/1000 and a 5/10 arm: the method of moments asks for almost no concentration, and the
    # fit was Beta(5.9e-6, 9.9e-4), which drew exactly 0.0 99% of the time; a new variant's
    # draws then tied with every other zero and prob_best split them at random.
    alpha, beta = empirical_bayes_prior([0, 5], [1000, 10])
    assert alpha + beta == pytest.approx(20.0)  # the cap wins over the floor ...
    assert alpha / (alpha + beta) == pytest.approx(6 / 1012)  # ... at the pooled mean
    after_ten_misses = np.random.default_rng(0).beta(alpha, beta + 10, size=200_000)
    assert np.count_nonzero(after_ten_misses == 0.0) == 0
    # Where the cap allows, neither parameter falls below the floor.
    alpha, beta = empirical_bayes_prior([0, 5], [1000, 10], max_pseudo_count=1000)
    assert alpha == pytest.approx(0.5) and beta > 0.5
    assert alpha / (alpha + beta) == pytest.approx(6 / 1012)


@pytest.mark.parametrize("cap", [1.0, 20.0, 333.0])
def test_arms_that_agree_within_noise_get_exactly_the_cap(cap: float) -> None:
    alpha, beta = empirical_bayes_prior([20, 21, 19], [1000, 1000, 1000], max_pseudo_count=cap)
    assert alpha + beta == pytest.approx(cap, rel=1e-12)
    assert alpha / (alpha + beta) == pytest.approx(61 / 3002)


@pytest.mark.parametrize(
    ("successes", "trials", "min_arms"),
    [
        ([], [], 2),
        ([5], [100], 2),
        ([5, 0, 0], [100, 0, 0], 2),
        ([5, 9], [100, 100], 3),
    ],
)
def test_too_few_arms_with_trials_give_the_uniform_prior(
    successes: list[int], trials: list[int], min_arms: int
) -> None:
    assert empirical_bayes_prior(successes, trials, min_arms=min_arms) == (1.0, 1.0)


def test_arms_with_no_trials_are_ignored() -> None:
    with_empty = empirical_bayes_prior([10, 0, 100, 0, 300], [1000, 0, 1000, 0, 1000])
    assert with_empty == empirical_bayes_prior([10, 100, 300], [1000, 1000, 1000])
    assert with_empty != (1.0, 1.0)


@pytest.mark.parametrize(
    ("successes", "trials", "options"),
    [
        pytest.param([5, 11], [10, 10], {}, id="successes-above-trials"),
        pytest.param([-1, 3], [10, 10], {}, id="negative-successes"),
        pytest.param([1, 2, 3], [10, 10], {}, id="mismatched-shapes"),
        pytest.param([[1, 2]], [[10, 10]], {}, id="two-dimensional"),
        pytest.param([1, 2], [10, 10], {"max_pseudo_count": 0}, id="cap-zero"),
        pytest.param([1, 2], [10, 10], {"max_pseudo_count": -5}, id="cap-negative"),
        # These gave (nan, nan), (inf, inf), and a NaN cap was ignored.
        pytest.param([np.nan, 1, 2], [10, 10, 10], {}, id="nan-successes"),
        pytest.param([1, 1, 2], [10, np.inf, 10], {}, id="infinite-trials"),
        pytest.param([1, 5, 1], [10, 10, 10], {"max_pseudo_count": np.inf}, id="cap-infinite"),
        pytest.param([1, 5, 1], [10, 10, 10], {"max_pseudo_count": np.nan}, id="cap-nan"),
        pytest.param([1, 5, 1], [10, 10, 10], {"max_pseudo_count": 10**400}, id="cap-huge-int"),
    ],
)
def test_invalid_input_raises(
    successes: list[Any], trials: list[Any], options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        empirical_bayes_prior(successes, trials, **options)


# --- discount_factor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_hour", "hours", "expected"),
    [
        (0.999, 24, 0.999**24),
        (0.999, 0, 1.0),
        (1.0, 10_000, 1.0),
        (0.5, 3, 0.125),
        (0.9, 1.5, 0.9**1.5),
    ],
)
def test_discount_factor(per_hour: float, hours: float, expected: float) -> None:
    assert discount_factor(per_hour, hours) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    ("per_hour", "hours"), [(0.0, 1), (1.5, 1), (-0.5, 1), (math.nan, 1), (0.999, -1)]
)
def test_discount_factor_rejects_invalid_input(per_hour: float, hours: float) -> None:
    with pytest.raises(ValueError):
        discount_factor(per_hour, hours)


# --- prob_below ---------------------------------------------------------------------------------


def test_prob_below_a_reference_arm() -> None:
    # Against a 10% reference on 1,000 trials: clearly worse (1%), clearly better (20%), the same.
    alpha, beta = [11, 201, 101], [991, 801, 901]
    below = stats.prob_below(alpha, beta, 101, 901, rng=0)
    assert below.shape == (3,)
    assert below[0] > 0.999
    assert below[1] < 0.001
    assert below[2] == pytest.approx(0.5, abs=0.03)


def test_prob_below_is_reproducible_by_default() -> None:
    first = stats.prob_below([50, 60], [950, 940], 55, 945)
    assert np.array_equal(first, stats.prob_below([50, 60], [950, 940], 55, 945))
    assert 0 < first[1] < first[0] < 1


@pytest.mark.parametrize(
    ("alpha", "beta", "reference"),
    [
        pytest.param([72, 11, 201, 101], [930, 991, 801, 901], (101, 901), id="shop-rates"),
        pytest.param([1, 3], [1, 2], (2, 5), id="little-evidence"),
        pytest.param([0.4, 5], [19.6, 200], (30, 970), id="informed-prior-below-1"),
        pytest.param([40_001, 49_001], [960_001, 951_001], (45_001, 955_001), id="millions"),
    ],
)
def test_prob_below_exact_is_the_integral(
    alpha: list[float], beta: list[float], reference: tuple[float, float]
) -> None:
    """P(X < Y) = the integral of F_X f_Y, by scipy's adaptive quadrature."""
    from scipy import integrate
    from scipy.stats import beta as beta_dist

    ra, rb = reference
    exact = stats.prob_below_exact(alpha, beta, ra, rb)
    for i, (a, b) in enumerate(zip(alpha, beta, strict=True)):
        lo, hi = beta_dist.ppf([1e-14, 1 - 1e-14], ra, rb)
        points = beta_dist.ppf([0.001, 0.5, 0.999], ra, rb)
        expected, _ = integrate.quad(
            lambda x, a=a, b=b: beta_dist.cdf(x, a, b) * beta_dist.pdf(x, ra, rb),
            lo,
            hi,
            points=points,
            limit=200,
            epsabs=1e-12,
        )
        assert exact[i] == pytest.approx(expected, abs=1e-6)


def test_prob_below_exact_agrees_with_the_draws_and_splits_a_tie_evenly() -> None:
    alpha, beta = [50, 60, 55], [950, 940, 945]
    exact = stats.prob_below_exact(alpha, beta, 55, 945)
    drawn = stats.prob_below(alpha, beta, 55, 945, n_samples=200_000)
    # Within five standard errors of 200,000 draws.
    assert exact == pytest.approx(drawn, abs=5 * 0.5 / np.sqrt(200_000))
    assert exact[2] == 0.5
