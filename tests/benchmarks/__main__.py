"""`make bench`: run every benchmark, print its table and the targets, write
var/bench/results.json.

Benchmarks run one after another in one process (the HTTP one starts its own servers and load
process), so each ratio is measured side by side with its baseline on the same machine state.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks import (
    counter_bench,
    decision_bench,
    generation_bench,
    http_bench,
    ingest_bench,
    priors_bench,
    regret_bench,
    simulate_bench,
)
from tests.benchmarks.targets import print_targets, target

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    ("decision", decision_bench),
    ("simulation", simulate_bench),
    ("regret", regret_bench),
    ("ingestion", ingest_bench),
    ("http", http_bench),
    ("counter", counter_bench),
    ("new_arm_priors", priors_bench),
    ("generation", generation_bench),
)


def main() -> None:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    seconds: dict[str, float] = {}
    for name, bench in SECTIONS:
        section_started = time.perf_counter()
        results[name] = bench.run()
        seconds[name] = round(time.perf_counter() - section_started, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)
    results["seconds"] = seconds
    targets = [
        t
        for section in results.values()
        if isinstance(section, dict)
        for t in section.get("targets", [])
    ]
    make_started = os.environ.get("COPYBANDIT_BENCH_MAKE_STARTED")
    if make_started:
        # The Makefile's start time: what a fresh clone waits for, install and downloads included.
        whole = round(datetime.now(UTC).timestamp() - int(make_started))
        seconds["make_bench"] = whole
        targets.append(target("make bench, set-up included", whole, "< 600 s", whole < 600, "s"))
    results["targets"] = targets
    print_targets(targets)
    print("\nSeconds: " + ", ".join(f"{name} {value:g}" for name, value in seconds.items()))
    out = ROOT / "var" / "bench" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
