"""The simulate command's printed table (service.sim_report.table)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bandits.simulate import compare, lai_robbins_constant
from bandits.worlds import load_scenario
from service.sim_report import lai_robbins_bound, plot_full_loop, table, write_outputs

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


def test_one_impression_and_one_seed_are_counted_in_the_singular() -> None:
    # It said "1 impressions x 1 seeds", as the commands' other counts of one no longer do.
    one = compare(CLOSE, ["uniform"], impressions=1, seeds=1)
    head = table(CLOSE, one).splitlines()[0]
    assert head.startswith(f"{one['world']}: 1 impression x 1 seed ("), head
    more = compare(CLOSE, ["uniform"], impressions=1_000, seeds=2)
    head = table(CLOSE, more).splitlines()[0]
    assert head.startswith(f"{more['world']}: 1,000 impressions x 2 seeds ("), head


def test_a_segment_that_expects_no_traffic_adds_nothing_to_the_bound() -> None:
    world = load_scenario(
        {
            "segments": [
                {"key": "everyone", "rates": [0.05, 0.1]},
                {"key": "nobody", "share": 1e-12, "rates": [0.05, 0.1]},
            ]
        }
    )
    # Before, 1,000 impressions put the second segment's C * ln 2 (2.8) beside the first's.
    want = lai_robbins_constant([0.05, 0.1]) * math.log(1_000 / (1 + 1e-12))
    assert lai_robbins_bound(world, {"impressions": 1_000}) == pytest.approx(want)


def test_copy_with_dollar_signs_is_plotted_as_text(tmp_path: Path) -> None:
    # matplotlib reads text between two dollar signs as TeX: the first line was set as maths,
    # and the second ended the command in a ParseSyntaxException after the whole simulation.
    lines = ["From $89, free shipping over $100.", "Save $5 \\frac on $ orders"]
    world = load_scenario(
        {"name": "$sale$", "segments": [{"key": "a", "rates": [0.1, 0.2], "variants": lines}]}
    )
    summary = compare(world, ["thompson"], impressions=300, seeds=1)
    written = write_outputs(world, summary, tmp_path)
    assert [path.name for path in written] == [
        "summary.json",
        "regret.png",
        "rate.png",
        "traffic_share.png",
    ]
    assert all(path.stat().st_size > 0 for path in written)


def test_copy_is_plotted_as_written_where_matplotlibrc_asks_for_tex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A matplotlibrc with `text.usetex: True` (read from the working folder or the user's
    # config) handed every string to LaTeX, where "50% off & $5 back" is not text: the plots
    # ended the command after the whole simulation, or without LaTeX installed, at once.
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)
    world = load_scenario(
        {"segments": [{"key": "a", "rates": [0.1, 0.2], "variants": ["50% off & $5 back", "B"]}]}
    )
    summary = compare(world, ["thompson"], impressions=300, seeds=1)
    written = write_outputs(world, summary, tmp_path)
    assert all(path.stat().st_size > 0 for path in written)
    rounds = [{"round": 1, "loop_rate": 0.05, "static_ab_rate": 0.04}]
    assert plot_full_loop({"rounds": rounds, "writer": "50% & $5"}, tmp_path).stat().st_size > 0
