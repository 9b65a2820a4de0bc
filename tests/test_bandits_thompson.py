from __future__ import annotations

import numpy as np
import pytest

from bandits import BetaBernoulliTS, stats


def _seeded_policy() -> BetaBernoulliTS:
    policy = BetaBernoulliTS(3, rng=42)
    policy.update([0, 0, 1, 2, 2, 2], [1, 0, 1, 0, 0, 1])
    return policy


def test_seeded_selection_is_exact_and_matches_hand_draw() -> None:
    policy = _seeded_policy()
    alpha, beta = policy.posterior()
    np.testing.assert_array_equal(alpha, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(beta, [2.0, 1.0, 3.0])

    chosen = policy.select(8)

    assert chosen.tolist() == [1, 0, 1, 0, 1, 1, 1, 1]
    by_hand = np.random.default_rng(42).beta(alpha, beta, size=(8, 3)).argmax(axis=1)
    np.testing.assert_array_equal(chosen, by_hand)


def test_same_seed_same_sequence_different_seed_differs() -> None:
    first = BetaBernoulliTS(4, rng=5).select(200)
    again = BetaBernoulliTS(4, rng=5).select(200)
    other = BetaBernoulliTS(4, rng=6).select(200)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_generator_is_used_as_is() -> None:
    gen = np.random.default_rng(9)
    expected = np.random.default_rng(9).beta(np.ones(2), np.ones(2), size=(5, 2)).argmax(axis=1)
    np.testing.assert_array_equal(BetaBernoulliTS(2, rng=gen).select(5), expected)


def test_select_types_and_shapes() -> None:
    policy = BetaBernoulliTS(4, rng=0)
    single = policy.select()
    assert type(single) is int
    assert 0 <= single < 4
    batch = policy.select(17)
    assert isinstance(batch, np.ndarray)
    assert batch.shape == (17,)
    assert batch.dtype == np.int64
    assert batch.min() >= 0 and batch.max() < 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "3"])
def test_select_rejects_bad_n(bad: object) -> None:
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        BetaBernoulliTS(2, rng=0).select(bad)  # type: ignore[call-overload]


def test_batch_draws_are_independent_per_decision() -> None:
    chosen = BetaBernoulliTS(2, rng=1).select(10_000)
    share = np.mean(chosen == 0)
    # One reused draw would send all 10,000 decisions to a single arm.
    assert 0.45 < share < 0.55


def test_update_scalars_and_arrays() -> None:
    policy = BetaBernoulliTS(3, alpha=2.0, beta=3.0, rng=0)
    policy.update(1, 1)
    policy.update(np.array([0, 2]), np.array([0.0, 1.0]))
    alpha, beta = policy.posterior()
    np.testing.assert_array_equal(alpha, [2.0, 3.0, 3.0])
    np.testing.assert_array_equal(beta, [4.0, 3.0, 3.0])


def test_update_counts_every_repeat_of_an_arm() -> None:
    policy = BetaBernoulliTS(2, rng=0)
    policy.update([0, 0, 0, 1], [1, 1, 0, 1])
    alpha, beta = policy.posterior()
    np.testing.assert_array_equal(alpha, [3.0, 2.0])
    np.testing.assert_array_equal(beta, [2.0, 1.0])


def test_update_fractional_rewards() -> None:
    policy = BetaBernoulliTS(2, rng=0)
    policy.update([1, 1], [0.25, 0.5])
    alpha, beta = policy.posterior()
    np.testing.assert_allclose(alpha, [1.0, 1.75])
    np.testing.assert_allclose(beta, [1.0, 2.25])


