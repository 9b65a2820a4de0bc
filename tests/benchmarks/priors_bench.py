"""Informed priors vs Beta(1, 1) for new challengers, on a segment whose copy keeps turning over.

World: true conversion rates drawn from Beta(4, 96) (about 4%); four live arms; every 5,000
impressions the arm with the lowest posterior mean (once it has 200 trials) is retired and a new
challenger with a fresh rate arrives. Thompson sampling in batches of 100. Regret is measured
against the best live arm at each step. Same worlds and seeds for both priors.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from bandits import BetaBernoulliTS
from bandits.priors import empirical_bayes_prior

HORIZON, BATCH, TURNOVER, LIVE, SEEDS = 100_000, 100, 5_000, 4, 100


def _regret(seed: int, informed: bool) -> float:
    world = np.random.default_rng(seed)
    rates = list(world.beta(4, 96, size=LIVE))
    policy = BetaBernoulliTS(LIVE, rng=seed + 1000)
    wins, trials = [0.0] * LIVE, [0.0] * LIVE
    past_wins: list[float] = []
    past_trials: list[float] = []
    regret = 0.0
    for step in range(HORIZON // BATCH):
        arms = policy.select(BATCH)
        rewards = (world.random(BATCH) < np.asarray(rates)[arms]).astype(float)
        policy.update(arms, rewards)
        regret += float(BATCH * max(rates) - np.asarray(rates)[arms].sum())
        for arm, reward in zip(arms.tolist(), rewards.tolist(), strict=True):
            wins[arm] += reward
            trials[arm] += 1
        if (step + 1) * BATCH % TURNOVER == 0:
            alpha, beta = policy.posterior()
            eligible = [i for i in range(len(rates)) if trials[i] >= 200]
            if eligible:
                loser = min(eligible, key=lambda i: alpha[i] / (alpha[i] + beta[i]))
                past_wins.append(wins.pop(loser))
                past_trials.append(trials.pop(loser))
                rates.pop(loser)
                policy.remove_arm(loser)
            history_wins, history_trials = past_wins + wins, past_trials + trials
            prior = empirical_bayes_prior(history_wins, history_trials) if informed else (1.0, 1.0)
            policy.add_arm(*prior)
            rates.append(float(world.beta(4, 96)))
            wins.append(0.0)
            trials.append(0.0)
    return regret


def run() -> dict[str, Any]:
    uniform = [_regret(seed, informed=False) for seed in range(SEEDS)]
    informed = [_regret(seed, informed=True) for seed in range(SEEDS)]
    paired = [i - u for u, i in zip(uniform, informed, strict=True)]
    figures = {
        "seeds": SEEDS,
        "horizon": HORIZON,
        "regret_uniform_prior": round(statistics.mean(uniform), 1),
        "regret_informed_prior": round(statistics.mean(informed), 1),
        "change": round(statistics.mean(informed) / statistics.mean(uniform) - 1, 3),
        "paired_difference_stderr": round(statistics.stdev(paired) / SEEDS**0.5, 1),
        "seeds_informed_better": sum(d < 0 for d in paired),
    }
    print(f"\nNew-arm priors, churning segment ({SEEDS} seeds, {HORIZON:,} impressions each)")
    print(f"  regret with Beta(1, 1)          {figures['regret_uniform_prior']:>10}")
    print(
        f"  regret with informed priors     {figures['regret_informed_prior']:>10}  "
        f"({figures['change']:+.1%}; paired s.e. {figures['paired_difference_stderr']}; "
        f"better on {figures['seeds_informed_better']}/{SEEDS} seeds)"
    )
    return figures


if __name__ == "__main__":
    run()
