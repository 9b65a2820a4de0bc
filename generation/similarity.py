"""Near-duplicate detection between lines of copy.

The default measure is the cosine similarity of character 3-gram counts: it needs no model, takes
microseconds, and catches what de-duplication is for (the same line with a word swapped, re-cased
or re-punctuated). `make bench` measures it against all-MiniLM-L6-v2 embeddings on labelled pairs;
see README "Generation" for the figures and why the n-gram measure is the default.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from generation.lint import LETTERS, plain_text

# Measured on the labelled pairs in tests/data/near_duplicates.json (see `make bench`).
DEFAULT_THRESHOLD = 0.8


class Similarity(Protocol):
    def matrix(self, left: Sequence[str], right: Sequence[str]) -> list[list[float]]:
        """Pairwise similarity in [0, 1], shape (len(left), len(right))."""
        ...


# A word runs on through its combining marks, as the lint reads it: split at every mark, as \W
# does, 'केतली' was 'क' and 'तल', its vowel signs gone, and 'तेल से बाल चमकें' (oil makes hair
# shine) the same line as 'ताल से बोल चमकें' (rhythm makes words shine).
_WORD = re.compile(LETTERS)


# Persian writes a word's parts apart with a ZWNJ, or, as often, a space: the two draw alike. The
# lint drops a ZWNJ (a word split by one reads as the word), which read 'می‌روم' as one word and
# 'می روم' as two, and a line written with spaces where the other had ZWNJs scored 0.74 against it.
_ARABIC_SCRIPT_ZWNJ = re.compile(
    "(?<=[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufefc])\u200c"
)


def _words(text: str) -> list[str]:
    if "\u200c" in text:
        text = _ARABIC_SCRIPT_ZWNJ.sub(" ", text)
    # As the lint reads text: composed, as in NFC (an accent typed as a combining mark and the
    # same letter precomposed: the same Vietnamese line in NFD and NFC shared few 3-grams, 0.56),
    # and also with compatibility forms folded and invisible characters gone. In NFC alone a line
    # with its product name in full-width letters scored 0.74 against the line, and a soft hyphen
    # split a word in two: a word swapped and a soft hyphen added, a line scored 0.79, new copy.
    return _WORD.findall(plain_text(text))


def _grams(text: str, n: int) -> Counter[str]:
    normalized = " " + " ".join(_words(text)) + " "
    return Counter(normalized[i : i + n] for i in range(len(normalized) - n + 1))


class _Grams(NamedTuple):
    counts: Counter[str]
    norm: float

    @classmethod
    def of(cls, text: str, n: int) -> _Grams:
        counts = _grams(text, n)
        return cls(counts, math.sqrt(sum(v * v for v in counts.values())))


def _cosine(a: _Grams, b: _Grams) -> float:
    if not a.counts or not b.counts:
        return 0.0
    # Counts are ints, so the dot product is exact whichever grams it visits: visiting only the
    # shared ones scores as visiting all of one line's did, without a lookup for each of the rest.
    dot = sum(a.counts[gram] * b.counts[gram] for gram in a.counts.keys() & b.counts.keys())
    return dot / (a.norm * b.norm)


class NgramSimilarity:
    """Character n-gram cosine. An instance keeps each text's n-grams once read: a generation
    compares every candidate with the segment's copy and the lines accepted so far, and reading
    each of those lines again for each candidate was most of its cost (2.7 ms a candidate against
    80 lines, 0.3 ms with each line read once). Make one for a generation or a check, not one for
    the life of a process."""

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self._read: dict[str, _Grams] = {}

    def _grams_of(self, text: str) -> _Grams:
        grams = self._read.get(text)
        if grams is None:
            grams = self._read[text] = _Grams.of(text, self.n)
        return grams

    def matrix(self, left: Sequence[str], right: Sequence[str]) -> list[list[float]]:
        left_grams = [self._grams_of(text) for text in left]
        right_grams = [self._grams_of(text) for text in right]
        return [[_cosine(a, b) for b in right_grams] for a in left_grams]


def most_similar(
    text: str, others: Sequence[str], similarity: Similarity
) -> tuple[float, str | None]:
    """The closest of `others` to `text`, with its similarity (0.0, None when there are none)."""
    if not others:
        return 0.0, None
    row = similarity.matrix([text], others)[0]
    best = max(range(len(others)), key=row.__getitem__)
    return row[best], others[best]
