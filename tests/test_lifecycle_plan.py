"""plan_segment and plan_guardrail: what the lifecycle decides from counters alone (no database)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from bandits import stats
from service.lifecycle import Action, Arm, plan_guardrail, plan_segment
from service.policy import LifecyclePolicy

CONTROL = 1


def arm(
    variant_id: int,
    impressions: int,
    conversions: int,
    *,
    origin: str = "manual",
    status: str = "active",
) -> Arm:
    """An arm at a uniform prior: alpha = 1 + conversions, beta = 1 + failures."""
    return Arm(
        variant_id,
        origin,
        status,
        impressions,
        conversions,
        1.0 + conversions,
        1.0 + impressions - conversions,
    )


def control(impressions: int, conversions: int) -> Arm:
    return arm(CONTROL, impressions, conversions, origin="control")


def policy(**fields: Any) -> LifecyclePolicy:
    """Regeneration off unless a test asks for it, so only the rule under test acts."""
    return LifecyclePolicy(**{"regenerate": False, **fields})


def of_kind(actions: list[Action], kind: str) -> list[Action]:
    return [a for a in actions if a.kind == kind]


def touched(actions: list[Action], *kinds: str) -> set[int | None]:
    return {a.variant_id for a in actions if a.kind in kinds}


# --- retirement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loser", "retired"),
    [
        pytest.param(arm(3, 150, 0), False, id="prob_best-low-but-too-few-impressions"),
        pytest.param(arm(3, 1000, 95), False, id="enough-impressions-but-prob_best-high"),
        pytest.param(arm(3, 1000, 50), True, id="past-both-thresholds"),
    ],
)
def test_retirement_needs_both_thresholds(loser: Arm, retired: bool) -> None:
    arms = [arm(2, 1000, 100), loser]
    rules = policy(min_impressions=200, retire_below=0.02)
    retirements = of_kind(plan_segment(arms, rules), "retire")
    assert touched(retirements, "retire") == ({3} if retired else set())
    if retired:
        (action,) = retirements
        assert "prob_best" in action.reason and "retire_below" in action.reason
        numbers = action.numbers
        assert numbers["prob_best"] < 0.02 and numbers["retire_below"] == 0.02
        assert numbers["expected_loss"] > 0.03
        assert (numbers["impressions"], numbers["conversions"]) == (1000, 50)


@pytest.mark.parametrize(("loss_above", "retired"), [(None, False), (0.005, True)])
def test_expected_loss_rule(loss_above: float | None, retired: bool) -> None:
    # 8% against 10% on 1,000 impressions each: a few percent chance of being best, which is
    # above retire_below, but about two points of conversion rate given up.
    arms = [arm(2, 1000, 100), arm(3, 1000, 80)]
    rules = policy(retire_below=0.001, retire_loss_above=loss_above)
    retirements = of_kind(plan_segment(arms, rules), "retire")
    assert touched(retirements, "retire") == ({3} if retired else set())
    if retired:
        (action,) = retirements
        assert "expected_loss" in action.reason and "prob_best" not in action.reason
        assert action.numbers["prob_best"] >= 0.001
        assert action.numbers["expected_loss"] > 0.005
        assert action.numbers["retire_loss_above"] == 0.005


# --- never zero live variants, never the control -------------------------------------------------


@pytest.mark.parametrize(
    ("arms", "kept"),
    [
        pytest.param([arm(2, 1000, 50), arm(3, 1000, 52)], 3, id="two-arms"),
        pytest.param([arm(2, 1000, 40), arm(3, 1000, 60), arm(4, 1000, 50)], 3, id="three-arms"),
        pytest.param([arm(2, 1000, 10), arm(3, 1000, 100)], 3, id="terrible-vs-great"),
    ],
)
def test_without_a_control_the_best_arm_stays_live(arms: list[Arm], kept: int) -> None:
    # retire_below 0.99 and a tiny loss threshold: by the rules alone every arm but a certain
    # best one would go, and with close rates every arm qualifies.
    rules = policy(retire_below=0.99, retire_loss_above=1e-9, declare_at=1.0)
    actions = plan_segment(arms, rules)
    retired = touched(actions, "retire", "pause")
    assert retired == {a.variant_id for a in arms} - {kept}


def test_a_single_active_arm_is_never_retired() -> None:
    arms = [
        arm(2, 1000, 1),
        arm(3, 1000, 200, status="retired"),
        arm(4, 1000, 150, status="paused"),
    ]
    rules = policy(retire_below=0.99, retire_loss_above=1e-9)
    assert plan_segment(arms, rules) == []


@pytest.mark.parametrize(
    "rules",
    [
        policy(retire_below=0.99),
        policy(retire_below=0.99, guardrail_at=0.51),
    ],
    ids=["harsh-retire_below", "hair-trigger-guardrail"],
)
def test_the_control_is_never_retired_or_paused(rules: LifecyclePolicy) -> None:
    arms = [control(5000, 10), arm(2, 5000, 500), arm(3, 5000, 600)]
    actions = plan_segment(arms, rules)
    assert CONTROL not in touched(actions, "retire", "pause")
    # The rules did act: the weaker challenger went, the control stayed beside the best one.
    assert touched(actions, "retire", "pause") == {2}


def test_with_a_control_the_best_challenger_still_stays_live() -> None:
    # README: "a segment never drops to zero live variants (the best one stays, whatever the rules
    # say)". Two equally good challengers each give up about 0.5 points against the other, so a
    # 0.005 loss threshold qualifies both; the one that stays must not be the far worse control.
    arms = [control(1000, 20), arm(2, 1000, 100), arm(3, 1000, 100)]
    rules = policy(retire_loss_above=0.005)
    retired = touched(plan_segment(arms, rules), "retire", "pause")
    assert CONTROL not in retired
    assert retired != {2, 3}, "both challengers retired; only the 2% control is left live"


def new_arm(variant_id: int) -> Arm:
    """A line just written, at Beta(1, 1): the prior a segment with one past arm gives it."""
    return Arm(variant_id, "generated", "active", 0, 0, 1.0, 1.0)


@pytest.mark.parametrize("rules", [policy(), policy(retire_loss_above=1e-9)])
def test_new_copy_does_not_retire_the_best_copy_judged_so_far(rules: LifecyclePolicy) -> None:
    # Three untested lines beside a proven 5% line: its probability best is P(three uniform
    # draws all below ~5%), about 1e-4, and one of the new lines leads.
    proven = arm(2, 5000, 250)
    actions = plan_segment([proven, new_arm(3), new_arm(4), new_arm(5)], rules)
    assert touched(actions, "retire", "pause") == set()


def test_a_judged_loser_still_retires_beside_new_copy() -> None:
    arms = [arm(2, 5000, 250), arm(3, 5000, 150), new_arm(4), new_arm(5)]
    assert touched(plan_segment(arms, policy()), "retire") == {3}


def test_the_lifecycle_judges_by_the_figures_the_report_shows() -> None:
    """7.4% against 10% on 1,000 impressions each: probability best 0.0197, which the report
    shows. The lifecycle drew its own, 20,000 seeded draws, which put it at 0.0214 and kept a
    line the page showed under retire_below 0.02."""
    arms = [arm(2, 1000, 100), arm(3, 1000, 74)]
    shown = stats.summarize_exact([a.alpha for a in arms], [a.beta for a in arms])
    assert shown["prob_best"][1] < 0.02
    (retire,) = of_kind(plan_segment(arms, policy(retire_below=0.02)), "retire")
    assert retire.variant_id == 3
    assert retire.reason == f"prob_best {shown['prob_best'][1]:.4f} < retire_below 0.02"
    assert retire.numbers["prob_best"] == round(float(shown["prob_best"][1]), 6)
    assert retire.numbers["expected_loss"] == round(float(shown["expected_loss"][1]), 6)


# --- regeneration -------------------------------------------------------------------------------


IDLE = [arm(2, 0, 0), arm(3, 0, 0)]


@pytest.mark.parametrize(
    ("arms", "fields", "pending", "expected"),
    [
        pytest.param(IDLE, {}, 0, {"live": 2, "n": 2}, id="two-live-target-four"),
        pytest.param(IDLE, {"max_active": 4}, 1, {"live": 2, "n": 1}, id="capped-by-room"),
        pytest.param(IDLE, {"max_active": 4}, 2, None, id="no-room"),
        pytest.param(IDLE, {"regenerate": False}, 0, None, id="off"),
        pytest.param([*IDLE, arm(4, 0, 0), arm(5, 0, 0)], {}, 0, None, id="at-target"),
        pytest.param(
            [arm(2, 1000, 100), arm(3, 1000, 100), arm(4, 1000, 100), arm(5, 1000, 20)],
            {"declare_at": 1.0},
            0,
            {"live": 3, "n": 1},
            id="retired-in-same-plan-count-as-gone",
        ),
        pytest.param(
            [arm(2, 0, 0), arm(3, 0, 0, status="paused"), arm(4, 0, 0, status="pending_review")],
            {},
            1,
            {"live": 1, "n": 3},
            id="only-active-arms-are-live",
        ),
    ],
)
def test_regeneration_below_target(
    arms: list[Arm], fields: dict[str, Any], pending: int, expected: dict[str, int] | None
) -> None:
    rules = LifecyclePolicy(**{"target_active": 4, **fields})
    regenerate = of_kind(plan_segment(arms, rules, pending=pending), "regenerate")
    if expected is None:
        assert regenerate == []
        return
    (action,) = regenerate
    assert action.variant_id is None
    assert action.numbers == {**expected, "pending": pending, "on_order": 0}
    assert f"asking the model for {expected['n']} more" in action.reason


@pytest.mark.parametrize(
    ("pending", "on_order", "n"),
    [(0, 1, 1), (0, 2, None), (1, 0, 2), (3, 1, 1), (0, 5, None)],
)
def test_copy_on_order_counts_toward_the_target_and_review_only_toward_the_room(
    pending: int, on_order: int, n: int | None
) -> None:
    # Two live, target 4, max 8. Before, lines on order only took room, so a pass while a job was
    # still queued asked for the same two lines again.
    rules = LifecyclePolicy(target_active=4, max_active=8)
    actions = plan_segment(IDLE, rules, pending=pending, on_order=on_order)
    assert [a.numbers["n"] for a in of_kind(actions, "regenerate")] == ([] if n is None else [n])


@pytest.mark.parametrize(
    ("live", "pending", "on_order", "max_active", "reason"),
    [
        (2, 0, 0, 8, "2 live variants, target 4: asking the model for 2 more"),
        (1, 0, 0, 8, "1 live variant, target 4: asking the model for 3 more"),
        (1, 0, 2, 8, "1 live variant, target 4, 2 more on order: asking the model for 1 more"),
        (
            1,
            6,
            0,
            8,
            "1 live variant, target 4; room for 1 under max_active 8, 6 pending review: "
            "asking the model for 1 more",
        ),
        (
            1,
            1,
            1,
            4,
            "1 live variant, target 4, 1 more on order; room for 1 under max_active 4, 1 pending "
            "review: asking the model for 1 more",
        ),
    ],
)
def test_an_order_s_reason_says_what_made_it_fewer_than_the_target_misses(
    live: int, pending: int, on_order: int, max_active: int, reason: str
) -> None:
    """It read '1 live variants, target 4: asking the model for 1 more' where lines on order or
    the room under max_active set the number, which only `numbers` said."""
    rules = LifecyclePolicy(target_active=4, max_active=max_active)
    arms = [arm(i, 0, 0) for i in range(2, 2 + live)]
    (order,) = of_kind(plan_segment(arms, rules, pending=pending, on_order=on_order), "regenerate")
    assert order.reason == reason


# --- guardrail ----------------------------------------------------------------------------------


def test_guardrail_pauses_an_arm_far_below_the_control() -> None:
    arms = [control(1000, 100), arm(2, 1000, 40), arm(3, 1000, 95)]
    (pause,) = of_kind(plan_segment(arms, policy(min_impressions=200)), "pause")
    assert pause.variant_id == 2
    assert pause.reason.startswith("guardrail")
    assert pause.numbers["p_below_control"] >= 0.99
    assert pause.numbers["guardrail_at"] == 0.99
    assert pause.numbers["control_variant_id"] == CONTROL
    assert (pause.numbers["control_impressions"], pause.numbers["control_conversions"]) == (
        1000,
        100,
    )


@pytest.mark.parametrize(
    "arms",
    [
        pytest.param([control(150, 15), arm(2, 1000, 5)], id="control-too-few-impressions"),
        pytest.param([control(1000, 100), arm(2, 150, 0)], id="arm-too-few-impressions"),
        pytest.param([arm(2, 1000, 100), arm(3, 1000, 5)], id="no-control"),
        pytest.param([control(1000, 100), arm(2, 1000, 90)], id="not-clearly-worse"),
    ],
)
def test_guardrail_holds_off(arms: list[Arm]) -> None:
    assert of_kind(plan_segment(arms, policy(min_impressions=200)), "pause") == []
    assert plan_guardrail(arms, policy(min_impressions=200)) == []


def test_the_guardrail_reads_the_exact_chance_not_a_draw_of_it() -> None:
    """71 conversions in 1,000 against the control's 100: P(rate below control) is 0.98975,
    under 0.99, but 20,000 draws at the fixed seed read 0.99005, and the line was paused on
    their noise (0.0007 either way at 0.99)."""
    arms = [control(1000, 100), arm(2, 1000, 71)]
    rules = policy(min_impressions=200)
    assert plan_guardrail(arms, rules) == []
    assert of_kind(plan_segment(arms, rules), "pause") == []
    # One conversion fewer, 0.99188: paused, with that figure.
    (pause,) = plan_guardrail([control(1000, 100), arm(2, 1000, 70)], rules)
    assert pause.numbers["p_below_control"] == pytest.approx(0.991883, abs=1e-6)


def test_plan_guardrail_returns_only_guardrail_actions() -> None:
    # 2 trips the guardrail, 4 is no worse than the control but far behind 3, which wins.
    arms = [control(1000, 100), arm(2, 1000, 40), arm(3, 1000, 150), arm(4, 1000, 95)]
    rules = LifecyclePolicy(min_impressions=200)
    full = plan_segment(arms, rules)
    assert {a.kind for a in full} >= {"pause", "retire", "declare_winner", "regenerate"}
    guardrail = plan_guardrail(arms, rules)
    assert guardrail and {a.kind for a in guardrail} == {"pause"}
    assert guardrail == of_kind(full, "pause")


# --- winner -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arms", "winner_id", "declared"),
    [
        pytest.param([arm(2, 1000, 150), arm(3, 1000, 100)], None, 2, id="dominant-arm"),
        pytest.param([arm(2, 1000, 150), arm(3, 199, 10)], None, None, id="one-arm-too-new"),
        pytest.param([arm(2, 1000, 150), arm(3, 1000, 100)], 2, None, id="already-declared"),
        pytest.param([arm(2, 1000, 150), arm(3, 1000, 100)], 3, 2, id="new-winner"),
        pytest.param([arm(2, 1000, 100), arm(3, 1000, 98)], None, None, id="too-close"),
    ],
)
def test_declare_winner(arms: list[Arm], winner_id: int | None, declared: int | None) -> None:
    rules = policy(min_impressions=200, declare_at=0.95)
    winners = of_kind(plan_segment(arms, rules, winner_id=winner_id), "declare_winner")
    assert touched(winners, "declare_winner") == (set() if declared is None else {declared})
    for action in winners:
        assert action.numbers["prob_best"] >= 0.95
        assert action.numbers["declare_at"] == 0.95
        assert "declare_at" in action.reason


# --- starved copy -------------------------------------------------------------------------------


def served(impressions: int, asked: list[tuple[int, int]] | None = None) -> Any:
    """A segment that served `impressions` since any of its variants went live (counted up to the
    limit asked, as the database counts); `asked` records who was asked about."""

    def since(variant_id: int, limit: int) -> int:
        if asked is not None:
            asked.append((variant_id, limit))
        return min(impressions, limit)

    return since


# A proven 10% control, and a line that 60 impressions without a conversion put at prob_best
# 0.0017: Thompson sampling shows it about that often, so it might take a million segment
# impressions to reach min_impressions.
STARVING = [control(5000, 500), arm(3, 60, 0)]


@pytest.mark.parametrize(
    ("starved_after", "segment_served", "starved"),
    [
        pytest.param(10, 1999, False, id="one-short-of-starved_after-x-min_impressions"),
        pytest.param(10, 2000, True, id="at-starved_after-x-min_impressions"),
        pytest.param(3, 600, True, id="a-smaller-starved_after"),
        pytest.param(None, 10**9, False, id="starved_after-off"),
    ],
)
def test_starved_copy_retires_and_stops_holding_the_winner_back_at_starved_after(
    starved_after: int | None, segment_served: int, starved: bool
) -> None:
    rules = policy(min_impressions=200, retire_below=0.02, starved_after=starved_after)
    actions = plan_segment(STARVING, rules, served_since=served(segment_served))
    assert touched(actions, "retire") == ({3} if starved else set())
    assert touched(actions, "declare_winner") == ({CONTROL} if starved else set())
    if starved:
        retire, winner = actions
        after = starved_after * 200  # type: ignore[operator]
        assert retire.reason == (
            f"starved: 60 impressions, under min_impressions 200, after its segment served"
            f" {after} since it went live (starved_after {starved_after});"
            " prob_best 0.0017 < retire_below 0.02"
        )
        assert retire.numbers["segment_impressions_since_live"] == after
        assert retire.numbers["starved_after"] == starved_after
        assert (retire.numbers["impressions"], retire.numbers["min_impressions"]) == (60, 200)
        assert winner.numbers["starved_not_waited_for"] == [3]


def test_copy_starved_after_one_impression_says_so_in_the_singular() -> None:
    # Beside a control converting 90%, one impression without a sale leaves prob_best near 1%:
    # the reason read "starved: 1 impressions".
    rules = policy(min_impressions=200, retire_below=0.02, starved_after=10)
    [retire, _] = plan_segment(
        [control(5000, 4500), arm(3, 1, 0)], rules, served_since=served(2000)
    )
    assert retire.kind == "retire" and retire.variant_id == 3
    assert retire.reason.startswith("starved: 1 impression, under min_impressions 200,")


def test_only_starving_copy_costs_a_look_up() -> None:
    # 2: under min_impressions but a contender (prob_best high); the control is judged.
    arms = [control(5000, 500), arm(2, 150, 20), arm(3, 60, 0)]
    asked: list[tuple[int, int]] = []
    actions = plan_segment(arms, policy(), served_since=served(10**6, asked))
    assert asked == [(3, 2000)]
    assert touched(actions, "retire") == {3}
    # The contender still has too little evidence to lose to, so no winner yet.
    assert of_kind(actions, "declare_winner") == []


def test_a_starved_control_stays_live_but_no_longer_holds_the_winner_back() -> None:
    arms = [control(60, 0), arm(2, 5000, 500)]
    actions = plan_segment(arms, policy(), served_since=served(2000))
    assert touched(actions, "retire", "pause") == set()
    (winner,) = of_kind(actions, "declare_winner")
    assert winner.variant_id == 2 and winner.numbers["starved_not_waited_for"] == [CONTROL]
    assert of_kind(plan_segment(arms, policy(), served_since=served(1999)), "declare_winner") == []


def test_the_winner_itself_needs_min_impressions_even_when_starved() -> None:
    # retire_below above declare_at: the leader (150 impressions, prob_best 0.98) is starved too.
    arms = [arm(2, 150, 19), arm(3, 5000, 400)]
    rules = policy(retire_below=0.99, declare_at=0.95)
    actions = plan_segment(arms, rules, served_since=served(10**6))
    assert of_kind(actions, "declare_winner") == []
    assert touched(actions, "retire") == set()


# --- reasons ------------------------------------------------------------------------------------


def _comparison_holds(reason: str) -> bool:
    """Whether the comparison a reason ends with ("x 0.0500 < y 0.05", "= 0.99 >= 0.99") reads
    true."""
    printed = re.search(r"(\S+) (<|>|>=) (?:\w+ )?(\S+)$", reason)
    assert printed is not None, reason
    left, op, right = printed.groups()
    compare = {"<": float.__lt__, ">": float.__gt__, ">=": float.__ge__}[op]
    return compare(float(left), float(right))


@pytest.mark.parametrize(
    ("prob_best", "loss", "rules"),
    [
        # 0.04995 printed to four places was 0.0500: "prob_best 0.0500 < retire_below 0.05".
        pytest.param([0.9, 0.04995], [0.0, 0.01], {"retire_below": 0.05}, id="retire_below"),
        pytest.param([0.9, 0.04999995], [0.0, 0.01], {"retire_below": 0.05}, id="sixth_place"),
        pytest.param(
            [0.6, 0.4],
            [0.0, 0.00010000004],
            {"retire_below": 0.01, "retire_loss_above": 0.0001},
            id="retire_loss_above",
        ),
        pytest.param([0.9500004, 0.05], [0.0, 0.0], {"declare_at": 0.9500001}, id="declare_at"),
    ],
)
def test_a_reason_never_prints_a_comparison_that_reads_false(
    monkeypatch: pytest.MonkeyPatch,
    prob_best: list[float],
    loss: list[float],
    rules: dict[str, float],
) -> None:
    summary = {"prob_best": np.array(prob_best), "expected_loss": np.array(loss)}
    monkeypatch.setattr(stats, "summarize_exact", lambda *_a, **_k: summary)
    actions = plan_segment([arm(2, 1000, 100), arm(3, 1000, 50)], policy(**rules))
    assert actions
    for action in actions:
        assert _comparison_holds(action.reason), action.reason
        assert _numbers_hold(action.numbers), action.numbers


def _numbers_hold(numbers: dict[str, Any]) -> bool:
    """Whether the audit's numbers say the same as the reason: rounded to six places,
    0.04999995 was 0.05 there too."""
    if "retire_below" in numbers:
        return bool(numbers["prob_best"] < numbers["retire_below"])
    if "retire_loss_above" in numbers:
        return bool(numbers["expected_loss"] > numbers["retire_loss_above"])
    if "declare_at" in numbers:
        return bool(numbers["prob_best"] >= numbers["declare_at"])
    return bool(numbers["p_below_control"] >= numbers["guardrail_at"])


def test_a_guardrail_reason_never_prints_a_comparison_that_reads_false(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stats, "prob_below_exact", lambda *_a, **_k: np.array([0.9900004]))
    rules = policy(min_impressions=200, guardrail_at=0.9900001)
    (pause,) = plan_guardrail([control(1000, 100), arm(2, 1000, 90)], rules)
    assert _comparison_holds(pause.reason), pause.reason
    assert _numbers_hold(pause.numbers), pause.numbers
