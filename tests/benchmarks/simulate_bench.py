"""Simulated impressions per second: the in-process simulator on the plain 10-arm scenario."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bandits.simulate import simulate
from bandits.worlds import load_scenario
from tests.benchmarks.targets import target

ROOT = Path(__file__).resolve().parents[2]
IMPRESSIONS = 1_000_000


def run() -> dict[str, Any]:
    world = load_scenario(ROOT / "bandits" / "scenarios" / "plain.json")
    arms = len(world.segments[0].rates)
    simulate(world, "thompson", impressions=10_000, seed=0, batch=100)  # warm-up
    started = time.perf_counter()
    simulate(world, "thompson", impressions=IMPRESSIONS, seed=1, batch=100)
    elapsed = time.perf_counter() - started
    figures = {
        "arms": arms,
        "impressions": IMPRESSIONS,
        "batch": 100,
        "seconds": round(elapsed, 2),
        "impressions_per_second": round(IMPRESSIONS / elapsed),
        "impressions_per_minute": round(IMPRESSIONS / elapsed * 60),
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
    return figures


if __name__ == "__main__":
    run()
