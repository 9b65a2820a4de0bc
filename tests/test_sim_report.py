"""The simulate command's printed table (service.sim_report.table)."""

from __future__ import annotations

from bandits.simulate import compare
from bandits.worlds import load_scenario
from service.sim_report import table

# Two arms alike: in 300 impressions neither posterior comes near 0.95.
CLOSE = load_scenario({"segments": [{"key": "everyone", "rates": [0.05, 0.05]}]})


def _row(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(label))


def test_a_posterior_policy_that_declared_no_winner_says_so() -> None:
    summary = compare(CLOSE, ["thompson", "uniform"], impressions=300, seeds=2)
    assert summary["policies"]["thompson"]["impressions_to_winner"]["declared"] == 0
    lines = table(CLOSE, summary).splitlines()
    # Before, "-" for both: as if Thompson sampling's winner were not measured.
    assert _row(lines, "Thompson sampling").endswith("none (0/2)")
    assert _row(lines, "uniform A/B split").endswith("-")


def test_declared_winners_show_their_impressions_and_count() -> None:
    apart = load_scenario({"segments": [{"key": "everyone", "rates": [0.01, 0.5]}]})
    summary = compare(apart, ["thompson"], impressions=2_000, seeds=2)
    row = _row(table(apart, summary).splitlines(), "Thompson sampling")
    assert row.endswith("(2/2)")
    assert "none" not in row
