"""generation.clean: one raw completion in, one clean line of copy (or "") out."""

from __future__ import annotations

import pytest

from generation.clean import clean

PERSIAN = "کتری\u200cهای Ridgeline"  # noqa: RUF001 (ZWNJ keeps its letters from joining)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # labels a small model puts in front of its answer
        ("Assistant: Grip every weekend trail.", "Grip every weekend trail."),
        ("Ad: Grip every weekend trail.", "Grip every weekend trail."),
        ("Headline - Grip every weekend trail.", "Grip every weekend trail."),
        ("Here's a new ad: Grip every weekend trail.", "Grip every weekend trail."),
        ("TAGLINE: Grip every weekend trail.", "Grip every weekend trail."),
        # bullets
        ("- Grip every weekend trail.", "Grip every weekend trail."),
        ("* Grip every weekend trail.", "Grip every weekend trail."),
        ("1. Grip every weekend trail.", "Grip every weekend trail."),
        ("2) Grip every weekend trail.", "Grip every weekend trail."),
        # quotes, straight and curly, and markdown emphasis
        ('"Grip every weekend trail."', "Grip every weekend trail."),
        ("'Grip every weekend trail.'", "Grip every weekend trail."),
        ("\u201cGrip every weekend trail.\u201d", "Grip every weekend trail."),
        ("\u2018Grip every weekend trail.\u2019", "Grip every weekend trail."),
        ("**Grip every weekend trail.**", "Grip every weekend trail."),
        # nested combinations
        ('- Ad: "Grip every weekend trail."', "Grip every weekend trail."),
        ('  "  - Ad: **Grip every weekend trail.**  "  ', "Grip every weekend trail."),
        ("Headline: Ad: Grip every weekend trail.", "Grip every weekend trail."),
        # whitespace and lines
        ("Grip   every\tweekend    trail.", "Grip every weekend trail."),
        ("\n\n   Grip every weekend trail.\nSecond line.", "Grip every weekend trail."),
        ("", ""),
        ("   \n\t\n", ""),
        # a label on a line of its own: the copy is the line below it
        ("Headline:\nGrip every weekend trail.", "Grip every weekend trail."),
        ('Here\'s a line for hikers:\n\n"Grip every weekend trail."', "Grip every weekend trail."),
        ('Tagline -\n**"Grip every weekend trail."**', "Grip every weekend trail."),
        # a finished line ends where the model meant it to: kept whole, abbreviations too
        ("Great shoes. Buy now", "Great shoes. Buy now"),
        (
            "Meet Dr. Lee, who hikes in Ridgeline shoes",
            "Meet Dr. Lee, who hikes in Ridgeline shoes",
        ),
        # an unterminated slogan is kept when the model stopped on its own
        ("Run wild, run Ridgeline", "Run wild, run Ridgeline"),
        # a decimal point is not a sentence end
        ("Only $129.50 today", "Only $129.50 today"),
        ("Only $129.50 today.", "Only $129.50 today."),
        # control characters some tokens decode to: dropped (NUL could not even be stored)
        ("Tea lovers, the Aurora kettle\x00 is here.", "Tea lovers, the Aurora kettle is here."),
        ("\x07Grip every\x7f weekend\x08 trail.\x1b", "Grip every weekend trail."),
        # lone surrogates, a writer's surrogateescape of bytes not UTF-8 (no database takes
        # them): each a character lost, shown as one
        ("Caf\udce9-ready Ridgeline shoes.", "Caf\ufffd-ready Ridgeline shoes."),
        # invisible formatting, which the API refuses in copy: dropped (after a U+202E a storefront
        # drew the rest of the line backwards, not as its reviewer read it)
        ("Grip every \u202eweekend trail.\u202c", "Grip every weekend trail."),
        ("\ufeffGrip \u2067every\u2069 weekend\u200b trail.", "Grip every weekend trail."),
        ("\u202b\u200b\n Grip every weekend trail.", "Grip every weekend trail."),
        # but not what words and emoji are made of: ZWNJ (Persian), ZWJ (emoji), RLM, and
        # right-to-left letters themselves
        (PERSIAN, PERSIAN),
        ("Hike together \U0001f469\u200d\U0001f467", "Hike together \U0001f469\u200d\U0001f467"),
        (
            "Ridgeline \u05e0\u05e2\u05dc\u05d9\u05d9\u05dd\u200f!",
            "Ridgeline \u05e0\u05e2\u05dc\u05d9\u05d9\u05dd\u200f!",
        ),
        # and in NFC, as copy written by hand is stored
        ("Cafe\u0301-ready Ridgeline shoes.", "Caf\u00e9-ready Ridgeline shoes."),
    ],
)
def test_clean_finished(raw: str, expected: str) -> None:
    assert clean(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Great shoes. Buy no", "Great shoes."),
        ("Great shoes! Buy no", "Great shoes!"),
        ("Is it the trail? It is the", "Is it the trail?"),
        ("Price is $129.50. Buy no", "Price is $129.50."),
        ('"Grip that lasts." Buy no', "Grip that lasts."),
        # a closing quote after the sentence end belongs to the sentence
        ('Hikers call it "the grippy one." Buy no', 'Hikers call it "the grippy one."'),
        ("Great shoes.", "Great shoes."),
        # no sentence end at all: the whole line is a fragment
        ("Ridgeline shoes grip every", ""),
        ("Only $129.50 today", ""),
        ("- Ad: Ridgeline shoes grip every", ""),
        # Chinese and Japanese sentences end with a full-width mark, the next with no space
        ("雨の山道でもドライ。軽くて滑りにく", "雨の山道でもドライ。"),
        ("「足元はいつもドライ\uff01」軽くて", "「足元はいつもドライ\uff01」"),
        ("防水吗\uff1f轻便防滑的", "防水吗\uff1f"),
        ("雨の山道でも足元は", ""),
        # trimmed inside a 「」 quote: the bracket left open is what is left of a wrapper, as a
        # lone quote is, not part of the copy
        ("「足元はいつもドライ\uff01軽くて", "足元はいつもドライ\uff01"),
        ("『雨の山道でもドライ。軽くて", "雨の山道でもドライ。"),
        # ASCII "!" and "?" end a sentence at the end of the line, before a closing quote or
        # bracket, and straight before Chinese or Japanese, which often takes them with no space
        ("Grip every trail!", "Grip every trail!"),
        ('Hikers shout "Grip!" Buy no', 'Hikers shout "Grip!"'),
        ("Hikers shout \u00abGrip!\u00bb Buy no", "Hikers shout \u00abGrip!\u00bb"),
        ("Grip every trail! [Really?] Buy no", "Grip every trail! [Really?]"),
        ("足元はいつもドライ!軽くて滑りにく", "足元はいつもドライ!"),
        ("「足元はいつもドライ!」軽くて", "「足元はいつもドライ!」"),
        ("防水吗?轻便防滑的", "防水吗?"),
        ("「Always dry.」軽くて", "「Always dry.」"),
        # the half-width stop and the full-width full stop end one too, as 。 does
        ("雨の山道でもドライ\uff61軽くて", "雨の山道でもドライ\uff61"),
        ("雨の山道でもドライ\uff0e軽くて", "雨の山道でもドライ\uff0e"),
        # but not inside a number, a version or a run of marks
        ("Ridgeline v2.0 grips every", ""),
        ("Grip every trail. Wow!! Buy no", "Grip every trail. Wow!!"),
        ("Grip? Really?!Buy no", "Grip?"),
        ("Sizes at ridgeline.example/?size=9 and", ""),
        ("Meet Mr.田中 who hikes", ""),
        ("重さ\uff12\uff0e\uff15キロで軽", ""),
        ("\uff56\uff12\uff0e\uff10の靴。軽くて", "\uff56\uff12\uff0e\uff10の靴。"),
    ],
)
def test_clean_cut_off_at_token_limit(raw: str, expected: str) -> None:
    assert clean(raw, finished=False) == expected


@pytest.mark.parametrize(
    "line",
    [
        "Ridgeline shoes: built for trail-running.",
        "Copy that: Ridgeline shoes grip.",
        # A hyphenated first word is not a "Label -" prefix.
        "User-friendly lacing on every Ridgeline shoe.",
        "Ad-free weekends start in Ridgeline shoes.",
        "Here's a trail-ready shoe for your weekends.",
        # Quotes are stripped only when they wrap the whole line.
        '"Grip that lasts," say weekend hikers.',
        # An apostrophe that stands for letters left out is part of the first word.
        "'Tis the season for Ridgeline shoes.",
        "\u2019Til the last weekend trail, Ridgeline grips.",
    ],
)
def test_clean_keeps_copy_that_only_looks_like_a_label_or_quote(line: str) -> None:
    assert clean(line) == line
