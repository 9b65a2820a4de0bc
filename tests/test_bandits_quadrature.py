"""Probability best and expected loss integrated (bandits.quadrature, stats.summarize_exact)
against adaptive quadrature and against many draws."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import integrate, special

from bandits import quadrature, stats


def adaptive(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same integrals by scipy's adaptive quadrature in x, one arm at a time: slow, sure."""
    n = a.size
    lo, hi = special.betaincinv(a, b, 1e-15), special.betaincinv(a, b, 1 - 1e-15)
    start, end = lo.max(), hi.max()
    points = np.unique(np.concatenate([lo, hi, a / (a + b)]).clip(start, end))

    def cdfs(x: float) -> np.ndarray:
        return special.betainc(a, b, x)  # type: ignore[no-any-return]

    best = [
        integrate.quad(
            lambda x, i=i: (
                np.exp(
                    (a[i] - 1) * np.log(x) + (b[i] - 1) * np.log1p(-x) - special.betaln(a[i], b[i])
                )
                * np.prod(np.delete(cdfs(x), i))
            ),
            start,
            end,
            points=points,
            limit=500,
            epsabs=1e-13,
        )[0]
        for i in range(n)
    ]
    above = integrate.quad(lambda x: np.prod(cdfs(x)), 0, 1, points=points, limit=500)[0]
    return np.array(best), (1.0 - above) - a / (a + b)


def segment(seed: int, arms: int, impressions: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Live copy as a shop's counters make it: a 1-5% rate, give or take a fifth per line."""
    rng = np.random.default_rng(seed)
    shown = rng.integers(*impressions, arms)
    converted = rng.binomial(shown, rng.uniform(0.01, 0.05) * rng.uniform(0.8, 1.2, arms))
    return 1.0 + converted, 1.0 + shown - converted


CASES = [
    segment(1, 4, (2_000, 300_000)),
    segment(2, 7, (2_000, 300_000)),
    segment(3, 3, (10, 500)),
    (np.array([11.0, 14.0, 9.0]), np.array([91.0, 88.0, 93.0])),
    (np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0])),
    # A line shown a million times beside one never shown: scales 1,000 apart.
    (np.array([1.0, 20_001.0]), np.array([1.0, 1_000_001.0])),
    (np.array([3.0, 2_001.0, 21.0]), np.array([100.0, 100_001.0, 1_001.0])),
    # Priors below 1: densities unbounded at 0 (smooth in logit).
    (np.array([0.4, 0.3, 12.0, 15.0]), np.array([20.0, 15.0, 600.0, 700.0])),
    (np.array([0.5, 0.3, 2.0]), np.array([0.5, 3.0, 40.0])),
]


@pytest.mark.parametrize(("a", "b"), CASES)
def test_integrated_figures_match_adaptive_quadrature_to_1e_6(a: np.ndarray, b: np.ndarray) -> None:
    found = quadrature.best_and_loss(a, b)
    assert found is not None
    best, loss = found
    want_best, want_loss = adaptive(a, b)
    np.testing.assert_allclose(best, want_best, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-9)
    assert best.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(loss >= 0)


