"""Targets the benchmarks check: each figure, its goal, and whether this run met it.

Every benchmark's `run()` returns a dict that may carry a "targets" list built with `target()`;
`make bench` prints them all in one table at the end and stores them in var/bench/results.json.
"""

from __future__ import annotations

from typing import Any


def target(name: str, measured: float, goal: str, holds: bool, unit: str = "") -> dict[str, Any]:
    """`goal` is the human-readable target ("<= 2x the floor"); `holds` says whether it was met."""
    return {
        "name": name,
        "measured": measured,
        "unit": unit,
        "goal": goal,
        "holds": bool(holds),
    }


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets")
    width = max((len(t["name"]) for t in targets), default=0)
    for t in targets:
        value = t["measured"]
        measured = f"{value:,.3g}" if isinstance(value, float) else f"{value:,}"
        verdict = "holds" if t["holds"] else "MISSED"
        print(f"  {t['name']:<{width}}  {measured} {t['unit']:<8} {t['goal']:<28} {verdict}")
