"""`make bench`: run every benchmark, print its table and the targets, write
var/bench/results.json.

Benchmarks run one after another in one process (the HTTP one starts its own servers and load
process), so each ratio is measured side by side with its baseline on the same machine state.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from tests.benchmarks import (
    decision_bench,
    generation_bench,
    http_bench,
    ingest_bench,
    priors_bench,
    regret_bench,
    simulate_bench,
)
from tests.benchmarks.targets import print_targets

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    results = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "decision": decision_bench.run(),
        "simulation": simulate_bench.run(),
        "regret": regret_bench.run(),
        "ingestion": ingest_bench.run(),
        "http": http_bench.run(),
        "new_arm_priors": priors_bench.run(),
        "generation": generation_bench.run(),
    }
    targets = [
        t
        for section in results.values()
        if isinstance(section, dict)
        for t in section.get("targets", [])
    ]
    results["targets"] = targets
    print_targets(targets)
    out = ROOT / "var" / "bench" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