def informed(rate: float, shown: list[int], converted: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Lines at the empirical-Bayes prior the lifecycle gives new copy under the default cap of
    20 trials (alpha 20 x the segment's rate: below 1 under 5%), plus their counters."""
    prior_a, prior_b = 20 * rate, 20 * (1 - rate)
    n, k = np.array(shown, dtype=float), np.array(converted, dtype=float)
    return prior_a + k, prior_b + n - k


@pytest.mark.parametrize(
    ("a", "b"),
    [
        informed(0.02, [0, 0, 5_000], [0, 0, 100]),
        informed(0.02, [0, 0], [0, 0]),
        informed(0.01, [0, 60, 150], [0, 0, 2]),
        informed(0.005, [0, 0, 40, 2_000], [0, 0, 0, 10]),
        informed(0.05, [0, 300], [0, 14]),
        (np.array([1.0, 3.0, 5.0]), np.array([19.0, 150.0, 300.0])),
    ],
)
def test_new_copy_at_an_informed_prior_is_integrated(a: np.ndarray, b: np.ndarray) -> None:
    """A prior below 1 skews a posterior in t: a long tail toward 0 sets its standard deviation
    (2.7 for Beta(0.4, 19.6)) while its density turns within 0.9. Panels of two of those sds
    missed 1e-5 to 1e-2 of probability best, the sum check sent most such segments to the draws
    (5 to 19 in 20 of a shop's segments at rates of 0.2-5%), and the page's figures and the
    lifecycle's were noise again."""
    found = quadrature.best_and_loss(a, b)
    assert found is not None
    want_best, want_loss = adaptive(a, b)
    np.testing.assert_allclose(found[0], want_best, rtol=0, atol=1e-6)
    np.testing.assert_allclose(found[1], want_loss, rtol=1e-5, atol=1e-9)


def test_a_shops_segment_matches_a_million_draws() -> None:
    """43 live lines of 2,000-300,000 impressions, the experiment page's case, against a
    million joint draws: 5 standard errors (at most 0.0025 on a probability best)."""
    a, b = segment(7, 43, (2_000, 300_000))
    summary = stats.summarize_exact(a, b)
    draws = np.random.default_rng(11).beta(a, b, size=(1_000_000, a.size))
    drawn_best = np.bincount(draws.argmax(axis=1), minlength=a.size) / len(draws)
    drawn_loss = (draws.max(axis=1, keepdims=True) - draws).mean(axis=0)
    error = np.sqrt(drawn_best * (1 - drawn_best) / len(draws))
    assert np.all(np.abs(summary["prob_best"] - drawn_best) <= 5 * error + 1e-6)
    np.testing.assert_allclose(summary["expected_loss"], drawn_loss, rtol=0.01, atol=2e-5)
    assert drawn_best.max() < 0.9  # a close race, not one line alone


def test_identical_posteriors_split_probability_best_evenly() -> None:
    summary = stats.summarize_exact(np.full(43, 501.0), np.full(43, 20_000.0))
    np.testing.assert_allclose(summary["prob_best"], 1 / 43, rtol=1e-6)
    assert np.ptp(summary["prob_best"]) == 0
    assert np.ptp(summary["expected_loss"]) == 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([3.0, 1.0, 1.0, 1.0], [50.0, 19.0, 19.0, 19.0]),
        ([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]),
        ([40.0, 0.6, 2.0, 0.6, 0.6], [2_000.0, 19.4, 90.0, 19.4, 19.4]),
    ],
)
def test_lines_at_the_same_posterior_get_the_very_same_figures(
    a: list[float], b: list[float]
) -> None:
    """New lines at the segment's prior: taken one by one, their products of the others' CDFs
    were multiplied in different orders and differed in the last bits (6.9e-18 in probability
    best among 43 equals), so the report's order and the lifecycle's leader among them were
    those bits'."""
    summary = stats.summarize_exact(a, b)
    alpha, beta = np.array(a), np.array(b)
    for value in {*zip(a, b, strict=True)}:
        same = (alpha == value[0]) & (beta == value[1])
        assert np.ptp(summary["prob_best"][same]) == 0
        assert np.ptp(summary["expected_loss"][same]) == 0


def test_a_single_arm_and_copy_out_of_the_race() -> None:
    assert quadrature.best_and_loss(np.array([3.0]), np.array([4.0])) == (np.ones(1), np.zeros(1))
    # The second line cannot be best: exactly 0, and it gives up the rate gap.
    found = quadrature.best_and_loss(np.array([500.0, 100.0]), np.array([9_500.0, 9_900.0]))
    assert found is not None
    assert found[0].tolist() == [1.0, 0.0]
    assert found[1][1] == pytest.approx(0.05 - 0.01, rel=1e-3)


def test_the_same_counters_give_the_same_figures() -> None:
    a, b = segment(4, 12, (2_000, 300_000))
    first, second = stats.summarize_exact(a, b), stats.summarize_exact(a, b)
    for key, value in first.items():
        np.testing.assert_array_equal(second[key], value)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.001, 0.001], [300.001, 300.001]),
        ([0.001, 0.001, 0.002, 5.0], [300.001, 300.001, 0.001, 1.0]),
        # The leader's whole range rounds to one point: no arm is above its lower end (a
        # ValueError, taking the maximum of no rivals).
        ([1e18, 2.0], [1.0, 3.0]),
    ],
)
def test_posteriors_piled_beyond_a_double_are_left_to_the_draws(
    a: list[float], b: list[float]
) -> None:
    """Their mass sits closer to 0 or 1 than a double resolves, where draws tie at exactly 0.0 or
    1.0 and are broken at random: integration cannot say, and says so."""
    assert quadrature.best_and_loss(np.array(a), np.array(b)) is None
    summary = stats.summarize_exact(a, b)
    np.testing.assert_array_equal(summary["prob_best"], stats.prob_best(a, b))
    np.testing.assert_array_equal(summary["expected_loss"], stats.expected_loss(a, b))


def test_a_posterior_piled_near_1_integrates_without_a_warning() -> None:
    """Panels far out in logit space, where the density's bend is 0: 1 / sqrt(0) was a divide
    by zero, a RuntimeWarning in a server's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = stats.summarize_exact([3e16, 3e16], [1.0, 2.0])
    np.testing.assert_allclose(summary["prob_best"].sum(), 1.0)


def test_summarize_exact_shows_what_summarize_shows() -> None:
    a, b = segment(5, 6, (2_000, 300_000))
    exact, drawn = stats.summarize_exact(a, b, level=0.9), stats.summarize(a, b, level=0.9)
    assert exact.keys() == drawn.keys()
    for key in ("mean", "lower", "upper"):
        np.testing.assert_array_equal(exact[key], drawn[key])
    np.testing.assert_allclose(exact["prob_best"], drawn["prob_best"], atol=0.015)


@pytest.mark.parametrize(("alpha", "beta"), [([1.0, 0.0], [1.0, 1.0]), ([], [])])
def test_summarize_exact_checks_its_parameters(alpha: list[float], beta: list[float]) -> None:
    with pytest.raises(ValueError, match="alpha"):
        stats.summarize_exact(alpha, beta)
