"""generation.decoding with a scripted decoder (no model); its sampling against transformers'."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from generation.decoding import (
    FirstLine,
    Row,
    candidates,
    char_count_table,
    decode,
    generate_like_transformers,
    line_break_table,
)

VOCAB = ["<eos>", "\n", "Hello", " world", ".\n", "\nNext", " more", "\r\n", "<pad>"]
EOS, NL, HELLO, WORLD, DOT_NL, NL_NEXT, MORE, CRLF, PAD = range(len(VOCAB))


def text(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i != EOS)


FIRST_LINE = FirstLine(line_break_table(VOCAB), text)


@dataclass
class ScriptCache:
    rows: list[int] = field(default_factory=lambda: [0])
    kept: list[list[int]] = field(default_factory=list)

    def repeat(self, n: int) -> None:
        self.rows = [row for row in self.rows for _ in range(n)]

    def keep(self, rows: torch.Tensor) -> None:
        self.kept.append(rows.tolist())
        self.rows = [self.rows[i] for i in rows.tolist()]


class ScriptDecoder:
    """Row r's logits put 10 on script[r][step] and 0 elsewhere; it records every batch size."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.step_count = 0
        self.prefills: list[int] = []
        self.steps: list[int] = []

    def logits(self, rows: list[int]) -> torch.Tensor:
        out = torch.zeros(len(rows), len(VOCAB))
        for position, row in enumerate(rows):
            out[position, self.script[row][self.step_count]] = 10.0
        return out

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ScriptCache]:
        self.prefills.append(input_ids.shape[0])
        cache = ScriptCache(rows=list(range(input_ids.shape[0])))
        return self.logits(cache.rows), cache

    def step(self, tokens: torch.Tensor, cache: ScriptCache) -> torch.Tensor:
        assert tokens.shape == (len(cache.rows),)
        self.steps.append(len(cache.rows))
        self.step_count += 1
        return self.logits(cache.rows)


def run(
    script: list[list[int]], max_new_tokens: int = 4, first_line: FirstLine | None = None
) -> tuple[list[Row], ScriptDecoder, ScriptCache]:
    """Greedy decoding of `script` (row i's logits favour script[i][step])."""
    decoder = ScriptDecoder(script)
    logits, cache = decoder.prefill(torch.zeros(len(script), 3, dtype=torch.long))
    rows = decode(
        decoder,
        logits,
        cache,
        max_new_tokens=max_new_tokens,
        stop_ids={EOS},
        choose=lambda scores: scores.argmax(-1),
        first_line=first_line,
    )
    return rows, decoder, cache


def test_rows_stop_at_eos_at_a_complete_first_line_or_at_the_limit() -> None:
    script = [
        [HELLO, WORLD, EOS, MORE],
        [NL, HELLO, DOT_NL, MORE],  # a blank first line does not count
        [HELLO, NL_NEXT, MORE, MORE],  # the break arrives glued to the next line's start
        [MORE, MORE, MORE, MORE],
    ]
    rows, decoder, _ = run(script, first_line=FIRST_LINE)

    assert [(row.tokens, row.end) for row in rows] == [
        ([HELLO, WORLD], "eos"),
        ([NL, HELLO, DOT_NL], "line"),
        ([HELLO, NL_NEXT], "line"),
        ([MORE] * 4, "limit"),
    ]
    assert rows[0].eos == EOS and rows[1].eos is None
    # The EOS's log-probability is kept for scoring, its token is not.
    assert [len(row.logprobs) for row in rows] == [3, 3, 2, 4]
    expected = 10 - torch.logsumexp(torch.tensor([10.0] + [0.0] * (len(VOCAB) - 1)), 0).item()
    assert rows[0].mean_logprob == pytest.approx(expected, rel=1e-3)
    # Finished rows leave the batch; the limit step asks the model for nothing more.
    assert decoder.steps == [4, 3, 1]
    assert text(rows[2].tokens).splitlines()[0] == "Hello"


def test_the_rows_left_keep_their_own_scripts_after_others_leave() -> None:
    script = [
        [EOS, EOS, EOS, EOS],
        [MORE, HELLO, WORLD, EOS],
        [EOS, EOS, EOS, EOS],
        [HELLO, HELLO, DOT_NL, EOS],
    ]
    rows, _, cache = run(script, max_new_tokens=6, first_line=FIRST_LINE)
    assert cache.kept == [[1, 3], [0]]
    assert rows[1].tokens == [MORE, HELLO, WORLD] and rows[1].end == "eos"
    assert rows[3].tokens == [HELLO, HELLO, DOT_NL] and rows[3].end == "line"
    assert rows[0].tokens == rows[2].tokens == []


def test_without_first_line_rows_run_past_line_breaks() -> None:
    (row,), _, _ = run([[HELLO, DOT_NL, MORE, EOS]], max_new_tokens=6)
    assert row.tokens == [HELLO, DOT_NL, MORE] and row.end == "eos"


@pytest.mark.parametrize(
    ("tokens", "complete"),
    [
        ([HELLO], False),
        ([NL], False),
        ([NL, CRLF], False),
        ([HELLO, NL], True),
        ([HELLO, CRLF], True),
        ([NL, NL_NEXT], False),
        ([NL, NL_NEXT, NL], True),
    ],
)
def test_a_first_line_is_complete_when_non_blank_text_precedes_a_break(
    tokens: list[int], complete: bool
) -> None:
    assert FIRST_LINE.complete(tokens) is complete


