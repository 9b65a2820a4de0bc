"""BlockSampler: one Thompson draw per decision, drawn in blocks."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from bandits import BetaBernoulliTS
from bandits.blocks import BlockSampler


def test_choices_follow_the_posterior() -> None:
    policy = BetaBernoulliTS(3, alpha=[30.0, 20.0, 10.0], beta=[70.0, 80.0, 90.0], rng=1)
    expected = policy.propensities(200_000)
    sampler = BlockSampler(policy, first_block=8, max_block=256)
    counts = np.bincount([sampler.select() for _ in range(20_000)], minlength=3) / 20_000
    # 20,000 independent draws: the standard error of each share is below 0.004.
    assert counts == pytest.approx(expected, abs=0.015)


def test_every_decision_is_its_own_draw_not_a_repeat() -> None:
    # A flat posterior: one draw per block would give runs of one arm as long as the block.
    sampler = BlockSampler(BetaBernoulliTS(2, rng=5), first_block=256, max_block=256)
    choices = [sampler.select() for _ in range(256)]
    switches = sum(a != b for a, b in itertools.pairwise(choices))
    assert 90 < switches < 165  # about half of 255 for independent fair coin flips


def test_blocks_start_small_and_double_up_to_the_cap() -> None:
    sampler = BlockSampler(BetaBernoulliTS(4, rng=0), first_block=2, max_block=8)
    sizes = []
    for _ in range(5):
        sampler.select()
        sizes.append(len(sampler._choices) + 1)  # the block just drawn, before this pop
        sampler._choices.clear()  # force the next refill
    assert sizes == [2, 4, 8, 8, 8]


def test_updates_wait_for_the_next_block() -> None:
    policy = BetaBernoulliTS(2, rng=0)
    sampler = BlockSampler(policy, first_block=4, max_block=4)
    sampler.select()  # draws a block of 4; 3 left
    sampler.update(1, 0.0)
    sampler.update(1, 1.0)
    sampler.update(0, 0.25)
    assert policy.posterior()[0].tolist() == [1.0, 1.0]
    for _ in range(3):
        sampler.select()
    assert policy.posterior()[0].tolist() == [1.0, 1.0]  # block not yet used up
    sampler.select()  # refill: pending updates applied first
    alpha, beta = policy.posterior()
    assert alpha.tolist() == [1.25, 2.0] and beta.tolist() == [1.75, 2.0]


@pytest.mark.parametrize(
    ("arm", "reward", "error"),
    [(2, 0.0, IndexError), (-1, 0.0, IndexError), (0, 1.5, ValueError), (0, -0.1, ValueError)],
)
def test_bad_updates_are_refused_and_change_nothing(
    arm: int, reward: float, error: type[Exception]
) -> None:
    policy = BetaBernoulliTS(2, rng=0)
    sampler = BlockSampler(policy)
    with pytest.raises(error):
        sampler.update(arm, reward)
    sampler.select()
    assert policy.posterior()[0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(("first", "cap"), [(0, 8), (8, 4), (-1, 4)])
def test_block_sizes_are_checked(first: int, cap: int) -> None:
    with pytest.raises(ValueError):
        BlockSampler(BetaBernoulliTS(2), first_block=first, max_block=cap)


def test_add_counts_adds_per_arm_and_refuses_bad_counts() -> None:
    policy = BetaBernoulliTS(3, rng=0)
    policy.add_counts([1.0, 0.0, 2.5], [0.0, 4.0, 0.5])
    alpha, beta = policy.posterior()
    assert alpha.tolist() == [2.0, 1.0, 3.5] and beta.tolist() == [1.0, 5.0, 1.5]
    for successes, failures in (([1.0, 1.0], [0.0, 0.0, 0.0]), ([-1.0, 0, 0], [0, 0, 0])):
        with pytest.raises(ValueError):
            policy.add_counts(successes, failures)
    with pytest.raises(ValueError):
        policy.add_counts([np.nan, 0, 0], [0, 0, 0])
    assert policy.posterior()[0].tolist() == [2.0, 1.0, 3.5]


def test_threads_share_samplers_without_losing_or_repeating_choices() -> None:
    lock = threading.Lock()
    rng = np.random.default_rng(9)  # one Generator behind both samplers, as in the service
    samplers = [
        BlockSampler(BetaBernoulliTS(3, rng=rng), first_block=4, max_block=64, lock=lock)
        for _ in range(2)
    ]
    counts = [0] * 8
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            for i in range(5_000):
                arm = samplers[i % 2].select()
                assert 0 <= arm < 3
                counts[slot] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and counts == [5_000] * 8


def test_each_choice_carries_its_arms_share_of_the_refills_draws() -> None:
    policy = BetaBernoulliTS(3, alpha=[30.0, 20.0, 10.0], beta=[70.0, 80.0, 90.0], rng=1)
    sampler = BlockSampler(policy, first_block=4, max_block=4, propensity_draws=400)
    drawn: list[int] = []
    select = policy.select

    def counting(n: int) -> np.ndarray:
        drawn.append(n)
        return select(n)

    policy.select = counting  # type: ignore[method-assign,assignment]
    first = [sampler.choose() for _ in range(4)]
    assert drawn == [400]
    # The four handed out are the first of 400 draws; every arm's share is a multiple of 1/400.
    for _, propensity in first:
        assert 0 < propensity <= 1
        assert (propensity * 400) == pytest.approx(round(propensity * 400))
    assert len({propensity for arm, propensity in first if arm == first[0][0]}) == 1
    assert len(sampler._choices) == 0  # the other 396 only sharpened the shares


def test_propensities_follow_the_posterior_the_updates_moved() -> None:
    """1/propensity averages 1 per arm over the decisions served, as importance weighting needs,
    while pending updates move the posterior at every refill."""
    policy = BetaBernoulliTS(2, alpha=[4.0, 3.0], beta=[8.0, 9.0], rng=2)
    sampler = BlockSampler(policy, first_block=8, max_block=256, propensity_draws=256)
    decisions = 30_000
    weights = np.zeros(2)
    for _ in range(decisions):
        arm, propensity = sampler.choose()
        weights[arm] += 1 / propensity
        sampler.update(arm, 0.0)
    assert weights / decisions == pytest.approx([1.0, 1.0], abs=0.05)
