"""Turn a raw completion into one clean line of copy, or "" when nothing usable is left."""

from __future__ import annotations

import re
import unicodedata

# Labels a small model puts in front of the line it was asked for ("Ad:", "Headline - "), on the
# line itself or on one of their own ("Here's a line for busy parents:" and the line below it).
# A dash counts as a separator only with a space before it, so "Ad-free" and "User-friendly" stay.
_LABEL = re.compile(
    r"^\s*(?:assistant|user|system|copy|ad|advert(?:isement)?|line|headline|tagline|slogan|"
    r"answer|here(?:['\u2019]s| is) (?:a|an|the|your|my) [\w -]{0,30}?)"
    r"(?:\s*:|\s+[-\u2013\u2014])\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022>]+|\d+[.)])\s+")
_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`", "*": "*", "_": "_"}
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
# Japanese quotes, 「」 and 『』: a line trimmed to its last sentence inside one kept it open.
_BRACKETS = (("\u300c", "\u300d"), ("\u300e", "\u300f"))
# Words that begin with an apostrophe standing for the letters left out ('Tis the season).
_ELISION = re.compile(r"['\u2019](?:tis|twas|til|cause|em|round)\b", re.IGNORECASE)
# What may close a sentence after its stop: quotes, brackets and guillemets, Latin and CJK.
_CLOSERS = "\"'\u201d\u2019)\\]\u00bb\u203a\u300d\u300f\uff09\uff63"
# Where a Chinese or Japanese sentence starts: kana, ideographs, half-width katakana, Hangul, and
# the brackets that open a quote. Those scripts start it straight after the last one's stop.
_CJK_START = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\uac00-\ud7af"
    "\u300c\u300e\uff08"
)
# A cut line is trimmed to its last sentence end; with none it is dropped whole, so a stop missed
# here lost every cut line that ended with it (ASCII "!" before a 」, and the stops U+FF61 and
# U+FF0E). ASCII "." ends a sentence before a space or the end, never before a letter or digit
# ("v2.0", "$129.50", "Mr.田中"), and before CJK only after a closing quote. A run of "!" and "?"
# ("Wow!!", "?!") ends one there or straight before CJK, which often takes ASCII "!" and "?" with
# no space. The CJK stops end one wherever they are: U+3002 and its half-width U+FF61, U+FF01,
# U+FF1F, and U+FF0E but not before a digit or letter, where it is a point (full-width "2.5").
_SENTENCE_END = re.compile(
    rf"\.(?:[{_CLOSERS}]*(?=\s|$)|[{_CLOSERS}]+(?=[{_CJK_START}]))"
    rf"|[!?]+[{_CLOSERS}]*(?=\s|$|[{_CJK_START}])"
    r"|(?:[\u3002\uff61\uff01\uff1f]|\uff0e(?![0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]))"
    rf"[{_CLOSERS}]*"
)
# Control characters, C0 and C1 (whitespace aside, which becomes a space): some of the model's
# tokens decode to them, no storefront can show them (\x9b starts a terminal escape), the API
# refuses them in text written by hand, and PostgreSQL cannot store NUL.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Format characters that change how the text around them is drawn, or hide in it: bidi embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069; after U+202E a storefront draws the line
# backwards, not as a reviewer reads it), the deprecated shaping controls (U+206A-U+206F), the
# zero-width space and the byte-order mark (U+200B, U+FEFF). Not ZWJ and ZWNJ (U+200D, U+200C):
# emoji sequences and Persian and Indic words need them; nor the marks LRM, RLM and ALM, which
# only say which way a neutral character such as "!" faces. The API refuses the overrides and the
# rest in copy written by hand, and takes embeddings and isolates there only when each is closed.
INVISIBLE_FORMATTING = re.compile("[\u200b\u202a-\u202e\u2066-\u206f\ufeff]")
# Removed from the model's output, as control characters are, rather than the line refused: a small
# model emits them as stray tokens, not to mean anything (balanced ones too: it does not set an
# English name apart in Arabic copy on purpose), and once they are gone the line reviewers read,
# lint checks and de-duplication compares is the line a storefront draws.
_UNWANTED = re.compile(f"{CONTROL_CHARACTERS.pattern}|{INVISIBLE_FORMATTING.pattern}")
# What a writer that decodes with surrogateescape keeps of bytes that are not UTF-8. No driver
# encodes them, so one in a line failed the job as it stored the segment's copy. Each is a
# character lost, not a stray token: it becomes U+FFFD, as a decoder that replaces writes it (the
# model's tokenizer does), so a reviewer sees that the line is missing a letter.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unwrap(line: str) -> str:
    """Remove quotes or emphasis wrapping the whole line; keep those inside it."""
    while len(line) >= 2 and _PAIRS.get(line[0]) == line[-1]:
        line = line[1:-1].strip()
    # A lone opening or closing quote is what is left of a wrapper the model broke off.
    for quote in _QUOTES:
        if line.count(quote) == 1 and (line.startswith(quote) or line.endswith(quote)):
            if _ELISION.match(line):
                continue
            line = line.strip(quote).strip()
    for opening, closing in _BRACKETS:
        if line.startswith(opening) and closing not in line:
            line = line[1:].strip()
        elif line.endswith(closing) and opening not in line:
            line = line[:-1].strip()
    return line


def _copy_in(line: str) -> str:
    """The line without labels, bullets or wrapping quotes; "" when that was all it held."""
    previous = None
    while previous != line:  # labels, bullets and quotes nest: '- Ad: "..."'
        previous = line
        line = _unwrap(_BULLET.sub("", _LABEL.sub("", line)).strip())
    return line


def holds_copy(line: str) -> bool:
    """Whether `clean` would keep anything of this line, so it is the one `clean` picks."""
    return bool(_copy_in(_UNWANTED.sub("", line)))


def clean(raw: str, *, finished: bool = True) -> str:
    """First line with copy in it, without labels, bullets or wrapping quotes.

    `finished` is False when generation stopped at the token limit: then the unterminated tail is a
    fragment and is cut back to the last whole sentence (or the line is dropped). A finished line
    ends where the model meant it to, so it is kept whole.
    """
    # NFC, as the API stores copy written by hand: a line the model spelled with combining accents
    # looks the same as one typed precomposed, and must compare (de-duplication, exports) the same.
    text = unicodedata.normalize("NFC", _LONE_SURROGATE.sub("\ufffd", _UNWANTED.sub("", raw)))
    line = next(filter(None, map(_copy_in, text.splitlines())), "")
    line = re.sub(r"\s+", " ", line)
    if not finished:
        ends = [match.end() for match in _SENTENCE_END.finditer(line)]
        line = line[: ends[-1]] if ends else ""
    return _unwrap(line.strip())
