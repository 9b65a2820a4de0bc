"""What `copybandit simulate` writes: the JSON summary, three PNG plots, and a printed table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bandits.simulate import lai_robbins_bound as segment_bound
from bandits.worlds import World
from service.errors import counted

LABELS = {
    "thompson": "Thompson sampling",
    "thompson_informed": "Thompson, informed priors",
    "uniform": "uniform A/B split",
    "epsilon_greedy": "epsilon-greedy (0.1)",
    "oracle": "oracle",
}
# The policies with a posterior, which a run can see declare a winner (bandits.simulate.Trace).
DECLARE_WINNERS = ("thompson", "thompson_informed")


def lai_robbins_bound(world: World, summary: dict[str, Any]) -> float:
    """Sum over segments of C_segment * ln(T_segment): the asymptotic regret floor of any
    consistent policy, for this run's length and traffic split."""
    return _bound_at(world, summary["impressions"])


def _bound_at(world: World, impressions: float) -> float:
    # A segment expecting under one impression adds nothing (ln 1): the floor was 2, and a
    # segment that got no traffic at all added C * ln 2.
    return sum(
        float(segment_bound(s.rates, max(impressions * s.share, 1.0))) for s in world.segments
    )


def write_outputs(world: World, summary: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "lai_robbins_bound": round(lai_robbins_bound(world, summary), 2)}
    paths = [out / "summary.json"]
    paths[0].write_text(json.dumps(summary, indent=2) + "\n")
    paths += _plots(world, summary, out)
    return paths


def _literal_text() -> Any:
    """A context in which matplotlib sets every string as written: copy, names and keys are
    text, never TeX. A line with two dollar signs ("from $89, free over $100") was set as maths
    between them, and one such as "$5 \\frac off $" ended the run, every seed simulated, in a
    ParseSyntaxException. TeX off too: a matplotlibrc that turns it on (in the working folder or
    the user's config) handed every string to LaTeX, where "50% off & $5 back" is not text."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


def _plots(world: World, summary: dict[str, Any], out: Path) -> list[Path]:
    with _literal_text():
        return _draw_plots(world, summary, out)


def _draw_plots(world: World, summary: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    curves = summary["curves"]
    x = curves["impressions"]
    written = []
    for key, title, ylabel in (
        ("regret", "Cumulative regret (vs oracle)", "expected conversions lost"),
        ("rate", "Conversion rate over time", "conversions per impression"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        for name, ys in curves[key].items():
            ax.plot(x, ys, label=LABELS.get(name, name))
        if key == "regret":
            ax.plot(
                x,
                [_bound_at(world, t) for t in x],
                color="grey",
                linestyle=":",
                label="Lai-Robbins sum C*ln(t) (asymptotic)",
            )
        ax.set(title=f"{summary['world']}: {title}", xlabel="impressions", ylabel=ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = out / f"{key}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    # Thompson sampling's when it ran, else the first policy's: the title says which.
    shown = "thompson" if "thompson" in curves["share"] else next(iter(curves["share"]))
    share = curves["share"][shown]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    values = list(zip(*share["values"], strict=True))  # per variant
    labels = [text if len(text) <= 48 else text[:45] + "..." for text in share["variants"]]
    ax.stackplot(
        x, [[v if v is not None else 0.0 for v in series] for series in values], labels=labels
    )
    ax.set(
        title=f"{LABELS.get(shown, shown)}: traffic share per variant ({share['segment']})",
        xlabel="impressions",
        ylabel="share of the segment's traffic",
        ylim=(0, 1),
    )
    ax.legend(fontsize=7, loc="upper left")
    path = out / "traffic_share.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


def table(world: World, summary: dict[str, Any]) -> str:
    """The summary as text: one row a policy, mean [2.5%, 97.5%] over seeds."""

    def cell(stat: dict[str, Any], digits: int = 0) -> str:
        if stat.get("mean") is None:
            return "-"
        return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"

    impressions, seeds = summary["impressions"], len(summary["seeds"])
    lines = [
        # "1 impressions x 1 seeds" for `simulate --seeds 1 --impressions 1`.
        f"{summary['world']}: {counted(impressions, 'impression')} x "
        f"{counted(seeds, 'seed')} (mean [2.5%, 97.5%] over seeds)",
        f"{'policy':<28}{'conversions':>26}{'regret vs oracle':>26}{'share to best':>22}"
        f"{'impressions to winner':>30}",
    ]
    for name, stats in summary["policies"].items():
        winner = stats["impressions_to_winner"]
        declared = f"({winner['declared']}/{winner['runs']})"
        if winner.get("mean") is not None:
            won = f"{cell(winner)} {declared}"
        else:
            # A posterior policy that declared none in any run: "-" read as "not measured", as
            # for the policies that cannot declare one.
            won = f"none {declared}" if name in DECLARE_WINNERS else "-"
        lines.append(
            f"{LABELS.get(name, name):<28}{cell(stats['conversions']):>26}"
            f"{cell(stats['regret'], 1):>26}{cell(stats['share_to_best'], 3):>22}"
            f"{won:>30}"
        )
    bound = lai_robbins_bound(world, summary)
    constants = ", ".join(f"{k} {v:.1f}" for k, v in summary["lai_robbins_constant"].items())
    lines.append(f"Lai-Robbins constant C per segment: {constants}")
    if "thompson" in summary["policies"]:
        regret = summary["policies"]["thompson"]["regret"]["mean"]
        lines.append(
            f"Thompson sampling regret {regret:.1f} beside sum C*ln(T_segment) = {bound:.1f}: "
            "the bound limits how fast regret grows as T -> infinity, not its level at finite T"
        )
    return "\n".join(lines)


def plot_full_loop(result: dict[str, Any], out: Path) -> Path:
    with _literal_text():
        return _draw_full_loop(result, out)


def _draw_full_loop(result: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in result["rounds"]]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(
        rounds,
        [r["loop_rate"] for r in result["rounds"]],
        marker="o",
        label=f"the loop (Thompson + lifecycle + {result['writer']})",
    )
    ax.plot(
        rounds,
        [r["static_ab_rate"] for r in result["rounds"]],
        marker="o",
        label="static A/B of round 1's copy",
    )
    ax.set(title="Conversion rate per round", xlabel="round", ylabel="conversions per impression")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = out / "full_loop.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
