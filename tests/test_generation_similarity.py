"""generation.similarity: character 3-gram cosine and the near-duplicate threshold."""

from __future__ import annotations

import pytest

from generation import lint as lint_module
from generation import similarity as similarity_module
from generation.similarity import DEFAULT_THRESHOLD, NgramSimilarity, most_similar

SIMILARITY = NgramSimilarity()
LINE = "Grip every weekend trail in Ridgeline shoes."
ONE_WORD_SWAPPED = "Grip every weekend path in Ridgeline shoes."
UNRELATED = "A glass kettle that boils water in three minutes."
# "I wear Ridgeline shoes and walk in the mountains", with a ZWNJ inside four of its words.
PERSIAN_ZWNJ = "کفش\u200cهای ریج\u200cلاین را می\u200cپوشم و در کوه\u200cها راه می\u200cروم"  # noqa: RUF001
FULL_WIDTH = "".join(chr(ord(letter) + 0xFEE0) for letter in "RIDGELINE")  # U+FF21-U+FF3A

# The same line with a word swapped, added or dropped, re-cased or re-punctuated.
NEAR_DUPLICATES = [
    (LINE, ONE_WORD_SWAPPED),
    (
        "Ridgeline shoes: light on your feet, sure on the rocks.",
        "Ridgeline shoes - light on your feet, sure on the rocks!",
    ),
    (
        "Weekend hikes feel easier in Ridgeline trail shoes.",
        "WEEKEND HIKES FEEL EASIER IN RIDGELINE TRAIL SHOES.",
    ),
    (
        "Ridgeline shoes keep you steady on every weekend trail.",
        "Ridgeline shoes keep you steady on every weekend hike.",
    ),
    (
        "Comfortable, grippy and quick-drying: meet Ridgeline shoes.",
        "Comfortable, grippy and quick drying - meet the Ridgeline shoes.",
    ),
    (
        "Take Ridgeline trail shoes wherever the weekend leads.",
        "Take your Ridgeline trail shoes wherever the weekend leads.",
    ),
    (
        "Ridgeline shoes grip every trail, every weekend.",
        "Ridgeline shoes grip each trail, each weekend.",
    ),
    (
        "Ridgeline shoes dry fast after every muddy crossing.",
        "Ridgeline shoes dry quickly after every muddy crossing.",
    ),
    (
        "A rock plate underfoot makes Ridgeline shoes weekend-ready.",
        "A rock plate underfoot makes the Ridgeline shoe weekend-ready.",
    ),
    (
        "Ridgeline trail shoes: comfort that lasts all weekend.",
        "Ridgeline trail shoes, comfort that lasts all weekend long.",
    ),
]
# Different lines about the same product, some on the same template.
DISTINCT = [
    (LINE, "Ridgeline shoes dry fast after every muddy crossing."),
    (
        "Light on your feet, sure on the rocks: Ridgeline.",
        "Weekend hikes feel easier in Ridgeline trail shoes.",
    ),
    (
        "A rock plate underfoot keeps sharp stones away in Ridgeline shoes.",
        "Breathable Ridgeline shoes keep your feet cool on summer hikes.",
    ),
    (
        "Ridgeline shoes: built for weekend trails.",
        "Ridgeline shoes: built for rocky descents.",
    ),
    (
        "Stay comfortable on weekend trails in Ridgeline shoes.",
        "Stay sure-footed on muddy climbs in Ridgeline shoes.",
    ),
    (
        "Head out on the weekend with Ridgeline underfoot.",
        "Quick-drying Ridgeline shoes shrug off stream crossings.",
    ),
    (
        "Ridgeline trail shoes: reliable grip, all day comfort.",
        "Step over rocks with confidence in lightweight Ridgeline shoes.",
    ),
    (
        "Ridgeline shoes make every weekend trail feel friendly.",
        "Lugged soles and a rock plate: Ridgeline is built for the trail.",
    ),
    (
        "Casual hikers love how light Ridgeline shoes feel.",
        "Rain or shine, Ridgeline shoes hold the trail.",
    ),
    (
        "Ridgeline: the trail shoe for people who stop to look around.",
        "Comfortable miles start with a pair of Ridgeline trail shoes.",
    ),
]


def score(left: str, right: str) -> float:
    return SIMILARITY.matrix([left], [right])[0][0]


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (LINE, LINE),
        (LINE, LINE.upper()),
        ("Grip every trail!", "grip, every   trail"),
        ("Ridgeline: grip - every trail.", "Ridgeline grip every trail"),
        ("Аврора — лучший чайник для всей семьи.", "АВРОРА: лучший чайник для всей семьи!"),  # noqa: RUF001
        ("ऑरोरा केतली: तीन मिनट में उबलता पानी।", "ऑरोरा केतली — तीन मिनट में उबलता पानी!"),
        # Read as the lint reads them, these draw the same words: a soft hyphen had split one in two
        # (0.94), and full-width letters were other letters (0.74).
        ("Grip every weekend trail in Ridge\u00adline shoes.", LINE),
        (f"Grip every weekend trail in {FULL_WIDTH} shoes.", LINE),
        ("Grip every weekend trail in Ridgeline\u2122 shoes.", LINE),
        # Persian writes a word's parts apart with a ZWNJ or a space, which draw alike: with the
        # ZWNJ dropped, as the lint reads it, the line with spaces was new copy (0.74).
        (PERSIAN_ZWNJ, PERSIAN_ZWNJ.replace("\u200c", " ")),
    ],
)
def test_same_words_score_one(left: str, right: str) -> None:
    assert score(left, right) == pytest.approx(1.0)