@pytest.mark.parametrize(
    ("arms", "rewards", "error", "match"),
    [
        ([0, 1], [1.0, 1.5], ValueError, r"rewards must be finite and in \[0, 1\]"),
        ([0, 1], [1.0, np.nan], ValueError, r"rewards must be finite"),
        ([0, 1], [1.0, -0.1], ValueError, r"rewards must be finite"),
        ([0, 3], [1.0, 1.0], IndexError, "out of range"),
        ([0, -1], [1.0, 1.0], IndexError, "out of range"),
        ([0, 1, 2], [1.0, 1.0], ValueError, "same length"),
        ([0.0, 1.0], [1.0, 1.0], ValueError, "arms must be integers"),
        ([[0, 1]], [[1.0, 1.0]], ValueError, "1-D"),
    ],
)
def test_invalid_update_raises_and_leaves_posterior_unchanged(
    arms: object, rewards: object, error: type[Exception], match: str
) -> None:
    policy = BetaBernoulliTS(3, alpha=[1.0, 2.0, 3.0], beta=4.0, rng=0)
    policy.update([0, 2], [1.0, 0.0])
    before = policy.posterior()
    with pytest.raises(error, match=match):
        policy.update(arms, rewards)  # type: ignore[arg-type]
    after = policy.posterior()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_posterior_returns_copies() -> None:
    policy = BetaBernoulliTS(2, rng=0)
    alpha, beta = policy.posterior()
    alpha[0] = 100.0
    beta[1] = 100.0
    np.testing.assert_array_equal(policy.posterior()[0], [1.0, 1.0])
    np.testing.assert_array_equal(policy.posterior()[1], [1.0, 1.0])


def test_constructor_does_not_alias_prior_arrays() -> None:
    prior = np.array([1.0, 2.0])
    policy = BetaBernoulliTS(2, alpha=prior, rng=0)
    policy.update(0, 1)
    np.testing.assert_array_equal(prior, [1.0, 2.0])


def test_add_arm_uses_scalar_default_prior_or_explicit_values() -> None:
    policy = BetaBernoulliTS(2, alpha=2.0, beta=5.0, rng=0)
    assert policy.add_arm() == 2
    assert policy.add_arm(alpha=3.0, beta=0.5) == 3
    assert policy.n_arms == 4
    alpha, beta = policy.posterior()
    np.testing.assert_array_equal(alpha, [2.0, 2.0, 2.0, 3.0])
    np.testing.assert_array_equal(beta, [5.0, 5.0, 5.0, 0.5])
    assert policy.select(50).max() <= 3


def test_add_arm_after_array_prior_defaults_to_uniform() -> None:
    policy = BetaBernoulliTS(2, alpha=[3.0, 4.0], beta=[5.0, 6.0], rng=0)
    policy.add_arm()
    alpha, beta = policy.posterior()
    assert (alpha[-1], beta[-1]) == (1.0, 1.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan])
def test_add_arm_rejects_bad_prior(bad: float) -> None:
    policy = BetaBernoulliTS(2, rng=0)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        policy.add_arm(alpha=bad)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        policy.add_arm(beta=bad)
    assert policy.n_arms == 2


def test_remove_arm_shifts_later_indices_down() -> None:
    policy = BetaBernoulliTS(4, alpha=[1.0, 2.0, 3.0, 4.0], beta=[5.0, 6.0, 7.0, 8.0], rng=0)
    policy.remove_arm(1)
    assert policy.n_arms == 3
    alpha, beta = policy.posterior()
    np.testing.assert_array_equal(alpha, [1.0, 3.0, 4.0])
    np.testing.assert_array_equal(beta, [5.0, 7.0, 8.0])
    policy.update(1, 1)  # the arm that used to be index 2
    np.testing.assert_array_equal(policy.posterior()[0], [1.0, 4.0, 4.0])


