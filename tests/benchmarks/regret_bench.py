"""Regret growth of Thompson sampling against the Lai-Robbins bound's growth.

K = 10 Bernoulli arms (best 0.5, the other nine 0.4), T = 10^6, updates in batches of 100, 20
seeds. The bound says regret grows at least like C * ln T; comparing the regret accumulated
between T = 10^5 and 10^6 with C * ln 10 asks whether the policy is already growing at the
optimal rate, which a comparison of levels at one T cannot (the early, exploring phase dominates
the level).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np

from bandits.simulate import lai_robbins_constant, simulate
from bandits.worlds import load_scenario
from tests.benchmarks.targets import target

RATES = [0.5] + [0.4] * 9
HORIZON, START, BATCH, SEEDS = 1_000_000, 100_000, 100, 20


def run() -> dict[str, Any]:
    world = load_scenario(
        {
            "name": "lai-robbins",
            "segments": [{"key": "everyone", "share": 1.0, "rates": RATES}],
            "batch": BATCH,
        }
    )
    constant = lai_robbins_constant(RATES)
    bound_growth = constant * math.log(HORIZON / START)
    growths = []
    started = time.perf_counter()
    for seed in range(SEEDS):
        result = simulate(world, "thompson", impressions=HORIZON, seed=seed, batch=BATCH)
        at = np.searchsorted(result.impressions, [START, HORIZON])
        growths.append(float(result.regret[at[1]] - result.regret[at[0]]))
    elapsed = time.perf_counter() - started
    mean = statistics.fmean(growths)
    sem = statistics.stdev(growths) / math.sqrt(SEEDS)
    ratio = mean / bound_growth
    figures: dict[str, Any] = {
        "rates": RATES,
        "seeds": SEEDS,
        "batch": BATCH,
        "lai_robbins_constant": round(constant, 2),
        "bound_growth_1e5_to_1e6": round(bound_growth, 1),
        "regret_growth_mean": round(mean, 1),
        "regret_growth_sem": round(sem, 1),
        "ratio": round(ratio, 3),
        "ratio_95_interval": [
            round((mean - 1.96 * sem) / bound_growth, 3),
            round((mean + 1.96 * sem) / bound_growth, 3),
        ],
        "seconds": round(elapsed, 1),
    }
    print(f"\nRegret growth, T = 1e5 -> 1e6 (K = 10, best 0.5, others 0.4, batch {BATCH})")
    print(
        f"  Thompson sampling {mean:.1f} ± {1.96 * sem:.1f} (95%, {SEEDS} seeds) vs "
        f"Lai-Robbins C·ln 10 = {constant:.2f} * 2.303 = {bound_growth:.1f}: ratio {ratio:.2f}"
    )
    figures["targets"] = [
        target("regret growth / Lai-Robbins growth", round(ratio, 3), "<= 1.0", ratio <= 1.0)
    ]
    return figures


if __name__ == "__main__":
    run()