def test_one_word_swap_is_a_near_duplicate() -> None:
    assert DEFAULT_THRESHOLD < score(LINE, ONE_WORD_SWAPPED) < 1.0


def test_a_soft_hyphen_does_not_hide_a_near_duplicate() -> None:
    # One word swapped and a soft hyphen added scored 0.79: new copy to the check, the same line to
    # a reader.
    hyphenated = "Grip every weekend path in Ridge\u00adline shoes."
    assert score(LINE, hyphenated) == score(LINE, ONE_WORD_SWAPPED) > DEFAULT_THRESHOLD


def test_unrelated_lines_score_low() -> None:
    assert score(LINE, UNRELATED) < 0.5


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Aurora: Чайник, который закипает за три минуты.", "Aurora: Завтрак больше не ждёт вас."),
        (
            "Aurora: Чайник, который закипает за три минуты.",
            "Aurora: 三分で沸くので、朝食は待たせません。",
        ),
    ],
)
def test_lines_in_other_scripts_are_compared_by_their_own_letters(left: str, right: str) -> None:
    assert score(left, right) < 0.5


@pytest.mark.parametrize(
    ("left", "right"),
    [
        # 'Oil makes hair shine' and 'rhythm makes words shine': the words differ only in their
        # vowel signs, which were read as spaces between pieces of a word (1.0, a near-duplicate).
        ("तेल से बाल चमकें", "ताल से बोल चमकें"),
        # 'The kettle boils water' and 'a killer boils it', vowel signs apart (0.84).
        ("केतली तीन मिनट में पानी उबालती है", "कातिल तीन मिनट में पानी उबलता है"),
    ],
)
def test_words_differing_in_their_vowel_signs_differ(left: str, right: str) -> None:
    assert score(left, right) < DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    ("line", "first_words"),
    [
        ("ऑरोरा केतली, जो तीन मिनट में पानी उबालती है: Ridgeline grips 3 trails.", ["ऑरोरा", "केतली"]),
        (f"{FULL_WIDTH[:5]}\u00adline\u2122 \ufb01ts every trail.", ["ridgeline", "fits"]),
    ],
)
def test_words_are_read_as_the_lint_reads_them(line: str, first_words: list[str]) -> None:
    """A word runs on through its combining marks in both, and is read in the same characters:
    full-width letters as letters, invisible characters gone (the lint also joins words at an
    apostrophe or hyphen, which these lines have none of)."""
    assert similarity_module._words(line) == lint_module._words(line)
    assert similarity_module._words(line)[:2] == first_words


@pytest.mark.parametrize(("left", "right"), [("", LINE), (LINE, ""), ("", ""), ("...", LINE)])
def test_empty_text_scores_zero(left: str, right: str) -> None:
    assert score(left, right) == 0.0


def test_matrix_shape_and_symmetry() -> None:
    left = [LINE, UNRELATED]
    right = [ONE_WORD_SWAPPED, LINE, UNRELATED]
    matrix = SIMILARITY.matrix(left, right)
    assert [len(row) for row in matrix] == [3, 3]
    assert all(0.0 <= value <= 1.0 + 1e-9 for row in matrix for value in row)
    assert matrix[0][1] == pytest.approx(1.0)
    assert matrix[1][2] == pytest.approx(1.0)
    transposed = SIMILARITY.matrix(right, left)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            assert transposed[j][i] == pytest.approx(value)
    assert SIMILARITY.matrix([], right) == []
    assert SIMILARITY.matrix(left, []) == [[], []]


def test_most_similar_with_no_others() -> None:
    assert most_similar(LINE, [], SIMILARITY) == (0.0, None)


def test_most_similar_finds_the_twin() -> None:
    others = [UNRELATED, ONE_WORD_SWAPPED, "Rain or shine, Ridgeline shoes hold the trail."]
    best, twin = most_similar(LINE, others, SIMILARITY)
    assert twin == ONE_WORD_SWAPPED
    assert best == pytest.approx(score(LINE, ONE_WORD_SWAPPED))


def test_default_threshold_separates_labelled_pairs() -> None:
    right = [score(a, b) >= DEFAULT_THRESHOLD for a, b in NEAR_DUPLICATES]
    right += [score(a, b) < DEFAULT_THRESHOLD for a, b in DISTINCT]
    assert len(right) == 20
    assert sum(right) / len(right) >= 0.9
