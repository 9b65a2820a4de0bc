from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.stats

from bandits import stats
from bandits.ties import argmax_rows

ALPHA = np.array([11.0, 14.0, 9.0])
BETA = np.array([91.0, 88.0, 93.0])


def test_prob_best_sums_to_one() -> None:
    probs = stats.prob_best(ALPHA, BETA, rng=1)
    assert probs.shape == (3,)
    assert probs.dtype == np.float64
    assert probs.sum() == pytest.approx(1.0)
    assert np.all(probs >= 0)
    assert probs.argmax() == 1


def test_prob_best_identical_arms_split_evenly() -> None:
    probs = stats.prob_best([5.0, 5.0], [50.0, 50.0], rng=2)
    np.testing.assert_allclose(probs, [0.5, 0.5], atol=0.02)


def test_prob_best_clearly_better_arm() -> None:
    probs = stats.prob_best([200.0, 20.0], [800.0, 980.0], rng=3)
    assert probs[0] > 0.999


def test_single_arm() -> None:
    np.testing.assert_array_equal(stats.prob_best([3.0], [4.0]), [1.0])
    np.testing.assert_array_equal(stats.expected_loss([3.0], [4.0]), [0.0])


def test_default_rng_is_fixed_so_reports_do_not_jitter() -> None:
    np.testing.assert_array_equal(stats.prob_best(ALPHA, BETA), stats.prob_best(ALPHA, BETA))
    np.testing.assert_array_equal(
        stats.expected_loss(ALPHA, BETA), stats.expected_loss(ALPHA, BETA)
    )
    # An explicit seed still changes the draws.
    assert not np.array_equal(stats.prob_best(ALPHA, BETA), stats.prob_best(ALPHA, BETA, rng=99))


def test_prob_best_matches_hand_computation() -> None:
    draws = np.random.default_rng(4).beta(ALPHA, BETA, size=(1_000, 3))
    expected = np.bincount(draws.argmax(axis=1), minlength=3) / 1_000
    np.testing.assert_array_equal(stats.prob_best(ALPHA, BETA, n_samples=1_000, rng=4), expected)


def test_expected_loss_nonnegative_and_smallest_for_best_arm() -> None:
    loss = stats.expected_loss([60.0, 20.0, 25.0], [940.0, 980.0, 975.0], rng=5)
    assert loss.shape == (3,)
    assert np.all(loss >= 0)
    assert loss.argmin() == 0
    # The clear winner gives up almost nothing; the others give up about the rate gap.
    assert loss[0] < 1e-3
    assert loss[1] == pytest.approx(0.06 - 0.02, abs=0.005)


def test_expected_loss_matches_hand_computation() -> None:
    draws = np.random.default_rng(6).beta(ALPHA, BETA, size=(500, 3))
    expected = (draws.max(axis=1)[:, None] - draws).mean(axis=0)
    np.testing.assert_allclose(
        stats.expected_loss(ALPHA, BETA, n_samples=500, rng=6), expected, rtol=1e-12
    )


def test_credible_interval_matches_scipy() -> None:
    interval = stats.credible_interval([11.0], [91.0])
    assert interval.shape == (1, 2)
    tail = (1 - 0.95) / 2
    assert interval[0, 0] == scipy.stats.beta.ppf(tail, 11.0, 91.0)
    assert interval[0, 1] == scipy.stats.beta.ppf(1 - tail, 11.0, 91.0)
    assert interval[0, 0] == pytest.approx(0.0556372238, abs=1e-9)
    mean = stats.posterior_mean([11.0], [91.0])[0]
    assert interval[0, 0] < mean < interval[0, 1]


def test_credible_interval_narrows_with_level() -> None:
    wide = stats.credible_interval(ALPHA, BETA, level=0.99)
    narrow = stats.credible_interval(ALPHA, BETA, level=0.5)
    assert wide.shape == (3, 2)
    assert np.all(wide[:, 0] < narrow[:, 0])
    assert np.all(narrow[:, 1] < wide[:, 1])


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 1.5, float("nan"), "0.9"])
def test_credible_interval_rejects_bad_level(level: object) -> None:
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        stats.credible_interval(ALPHA, BETA, level=level)  # type: ignore[arg-type]


def test_posterior_mean() -> None:
    np.testing.assert_allclose(stats.posterior_mean([1.0, 3.0], [1.0, 1.0]), [0.5, 0.75])


def test_posterior_mean_of_parameters_whose_sum_overflows() -> None:
    # alpha + beta was inf, and the mean read 0 for an even posterior.
    assert stats.posterior_mean([1e308, 1e308], [1e308, 5e307]).tolist() == [0.5, 2 / 3]
    # The other extremes give their limits rather than NaN.
    assert stats.posterior_mean([5e-324, 1e308], [1e308, 5e-324]).tolist() == [0.0, 1.0]


def test_summarize_keys_shapes_and_consistency() -> None:
    summary = stats.summarize(ALPHA, BETA, n_samples=5_000, rng=8, level=0.9)
    assert set(summary) == {"mean", "lower", "upper", "prob_best", "expected_loss"}
    for value in summary.values():
        assert value.shape == (3,)
    interval = stats.credible_interval(ALPHA, BETA, level=0.9)
    np.testing.assert_array_equal(summary["mean"], stats.posterior_mean(ALPHA, BETA))
    np.testing.assert_array_equal(summary["lower"], interval[:, 0])
    np.testing.assert_array_equal(summary["upper"], interval[:, 1])
    np.testing.assert_array_equal(
        summary["prob_best"], stats.prob_best(ALPHA, BETA, n_samples=5_000, rng=8)
    )
    np.testing.assert_array_equal(
        summary["expected_loss"], stats.expected_loss(ALPHA, BETA, n_samples=5_000, rng=8)
    )


