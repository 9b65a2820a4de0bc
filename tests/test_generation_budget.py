"""generation.budget with a fake tokenizer: the token budget follows the brief's script."""

from __future__ import annotations

import pytest

from generation.budget import token_budget

ENGLISH = "Lightweight trail shoes with a grippy sole."
CJK = "軽くて滑りにくいシューズ"


def fake_count(text: str) -> int:
    """Byte-level-like costs: a word of ASCII letters is one token, any other character two."""
    ascii_words = "".join(c if c.isascii() else " " for c in text).split()
    return len(ascii_words) + 2 * sum(not c.isascii() for c in text)


def budget(
    words: str,
    *,
    name: str = "",
    max_chars: int = 140,
    english_tokens: int = 36,
    cap: int = 512,
) -> int:
    return token_budget(
        words,
        fake_count,
        product_name=name,
        max_chars=max_chars,
        english_tokens=english_tokens,
        cap=cap,
    )


def test_a_brief_that_tokenizes_like_english_keeps_the_english_budget() -> None:
    assert fake_count(ENGLISH) / len(ENGLISH) < 0.33
    assert budget(ENGLISH) == 36
    assert budget("") == 36


def test_an_english_brief_for_a_product_named_in_another_script_gets_the_names_tokens_too() -> None:
    # Every line names the product; the English words around it keep the brief English-like.
    name = "リッジ"
    words = f"{name}\n{ENGLISH} {ENGLISH} {ENGLISH}"
    assert fake_count(words) / len(words) < 0.33
    assert budget(words, name=name) == 36 + 6
    assert budget(ENGLISH, name="Ridgeline") == 36


def test_a_brief_in_a_script_of_two_tokens_a_character_gets_room_for_the_whole_line() -> None:
    assert fake_count(CJK) == 2 * len(CJK)
    # 140 characters at two tokens each, and the headroom on top.
    assert budget(CJK) >= 280
    assert budget(CJK) == 392


def test_the_budget_follows_the_lints_longest_line() -> None:
    assert budget(CJK, max_chars=60) == 168
    # An English line twice the length the 36 tokens were sized for needs twice the tokens.
    assert budget(ENGLISH, max_chars=280) == 72
    # A shorter limit never shrinks the English budget: clean trims a long line to a sentence.
    assert budget(ENGLISH, max_chars=50) == 36


@pytest.mark.parametrize("cap", [100, 36])
def test_the_cap_bounds_every_budget(cap: int) -> None:
    assert budget(CJK, cap=cap) == cap
    assert budget(ENGLISH, max_chars=1000, cap=cap) == cap
