"""`make bench`: run every benchmark, print its table, write var/bench/results.json."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

from tests.benchmarks import generation_bench, priors_bench, simulate_bench

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    results = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor(),
            "cpus": __import__("os").cpu_count(),
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "simulation": simulate_bench.run(),
        "new_arm_priors": priors_bench.run(),
        "generation": generation_bench.run(),
    }
    out = ROOT / "var" / "bench" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