def test_a_label_on_a_line_of_its_own_does_not_complete_the_first_line() -> None:
    vocab = ["Headline:", "\n", "Grip every trail."]
    first_line = FirstLine(line_break_table(vocab), lambda ids: "".join(vocab[i] for i in ids))
    assert not first_line.complete([0, 1])
    assert first_line.complete([0, 1, 2, 1])


class CountedText:
    """`text`, counting the calls: each is a row's text decoded, which costs CPU at every step."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ids: list[int]) -> str:
        self.calls += 1
        return text(ids)


def at_most(max_chars: int, decode: CountedText | None = None) -> FirstLine:
    return FirstLine(
        line_break_table(VOCAB),
        decode or text,
        max_chars=max_chars,
        chars=char_count_table(VOCAB),
    )


def test_a_row_stops_once_its_line_is_longer_than_the_lint_takes() -> None:
    # A row that never ended its line ran to the token limit (a Japanese one for 300 tokens,
    # 1,116 characters), and every step of it cost the whole batch.
    script = [
        [HELLO] + [MORE] * 11,  # "Hello more more more more" is 25 characters
        [HELLO, MORE, MORE, MORE, NL] + [MORE] * 7,  # "Hello more more more": 20, then ended
        [NL, HELLO, MORE, MORE, MORE, NL] + [MORE] * 6,  # 21 characters, the line's 20
    ]
    rows, decoder, _ = run(script, max_new_tokens=12, first_line=at_most(20))

    assert (rows[0].tokens, rows[0].end) == ([HELLO, MORE, MORE, MORE, MORE], "long")
    assert (rows[1].tokens, rows[1].end) == ([HELLO, MORE, MORE, MORE, NL], "line")
    assert (rows[2].tokens, rows[2].end) == ([NL, HELLO, MORE, MORE, MORE, NL], "line")
    # The batch ends with its last line, not at the limit of 12 tokens.
    assert decoder.steps == [3, 3, 3, 3, 1]


def test_a_line_at_the_longest_the_lint_takes_runs_on_to_its_end() -> None:
    (row,), _, _ = run([[HELLO, MORE, MORE, MORE, EOS]], max_new_tokens=8, first_line=at_most(20))
    assert (row.tokens, row.end) == ([HELLO, MORE, MORE, MORE], "eos")


def test_a_rows_text_is_decoded_to_measure_its_line_only_once_it_could_be_too_long() -> None:
    counted = CountedText()
    (row,), _, _ = run([[HELLO] + [MORE] * 30], max_new_tokens=30, first_line=at_most(60, counted))
    assert (len(row.tokens), row.end) == (13, "long")  # "Hello" and 12 " more": 65 characters
    # Each token adds at most 6 (its 5 and one), so the first 10 cannot pass 60: the text is
    # decoded at the 11th (55), the 12th (60) and the 13th, not at each of the 13.
    assert counted.calls == 3


def test_char_count_table_allows_each_token_one_more_character_than_its_own() -> None:
    assert char_count_table(["", "a", "\u2581word"]).tolist() == [1, 2, 6]


def test_line_break_table_marks_every_splitlines_break() -> None:
    table = line_break_table(["a", "\n", "b\rc", "\u2028", "\x0b", " ", "\t"])
    assert table.tolist() == [False, True, True, True, True, False, False]


def test_generate_shares_one_prefill_when_every_row_repeats_one_prompt() -> None:
    decoder = ScriptDecoder([[HELLO, WORLD, EOS]])
    out = generate_like_transformers(
        decoder, torch.tensor([[5, 6, 7]]).repeat(3, 1), do_sample=False, eos_token_id=EOS
    )
    assert decoder.prefills == [1]
    assert out.tolist() == [[5, 6, 7, HELLO, WORLD, EOS]] * 3


def test_generate_returns_prompt_and_continuation_padded_after_eos() -> None:
    decoder = ScriptDecoder([[HELLO, EOS, EOS], [HELLO, WORLD, MORE]])
    out = generate_like_transformers(
        decoder,
        torch.tensor([[5, 6, 7], [5, 6, 8]]),
        attention_mask=torch.ones(2, 3, dtype=torch.long),
        do_sample=False,
        max_new_tokens=3,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    assert decoder.prefills == [2]
    assert out.tolist() == [[5, 6, 7, HELLO, EOS, PAD], [5, 6, 8, HELLO, WORLD, MORE]]


def test_generate_refuses_padded_prompts() -> None:
    with pytest.raises(ValueError, match="padded prompts are not supported"):
        generate_like_transformers(
            ScriptDecoder([[EOS]]),
            torch.tensor([[1, 2]]),
            attention_mask=torch.tensor([[0, 1]]),
        )


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.9, 50, 0.95), (1.3, None, 0.5), (0.7, 5, 1.0)]
)
def test_candidates_match_transformers_warpers(
    temperature: float, top_k: int | None, top_p: float
) -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(7)) * 4
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)

    probs, ids = candidates(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    got = torch.zeros_like(logits).scatter(1, ids, probs)
    torch.testing.assert_close(got, expected.softmax(-1), atol=1e-6, rtol=1e-5)
    if top_p < 1.0:
        assert ((got > 0).sum(-1) < (top_k or logits.shape[-1])).all()
