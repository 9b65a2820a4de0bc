"""generation.pipeline.generate_variants with a scripted writer: no model is loaded."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from generation import similarity as similarity_module
from generation.lint import RULES, lint
from generation.pipeline import (
    FRAGMENT,
    TOO_LONG,
    GenerationResult,
    Rejection,
    generate_variants,
)
from generation.prompts import SYSTEM, brief_words, build_messages
from generation.similarity import DEFAULT_THRESHOLD, NgramSimilarity
from generation.writer import Sample
from tests.test_generation_lint import BRIEF

G1 = "Grip every weekend trail in Ridgeline shoes."
G1_TWIN = "Grip every weekend path in Ridgeline shoes."
G2 = "Quick-drying Ridgeline shoes shrug off stream crossings."
G3 = "Step over rocks with confidence in lightweight Ridgeline shoes."
G4 = "Rain or shine, Ridgeline shoes hold the trail."
BAD = "Save 20% on Ridgeline shoes for weekend trail grip."
# Similar enough to be redundant, not so similar that de-duplication drops one.
TWIN_A = "Ridgeline shoes grip every trail, every weekend."
TWIN_B = "Ridgeline shoes grip each trail, each weekend."

SIMILARITY = NgramSimilarity()
Scripted = str | Sample


class Call(NamedTuple):
    messages: list[dict[str, str]]
    n: int
    seed: int


class FakeWriter:
    """Returns one scripted batch per call; plain strings are finished samples at logprob -1."""

    model_id = "fake"

    def __init__(self, *batches: Sequence[Scripted]) -> None:
        self.batches = list(batches)
        self.calls: list[Call] = []

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        self.calls.append(Call(messages, n, seed))
        batch = self.batches.pop(0)
        return [item if isinstance(item, Sample) else Sample(item, True, -1.0) for item in batch]

    @property
    def seeds(self) -> list[int]:
        return [call.seed for call in self.calls]


class ExactSimilarity:
    """1.0 for the same text, else 0.0: every pair of distinct lines is equally diverse."""

    def matrix(self, left: Sequence[str], right: Sequence[str]) -> list[list[float]]:
        return [[float(a == b) for b in right] for a in left]


def run(writer: FakeWriter, n: int, **kwargs: Any) -> GenerationResult:
    return generate_variants(BRIEF, n, writer=writer, **kwargs)


def texts(result: GenerationResult) -> list[str]:
    return [candidate.text for candidate in result.accepted]


def twin_reason(text: str, twin: str) -> str:
    score = SIMILARITY.matrix([text], [twin])[0][0]
    return f"near_duplicate: {score:.2f} similar to {twin!r}"


def test_importing_generation_loads_no_model_library() -> None:
    code = "import generation, sys; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]


def test_only_lint_passing_lines_are_accepted_and_every_rejection_has_reasons() -> None:
    multi = "Save 20% at www.example with Ridgeline, guaranteed!"
    cut_off = "Ridgeline shoes grip every"
    writer = FakeWriter(
        [
            G1,
            BAD,
            Sample(cut_off, finished=False, logprob=-1.0),
            G1_TWIN,
            multi,
            "- Assistant: Rain or shine, Ridgeline shoes hold the trail.",
        ]
    )
    result = run(writer, 5, max_rounds=1, batch_size=6)
    assert texts(result) == [G1, G4]
    assert result.rejected == [
        Rejection(BAD, ("invented_number: numbers not in the product facts: 20",)),
        Rejection(cut_off, (FRAGMENT,)),
        Rejection(G1_TWIN, (twin_reason(G1_TWIN, G1),)),
        Rejection(multi, tuple(lint(multi, BRIEF).reasons())),
    ]
    assert len(result.rejected[-1].reasons) == 3
    assert result.sampled == 6
    assert result.rounds == 1
    assert result.model_id == "fake"
    assert writer.calls[0].n == 6
    for candidate in result.accepted:
        assert candidate.lint == (*RULES, "near_duplicate")
        assert candidate.seed == 0


def test_a_line_cut_off_as_too_long_is_trimmed_to_its_last_whole_sentence_as_at_the_limit() -> None:
    # The sampler cuts a row whose line passed the lint's longest: the model had not ended it,
    # so it is a fragment like a row cut at the token limit, not a line to be refused whole.
    run_on = "Ridgeline shoes grip every weekend trail and keep going on and on past the end"
    writer = FakeWriter(
        [
            Sample(f"{G1} {run_on}", finished=False, logprob=-1.0, too_long=True),
            Sample(run_on, finished=False, logprob=-1.0, too_long=True),
        ]
    )
    result = run(writer, 2, max_rounds=1, batch_size=2)
    assert texts(result) == [G1]
    assert result.rejected == [Rejection(run_on, (TOO_LONG,))]


@pytest.mark.parametrize(
    ("existing", "batch", "dropped", "twin"),
    [
        ([G1], [G1_TWIN, G2], G1_TWIN, G1),  # against what the experiment already has
        ([], [G2, G2.upper()], G2.upper(), G2),  # within the run
    ],
)
def test_near_duplicates_are_dropped(
    existing: list[str], batch: list[str], dropped: str, twin: str
) -> None:
    result = run(FakeWriter(batch), 1, existing=existing, max_rounds=1)
    assert texts(result) == [G2]
    (rejection,) = result.rejected
    assert rejection.text == dropped
    assert rejection.reasons[0].startswith("near_duplicate: ")
    assert repr(twin) in rejection.reasons[0]
    assert rejection.reasons == (twin_reason(rejection.text, twin),)


def test_each_line_is_read_once_for_the_duplicate_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every candidate is compared with the segment's copy and the lines accepted so far: their
    # 3-grams were built again for each candidate (and the candidate's for each line), 2.5 ms a
    # candidate against 80 lines, and a job samples 16 a round.
    reads: Counter[str] = Counter()
    grams = similarity_module._grams

    def counted(text: str, n: int) -> Counter[str]:
        reads[text] += 1
        return grams(text, n)

    monkeypatch.setattr(similarity_module, "_grams", counted)
    existing = [G2, G3]
    batch = [G1, G1_TWIN, G4, TWIN_A, TWIN_B]
    result = run(FakeWriter(batch), 3, existing=existing, max_rounds=1, batch_size=len(batch))
    assert [rejection.text for rejection in result.rejected] == [G1_TWIN, TWIN_A]  # twins of G1
    assert len(result.accepted) == 3  # ranking compares the survivors with each other again
    assert reads == {text: 1 for text in [*existing, *batch]}


# Vietnamese stacks accents: written with combining marks, this line looks the same as written
# precomposed, and it passed de-duplication against itself (0.56 similar) and was stored as is.
VIETNAMESE = "Giày Ridgeline: bước chân nhẹ nhàng trên mọi nẻo đường."
DECOMPOSED = unicodedata.normalize("NFD", VIETNAMESE)


def test_lines_are_kept_in_nfc_as_copy_written_by_hand_is() -> None:
    result = run(FakeWriter([DECOMPOSED]), 1, max_rounds=1)
    assert texts(result) == [VIETNAMESE]


# Chinese and Japanese copy writes full-width forms: the line in them, which the lint reads as the
# line, passed de-duplication against it (0.0 similar: no letter in common).
G1_FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in G1)


@pytest.mark.parametrize(
    ("existing", "sampled"),
    [([VIETNAMESE], DECOMPOSED), ([DECOMPOSED], VIETNAMESE), ([G1], G1_FULL_WIDTH)],
    ids=["hand-written-nfc", "stored-before-nfc", "full-width"],
)
def test_the_same_line_in_another_normal_form_is_a_duplicate(
    existing: list[str], sampled: str
) -> None:
    result = run(FakeWriter([sampled, G2]), 1, existing=existing, max_rounds=1)
    assert texts(result) == [G2]
    (rejection,) = result.rejected
    assert rejection.reasons == (f"near_duplicate: 1.00 similar to {existing[0]!r}",)


def test_stops_after_the_first_round_when_enough_survive() -> None:
    writer = FakeWriter([G1, G2, G3], [G4])
    result = run(writer, 2, seed=7)
    assert writer.seeds == [7]
    assert result.rounds == 1
    assert len(result.accepted) == 2
    assert set(texts(result)) <= {G1, G2, G3}
    assert writer.batches == [[G4]]


def test_more_rounds_with_the_next_seeds_until_enough_survive() -> None:
    progress: list[tuple[int, int, int]] = []
    writer = FakeWriter([G1, BAD], [BAD], [G2, G1_TWIN, G3, G4], [G4])
    result = run(writer, 3, seed=10, max_rounds=4, progress=lambda *args: progress.append(args))
    assert writer.seeds == [10, 11, 12]
    assert result.rounds == 3
    assert progress == [(1, 4, 1), (2, 4, 1), (3, 4, 3)]
    assert len(result.accepted) == 3
    assert {c.text: c.seed for c in result.accepted}[G1] == 10
    assert all(c.seed == 12 for c in result.accepted if c.text != G1)
    assert result.sampled == 7


def test_never_more_than_max_rounds() -> None:
    progress: list[tuple[int, int, int]] = []
    writer = FakeWriter(*([BAD] for _ in range(5)))
    result = run(writer, 2, seed=3, max_rounds=3, progress=lambda *args: progress.append(args))
    assert writer.seeds == [3, 4, 5]
    assert result.rounds == 3
    assert result.accepted == []
    assert [r.text for r in result.rejected] == [BAD] * 3
    assert progress == [(1, 3, 0), (2, 3, 0), (3, 3, 0)]


def test_returns_at_most_n() -> None:
    result = run(FakeWriter([G1, G2, G3, G4]), 2)
    assert len(result.accepted) == 2
    assert result.rejected == []


def test_messages_carry_the_brief() -> None:
    brief = dataclasses.replace(
        BRIEF, brand_voice="Warm and plain-spoken, never pushy.", leaders=(G1, G4)
    )
    writer = FakeWriter([G2])
    result = generate_variants(brief, 1, writer=writer)
    assert writer.calls[0].messages == result.messages == build_messages(brief)
    final = result.messages[-1]["content"]
    for expected in (
        "Ridgeline trail-running shoes",
        "$129",
        brief.product_description,
        brief.segment,
        "Warm and plain-spoken, never pushy.",
        f"- {G1}",
        f"- {G4}",
    ):
        assert expected in final


def test_build_messages_shape() -> None:
    messages = build_messages(BRIEF)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[0]["content"] == SYSTEM
    final = messages[-1]["content"]
    assert final.startswith("Product: Ridgeline trail-running shoes\n")
    assert "Price: $129." in final
    assert "Voice:" not in final
    assert "Lines that work now" not in final
    assert all(m["content"].strip() for m in messages)


def test_brief_words_are_the_fields_of_the_last_ask_without_its_english_scaffolding() -> None:
    brief = dataclasses.replace(
        BRIEF,
        product_name="リッジライン",
        product_description="防水のトレイルシューズ。\n片足280グラム。",
        segment="週末のハイカー。",
        brand_voice="静かで率直。",
        leaders=("雨の山道でも足元はドライ。",),
    )
    assert brief_words(build_messages(brief)) == "\n".join(
        [
            "リッジライン",
            f"防水のトレイルシューズ。\n片足280グラム。 Price: {brief.price_text()}.",
            "週末のハイカー。",
            "静かで率直。",
            "雨の山道でも足元はドライ。",
        ]
    )


def test_equally_diverse_lines_rank_by_logprob() -> None:
    batch = [Sample(G1, True, -3.0), Sample(G2, True, -1.0), Sample(G3, True, -2.0)]
    result = run(FakeWriter(batch), 3, similarity=ExactSimilarity())
    assert texts(result) == [G2, G3, G1]
    assert [c.logprob for c in result.accepted] == [-1.0, -2.0, -3.0]


@pytest.mark.parametrize(
    "others",
    [
        [Sample(G2, True, -1.10)],
        # a much less fluent line widens the logprob range
        [Sample(G2, True, -1.10), Sample(G3, True, -4.0)],
    ],
    ids=["twins-and-distinct", "with-low-outlier"],
)
def test_ranking_prefers_a_distinct_line_over_a_twin(others: list[Sample]) -> None:
    twin_score = SIMILARITY.matrix([TWIN_A], [TWIN_B])[0][0]
    assert 0.6 < twin_score < DEFAULT_THRESHOLD
    assert max(row[0] for row in SIMILARITY.matrix([TWIN_A, TWIN_B], [G2])) < 0.3
    batch = [Sample(TWIN_A, True, -1.00), Sample(TWIN_B, True, -1.02), *others]
    result = run(FakeWriter(batch), 2)
    assert len(result.rejected) == 0
    assert texts(result) == [TWIN_A, G2]


@pytest.mark.parametrize(
    "bad", [{"n": 0}, {"n": -1}, {"batch_size": 0}, {"max_rounds": 0}, {"max_rounds": -2}]
)
def test_invalid_sizes_raise(bad: dict[str, int]) -> None:
    writer = FakeWriter([G1])
    arguments: dict[str, Any] = {"n": 1, **bad}
    with pytest.raises(ValueError, match="must be >= 1"):
        generate_variants(BRIEF, writer=writer, **arguments)
    assert writer.calls == []