def test_remove_arm_errors() -> None:
    policy = BetaBernoulliTS(2, rng=0)
    with pytest.raises(IndexError):
        policy.remove_arm(2)
    with pytest.raises(IndexError):
        policy.remove_arm(-1)
    policy.remove_arm(0)
    with pytest.raises(ValueError, match="cannot remove the last arm"):
        policy.remove_arm(0)
    assert policy.n_arms == 1
    assert policy.select() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_arms": 0}, r"n_arms must be >= 1, got 0"),
        ({"n_arms": -2}, r"n_arms must be >= 1, got -2"),
        ({"n_arms": 2.0}, r"n_arms must be >= 1, got 2.0"),
        ({"n_arms": 3, "alpha": [1.0, 1.0]}, r"alpha must have shape \(3,\), got \(2,\)"),
        ({"n_arms": 2, "beta": [[1.0, 1.0]]}, r"beta must have shape \(2,\), got \(1, 2\)"),
        ({"n_arms": 2, "alpha": 0.0}, "alpha must be finite and > 0"),
        ({"n_arms": 2, "alpha": [1.0, -1.0]}, "alpha must be finite and > 0"),
        ({"n_arms": 2, "beta": np.inf}, "beta must be finite and > 0"),
        ({"n_arms": 2, "beta": [1.0, np.nan]}, "beta must be finite and > 0"),
        # An int beyond any float: an OverflowError before.
        ({"n_arms": 2, "alpha": 10**400}, "alpha must be finite and > 0"),
        ({"n_arms": 2, "beta": [1, 10**400]}, "beta must be finite and > 0"),
        ({"n_arms": 2, "rng": "seed"}, "rng must be"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BetaBernoulliTS(**kwargs)  # type: ignore[arg-type]


def test_repr_shows_n_arms() -> None:
    assert repr(BetaBernoulliTS(3, rng=0)) == "BetaBernoulliTS(n_arms=3)"


def test_propensities_sum_to_one_and_follow_posterior() -> None:
    policy = BetaBernoulliTS(3, alpha=[2.0, 90.0, 2.0], beta=[90.0, 2.0, 90.0], rng=3)
    props = policy.propensities()
    assert props.shape == (3,)
    assert props.dtype == np.float64
    assert props.sum() == pytest.approx(1.0)
    assert props[1] > 0.99


def test_propensities_single_arm_does_not_sample() -> None:
    policy = BetaBernoulliTS(1, rng=5)
    np.testing.assert_array_equal(policy.propensities(), [1.0])
    untouched = BetaBernoulliTS(1, rng=5)
    policy.add_arm()
    untouched.add_arm()
    # If propensities() had drawn, the two generators would now be out of step.
    np.testing.assert_array_equal(policy.select(50), untouched.select(50))


def test_propensities_match_prob_best() -> None:
    alpha = np.array([12.0, 15.0, 9.0])
    beta = np.array([88.0, 85.0, 91.0])
    policy = BetaBernoulliTS(3, alpha=alpha, beta=beta, rng=11)
    props = policy.propensities(40_000)
    best = stats.prob_best(alpha, beta, n_samples=40_000, rng=12)
    # Two independent estimates of p ~ 0.5 with 40k draws each: sd of the gap ~ 0.0035.
    np.testing.assert_allclose(props, best, atol=0.02)
    assert props.argmax() == 1


def test_learns_the_best_of_five_arms() -> None:
    rates = np.array([0.02, 0.03, 0.04, 0.05, 0.07])
    policy = BetaBernoulliTS(5, rng=7)
    env = np.random.default_rng(2024)
    chosen = []
    for _ in range(200):
        arms = policy.select(100)
        rewards = (env.random(100) < rates[arms]).astype(np.float64)
        policy.update(arms, rewards)
        chosen.append(arms)
    last = np.concatenate(chosen)[-5_000:]
    alpha, beta = policy.posterior()

    assert np.mean(last == 4) > 0.6
    assert stats.prob_best(alpha, beta)[4] > 0.9
    assert abs(stats.posterior_mean(alpha, beta)[4] - 0.07) < 0.02


def test_identical_posteriors_under_a_tiny_prior_are_chosen_evenly() -> None:
    policy = BetaBernoulliTS(2, alpha=[0.001, 0.001], beta=[300.001, 300.001], rng=5)
    picks = policy.select(20_000)
    assert abs(picks.mean() - 0.5) < 0.02  # all 0 before: every tie went to the first arm
    assert abs(np.mean([policy.select() for _ in range(4000)]) - 0.5) < 0.04
