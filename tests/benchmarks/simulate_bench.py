"""Simulated impressions per second: the in-process simulator on the plain 10-arm scenario, and
on the same with conversions arriving late (a delay as long as the run, which once made a run's
time grow with the square of its length: 64 s for these impressions, 3.9 s since)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bandits.simulate import simulate
from bandits.worlds import load_scenario
from tests.benchmarks.targets import target

ROOT = Path(__file__).resolve().parents[2]
IMPRESSIONS = 1_000_000
# Mean impressions between a decision and its conversion, in the delayed run.
LONG_DELAY = 1_000_000


def run() -> dict[str, Any]:
    world = load_scenario(ROOT / "bandits" / "scenarios" / "plain.json")
    arms = len(world.segments[0].rates)
    simulate(world, "thompson", impressions=10_000, seed=0, batch=100)  # warm-up
    started = time.perf_counter()
    simulate(world, "thompson", impressions=IMPRESSIONS, seed=1, batch=100)
    elapsed = time.perf_counter() - started
    scenario = json.loads((ROOT / "bandits" / "scenarios" / "plain.json").read_text())
    delayed = load_scenario({**scenario, "delay": {"mean_impressions": LONG_DELAY}})
    started = time.perf_counter()
    simulate(delayed, "thompson", impressions=IMPRESSIONS, seed=1, batch=100)
    delayed_elapsed = time.perf_counter() - started
    figures = {
        "arms": arms,
        "impressions": IMPRESSIONS,
        "batch": 100,
        "seconds": round(elapsed, 2),
        "impressions_per_second": round(IMPRESSIONS / elapsed),
        "impressions_per_minute": round(IMPRESSIONS / elapsed * 60),
        "delayed_mean_impressions": LONG_DELAY,
        "delayed_seconds": round(delayed_elapsed, 2),
        "delayed_impressions_per_minute": round(IMPRESSIONS / delayed_elapsed * 60),
    }
    figures["targets"] = [
        target(
            "simulated impressions per minute",
            figures["impressions_per_minute"],
            ">= 1,000,000",
            figures["impressions_per_minute"] >= 1_000_000,
        )
    ]
    print(f"\nSimulation (Thompson sampling, {arms} arms, batches of 100)")
    print(
        f"  {IMPRESSIONS:,} impressions in {figures['seconds']} s: "
        f"{figures['impressions_per_minute']:,} per minute (target >= 1,000,000)"
    )
    print(
        f"  the same, conversions a mean {LONG_DELAY:,} impressions late: "
        f"{figures['delayed_seconds']} s, {figures['delayed_impressions_per_minute']:,} per minute"
    )
    return figures


if __name__ == "__main__":
    run()