def test_summarize_draws_only_once() -> None:
    gen = np.random.default_rng(10)
    stats.summarize(ALPHA, BETA, n_samples=100, rng=gen)
    reference = np.random.default_rng(10)
    reference.beta(ALPHA, BETA, size=(100, 3))
    assert gen.bit_generator.state == reference.bit_generator.state


@pytest.mark.parametrize(
    ("alpha", "beta", "match"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "same shape"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "1-D"),
        (1.0, 1.0, "1-D"),
        ([], [], "at least one arm"),
        ([1.0, 0.0], [1.0, 1.0], "alpha must be finite and > 0"),
        ([1.0, 1.0], [-2.0, 1.0], "beta must be finite and > 0"),
        ([1.0, np.nan], [1.0, 1.0], "alpha must be finite and > 0"),
        ([1.0, 1.0], [np.inf, 1.0], "beta must be finite and > 0"),
        ([1.0, 10**400], [1.0, 1.0], "alpha must be finite and > 0"),
    ],
)
@pytest.mark.parametrize(
    "func",
    [
        stats.prob_best,
        stats.expected_loss,
        stats.credible_interval,
        stats.posterior_mean,
        stats.summarize,
    ],
)
def test_parameter_validation(func: object, alpha: object, beta: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        func(alpha, beta)  # type: ignore[operator]


@pytest.mark.parametrize("n_samples", [0, -1, 2.5])
def test_n_samples_validation(n_samples: object) -> None:
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        stats.prob_best(ALPHA, BETA, n_samples=n_samples)  # type: ignore[arg-type]


def test_identical_posteriors_under_a_tiny_prior_are_equally_likely_best() -> None:
    # Draws round to exactly 0.0 or 1.0 here; argmax gave every tie to the first arm (0.96 / 0.04,
    # and the lifecycle declared the first the winner).
    alpha, beta = [0.001, 0.001], [300.001, 300.001]
    summary = stats.summarize(alpha, beta, rng=7)
    assert summary["prob_best"] == pytest.approx([0.5, 0.5], abs=0.02)
    assert stats.prob_best(alpha, beta, rng=8) == pytest.approx([0.5, 0.5], abs=0.02)


def test_exact_ties_are_broken_at_random_and_only_ties() -> None:
    rng = np.random.default_rng(3)
    draws = np.array([[1.0, 1.0, 0.2], [0.0, 0.0, 0.0], [0.3, 0.9, 0.1], [1.0, 0.5, 1.0]] * 5000)
    chosen = argmax_rows(draws, rng).reshape(-1, 4)
    assert set(chosen[:, 0]) == {0, 1} and abs((chosen[:, 0] == 0).mean() - 0.5) < 0.03
    assert set(chosen[:, 1]) == {0, 1, 2}
    assert set(chosen[:, 2]) == {1}  # no tie: the argmax, always
    assert set(chosen[:, 3]) == {0, 2}


# --- draws in blocks ----------------------------------------------------------------------------

POSTERIORS = [
    (ALPHA, BETA),
    (np.linspace(2.0, 60.0, 37), np.linspace(900.0, 300.0, 37)),
    # Draws of exactly 0.0 and 1.0: ties, broken after the last block.
    ([0.001, 0.001, 0.002, 5.0], [300.001, 300.001, 0.001, 1.0]),
]


@pytest.mark.parametrize(("alpha", "beta"), POSTERIORS)
@pytest.mark.parametrize("block", [1, 37 * 5, 1000])
def test_draws_in_blocks_give_the_numbers_of_one_array(
    alpha: list[float], beta: list[float], block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def everything(seed: int) -> tuple[dict[str, np.ndarray], list[np.ndarray], object]:
        gen = np.random.default_rng(seed)
        summary = stats.summarize(alpha, beta, n_samples=1_201, rng=gen)
        others = [
            stats.prob_best(alpha, beta, n_samples=999, rng=seed),
            stats.expected_loss(alpha, beta, n_samples=501, rng=seed),
            stats.prob_below(alpha, beta, 3.0, 40.0, n_samples=1_201, rng=gen),
        ]
        return summary, others, gen.bit_generator.state

    in_one = everything(11)
    monkeypatch.setattr(stats, "DRAW_BLOCK", block)
    in_blocks = everything(11)

    assert in_blocks[0].keys() == in_one[0].keys()
    for key, value in in_one[0].items():
        np.testing.assert_array_equal(in_blocks[0][key], value)
    for blocked, whole in zip(in_blocks[1], in_one[1], strict=True):
        np.testing.assert_array_equal(blocked, whole)
    assert in_blocks[2] == in_one[2]  # and the generator is left where it was


def test_a_segment_of_many_arms_never_holds_all_its_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 draws of 3,000 arms took about 1 GB per lifecycle plan; here the same at a scale a
    test can afford: 4,000 draws of 500 arms are 16 MB, in blocks of 0.5 MiB."""
    monkeypatch.setattr(stats, "DRAW_BLOCK", 1 << 16)
    alpha, beta = np.linspace(2.0, 60.0, 500), np.full(500, 900.0)
    tracemalloc.start()
    try:
        stats.summarize(alpha, beta, n_samples=4_000)
        summarized = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        stats.prob_below(alpha, beta, 30.0, 900.0, n_samples=4_000)
        compared = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summarized < 4 * 2**20 and compared < 4 * 2**20, (summarized, compared)
