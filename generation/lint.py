"""Rules a line of generated copy must pass before anyone sees it. Each failure names its rule.

All rules run, so the audit trail shows every reason a line was refused, not only the first.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from generation.brief import Brief
from generation.prompts import EXAMPLE_BRANDS, PROMPT_LABELS, instruction_texts

# Claims a storefront must not make on a model's word: guarantees, health and money promises.
DEFAULT_BANNED_PHRASES: tuple[str, ...] = (
    "guarantee",
    "guaranteed",
    "risk-free",
    "risk free",
    "no risk",
    "cure",
    "cures",
    "heal",
    "heals",
    "treats",
    "prevents disease",
    "clinically proven",
    "doctor recommended",
    "fda approved",
    "miracle",
    "lose weight",
    "weight loss",
    "get rich",
    "double your money",
    "make money fast",
    "investment",
    "returns",
    "free money",
    "best in the world",
    "#1",
    "100%",
    "lowest price",
    "cheapest",
)


def _character_class(categories: tuple[str, ...], code_points: Iterable[int]) -> str:
    """The characters of these general categories among `code_points`, as a regex class."""
    found = [c for c in code_points if unicodedata.category(chr(c)) in categories]
    ranges = []
    for _, run in itertools.groupby(enumerate(found), lambda pair: pair[1] - pair[0]):
        codes = [chr(code) for _, code in run]
        ranges.append(f"{re.escape(codes[0])}-{re.escape(codes[-1])}")
    return f"[{''.join(ranges)}]"


# Combining marks: the vowel signs of Devanagari and the other Indic scripts (Mc, Mn), accents NFKC
# has no precomposed letter for. Python's \w takes none of them, so 'केतली' was the words 'क' and
# 'तल' to every rule. All lie below U+20000 but the variation selectors (U+E0100-U+E01EF); reading
# those ranges takes ~35 ms at import, the whole of Unicode 0.5 s. In two classes: re looks a
# character up in a class of the BMP at once, but tries a class past it range by range, which
# tripled the cost of finding the words of English copy.
_MARK_CATEGORIES = ("Mn", "Mc", "Me")
_MARK = (
    rf"(?:{_character_class(_MARK_CATEGORIES, range(0x300, 0x10000))}"
    r"|(?=[\U00010000-\U0010ffff])"
    + _character_class(
        _MARK_CATEGORIES, itertools.chain(range(0x10000, 0x20000), range(0xE0100, 0xE01F0))
    )
    + ")"
)
# Arabic writes its thousands and decimal separators U+066C and U+066B, for $1,299 and 1.7.
_NUMBER = re.compile(r"\d+(?:[.,\u066b\u066c]\d+)*")
# Endings of the domains copy would point at; a word after a dot with no space (vs.the rest) is not.
_TLDS = (
    "com|net|org|edu|gov|io|co|uk|de|eu|fr|es|it|nl|ch|se|dk|pl|jp|cn|br|ru|au|ca|us|me|ly|tv|ai"
    "|dev|app|shop|store|info|biz|xyz|online|site"
)
# A bare domain (aurora-kettle.shop, bit.ly/aurora, aurora.co.uk): a name with a letter in it, then
# lower-case labels after dots, the last a known ending or followed by a path. Numbers (1.7, 3.5mm)
# have no letter before the dot, abbreviations (e.g., U.S.) one letter after it, and sentences run
# together (Brew.Sip.Repeat., faster.Try it) a capital.
_DOMAIN = (
    r"\b(?=[\w-]*[a-z])[\w-]+"
    rf"(?-i:(?:\.[a-z]{{2,24}})*\.(?:{_TLDS})(?![a-zA-Z])|(?:\.[a-z]{{2,24}})+(?=/))"
)
# A hashtag or handle whole, marks and all: a reason quoting '#1' of '#16' named a banned phrase.
_TAG = rf"[#@]\w(?:\w|{_MARK})*"
_MARKUP = re.compile(
    rf"https?://|www\.|{_DOMAIN}|<[^>]+>|\[[^\]]*\]\(|\*\*|__|{_TAG}|`",
    re.IGNORECASE,
)
# A verbatim run this long from the prompt is parroting, not writing.
_ECHO_WORDS = 6
# Three words said twice in one line ("grips trails, Ridgeline grips trails") are a stutter.
_REPEATED_WORDS = 3
_STOPWORDS = {"the", "and", "with", "for", "your", "that", "this", "from", "into", "our"}


@dataclass(frozen=True)
class LintConfig:
    min_chars: int = 20
    max_chars: int = 140
    banned_phrases: tuple[str, ...] = DEFAULT_BANNED_PHRASES

    def validate(self) -> LintConfig:
        if not 1 <= self.min_chars < self.max_chars:
            raise ValueError(
                f"copy length bounds must satisfy 1 <= min < max, got {self.min_chars}, "
                f"{self.max_chars}"
            )
        return self


@dataclass(frozen=True)
class Finding:
    rule: str
    reason: str


@dataclass(frozen=True)
class LintReport:
    findings: tuple[Finding, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.findings

    def reasons(self) -> list[str]:
        return [f"{f.rule}: {f.reason}" for f in self.findings]


# Letters and marks, a letter first; written so that a word without marks costs one look for one.
# generation.similarity reads a line's words by it too, so that the two agree where a word ends.
LETTERS = rf"[^\W_]+(?:{_MARK}+[^\W_]*)*"
_WORD = rf"{LETTERS}(?:['\u2019-]{LETTERS})*"


def _words(text: str) -> list[str]:
    return re.findall(_WORD, plain_text(text))


# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, Japanese kana, Chinese
# characters): a word of the name is found inside a longer run of text, not on its own, and a run
# is no one word to the echo and repetition rules, which count its characters instead.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003ffff]"
)
# Each character counts as the share of a word it is on average: half for a Chinese character
# (kanji too), a third for hiragana or a letter of Thai, Lao, Myanmar or Khmer (its vowel and tone
# marks part of the letter before), a quarter for katakana. Katakana writes loanwords, longer than
# hiragana's particles and endings (ケトル 'kettle', シューズ 'shoes', ランニング 'running'): at a
# third, 'Ridgeline shoes' in katakana (10) said twice was three words said twice, where English
# passes the name said twice; nine hiragana said twice are still three words. In twelfths of a word,
# to add exactly.
_WHOLE_WORD = 12
_HAN_CHARACTER = 6
_UNSPACED_LETTER = 4
_KATAKANA_LETTER = 3
_HAN = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]"
_KATAKANA = "[\u30a0-\u30ff]"
_SPACED_LETTER = rf"(?:(?!{_UNSPACED.pattern})[^\W_])"
_SPACED_LETTERS = rf"{_SPACED_LETTER}+(?:{_MARK}+{_SPACED_LETTER}*)*"
_UNIT = re.compile(
    rf"(?P<han>{_HAN})|(?P<katakana>{_KATAKANA}(?:(?=\W){_KATAKANA})*)"
    rf"|(?P<letter>{_UNSPACED.pattern}(?:(?=\W){_UNSPACED.pattern})*)"
    rf"|(?P<word>{_SPACED_LETTERS}(?:['\u2019-]{_SPACED_LETTERS})*)"
)
_SHARES = {
    "han": _HAN_CHARACTER,
    "katakana": _KATAKANA_LETTER,
    "letter": _UNSPACED_LETTER,
    "word": _WHOLE_WORD,
}


def _runs(text: str, words: int) -> list[tuple[str, ...]]:
    """From each word on, the shortest run of words and characters that makes `words` words: in
    a script with spaces, every `words` words in a row."""
    plain = plain_text(text)
    if not _UNSPACED.search(plain):
        found = re.findall(_WORD, plain)
        return [tuple(found[i : i + words]) for i in range(len(found) - words + 1)]
    units = [(unit.group(0), _SHARES[str(unit.lastgroup)]) for unit in _UNIT.finditer(plain)]
    found = [unit for unit, _ in units]
    # totals[i]: the words in found[:i], in twelfths
    totals = [0, *itertools.accumulate(share for _, share in units)]
    runs = []
    for start, before in enumerate(totals[:-1]):
        end = bisect.bisect_left(totals, before + words * _WHOLE_WORD)
        if end == len(totals):
            break
        runs.append(tuple(found[start:end]))
    return runs


def _shown(run: tuple[str, ...]) -> str:
    """A run as it reads: words apart, the characters of a script without spaces together."""
    shown = run[0]
    for before, unit in itertools.pairwise(run):
        together = _UNSPACED.match(before[-1]) and _UNSPACED.match(unit)
        shown += unit if together else f" {unit}"
    return shown


def _length(text: str, brief: Brief, config: LintConfig) -> str | None:
    if not config.min_chars <= len(text) <= config.max_chars:
        return f"{len(text)} characters, outside {config.min_chars}-{config.max_chars}"
    return None


def _markup(text: str, brief: Brief, config: LintConfig) -> str | None:
    match = _MARKUP.search(_folded(text))
    return f"contains {match.group(0)!r}" if match else None


def _lost_character(text: str, brief: Brief, config: LintConfig) -> str | None:
    # U+FFFD stands where a decoder lost a character (the tokenizer's own, or the clean step's for
    # a lone surrogate): shown to a shopper it is a "�" in the middle of a word, and with
    # auto_approve such a line went live unseen.
    if "\ufffd" in text:
        return "contains U+FFFD, a character lost in decoding"
    return None


def _folded(text: str) -> str:
    """Compatibility forms as the characters they stand for, case kept (the domain pattern reads
    it): copy in Chinese or Japanese writes full-width forms (U+FF01-U+FF5E), and a full-width
    'www.aurora.shop', '<b>' or '@aurora' passed as plain text."""
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def _banned(text: str, brief: Brief, config: LintConfig) -> str | None:
    # Digits of any script as ASCII: '100%' in Arabic-Indic digits is the same claim.
    plain = re.sub(r"\d", lambda digit: str(unicodedata.decimal(digit[0])), plain_text(text))
    for phrase in config.banned_phrases:
        match = _phrase_pattern(phrase).search(plain)
        if match:
            return f"uses {match.group(0)!r}"  # as written: 'guaranteed', a form of 'guarantee'
    return None


# Characters that hide a word from a plain match without changing how it reads.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))
# Percent signs other than the ASCII one make its claim ('20٪ off', 'Big ﹪ savings'). NFKC folds
# the full-width and small forms (U+FF05, U+FE6A), not the Arabic (U+066A); the number rule reads
# the text unfolded.
_PERCENT_SIGNS = dict.fromkeys(map(ord, "\u066a\ufe6a\uff05"), "%")
# Per mille and per ten thousand claim a proportion as the percent sign does; Arabic has its own.
_PER_MILLE_SIGNS = {ord("\u0609"): "\u2030", ord("\u060a"): "\u2031"}
_AS_READ = _INVISIBLE | _PERCENT_SIGNS | _PER_MILLE_SIGNS
_DASHES = re.compile("[\u2010-\u2015\u2212\ufe58\ufe63\uff0d]")


# NFKC writes the trade and service mark signs as letters joined to the name they follow:
# 'Ridgeline™' was the word 'ridgelinetm', no word of the product's, and the line off_product.
# Dropped, they are no part of a word, as '®' (a sign to NFKC) is not.
_TRADEMARK_SIGNS = dict.fromkeys(map(ord, "\u2120\u2122"))
# All read before NFKC, which would make the mark signs letters; NFKC writes none of the others,
# so they read as they did after it.
_BEFORE_NFKC = _TRADEMARK_SIGNS | _AS_READ
# str.translate looks every character up in the table: 3 us for a line of English, 10 for one
# with a dash or a curly quote in it, several times a line linted. Most copy has none of them.
_TRANSLATED = re.compile(f"[{''.join(re.escape(chr(code)) for code in _BEFORE_NFKC)}]")


# NFKC writes Thai and Lao SARA AM as NIKHAHIT and SARA AA, which draw the same: put back, a
# reason quotes the vowel as copy and prompt write it, not two characters no one typed.
_SARA_AM = {"\u0e4d\u0e32": "\u0e33", "\u0ecd\u0eb2": "\u0eb3"}


def plain_text(text: str) -> str:
    """As a reader sees it: compatibility forms folded (full-width letters), invisible characters
    gone, every dash a hyphen and every percent sign '%', lower case. generation.similarity reads
    copy by it too, so a line the lint reads as another is no new line to the duplicate check
    (but for a ZWNJ in Arabic script, which it reads as a space)."""
    if _TRANSLATED.search(text):
        text = text.translate(_BEFORE_NFKC)
    folded = unicodedata.normalize("NFKC", text)
    for decomposed, vowel in _SARA_AM.items():
        folded = folded.replace(decomposed, vowel)
    return _DASHES.sub("-", folded).casefold()


# "FDA-approved" makes the claim "FDA approved" does; plain_text has made every dash a hyphen.
_BETWEEN_WORDS = r"[\s-]+"


@functools.cache
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """The phrase with its last word in any of its usual forms: 'guarantee' also finds
    'guarantees', 'guaranteed' and 'guaranteeing'; 'cure' finds 'cured' and 'curing'."""
    *head, last = re.split(_BETWEEN_WORDS, plain_text(phrase))
    if re.fullmatch(r"[a-z]+", last):
        stem = last[:-1] if last.endswith("e") else last
        forms = r"(?:e|es|ed|eing|ing)" if last.endswith("e") else r"(?:s|es|ed|ing)?"
        last_pattern = re.escape(stem) + forms
    else:
        last_pattern = re.escape(last)
    words = [re.escape(word) for word in head] + [last_pattern]
    return re.compile(rf"(?<![\w#]){_BETWEEN_WORDS.join(words)}(?!\w)")


def _as_numbers(text: str) -> str:
    """`text` as the number rule reads it: full-width forms as ASCII (a full-width comma is the
    facts' own), every percent sign as '%', and any other form with a digit in it as that digit."""
    return "".join(_as_number(char) for char in text.translate(_AS_READ))


# A character is ~120 bytes here, kept for the worker's life: unbounded, this grew with every
# distinct character ever linted, up to Unicode's 1.1 million (130 MB a worker). 4,096 (0.5 MB)
# hold Latin, Greek and Cyrillic with their punctuation several times over; a miss, as copy in
# Chinese may meet, costs a few microseconds.
AS_NUMBER_CACHE = 4096


@functools.lru_cache(maxsize=AS_NUMBER_CACHE)
def _as_number(char: str) -> str:
    if 0xFF01 <= ord(char) <= 0xFF5E:
        return chr(ord(char) - 0xFEE0)
    # Not all of NFKC, which also reads a superscript or subscript as a digit: 'CO₂', 'm²' and '㎡'
    # had each become an invented number 2. But '½ price' and '⑳ off' are claims the facts must
    # make, as NFKC read them. (Digits of any script are read by _plain.)
    folded = _without_super_or_subscripts(char)
    return folded if any(c.isdecimal() for c in folded) else char


def _without_super_or_subscripts(char: str) -> str:
    """`char` decomposed in full, as NFKC does, but for its superscripts and subscripts."""
    parts = unicodedata.decomposition(char).split()
    if not parts or parts[0] in ("<super>", "<sub>"):
        return char
    if parts[0].startswith("<"):
        parts = parts[1:]
    return "".join(_without_super_or_subscripts(chr(int(code, 16))) for code in parts)


def _numbers(text: str, brief: Brief, config: LintConfig) -> str | None:
    facts = _facts(f"{brief.product_name} {brief.facts()}")
    text = _as_numbers(text)
    invented = [n for n in _NUMBER.findall(text) if _plain(n) not in facts.numbers]
    if invented:
        return f"numbers not in the product facts: {', '.join(invented)}"
    for sign, proportion in _PROPORTIONS.items():
        if sign in text and sign not in facts.proportions:
            return f"{proportion} not in the product facts"
    return None


@dataclass(frozen=True)
class _Facts:
    """What the number rule reads in the facts, which are the same for every line of a batch."""

    numbers: frozenset[str]
    """Each number the facts give, as _plain writes it."""
    proportions: frozenset[str]
    """The proportion signs (_PROPORTIONS) the facts write."""


# Reading the facts again cost each line ~50-110 us, a quarter of the lint, though a batch lints
# many lines against one brief; as with _prompt, the briefs in use at a time are few. An entry holds
# the facts text and its numbers: ~4 KiB for a description of a few sentences, ~100 KiB at the most
# the API takes (a 5,000-character description of a thousand numbers); 64 of those are ~6 MB.
FACTS_CACHE = 64


@functools.lru_cache(maxsize=FACTS_CACHE)
def _facts(text: str) -> _Facts:
    """`text`: the product's name, then what Brief.facts() writes."""
    read = _as_numbers(text)
    numbers = frozenset(_plain(n) for n in _NUMBER.findall(read))
    return _Facts(numbers, frozenset(sign for sign in _PROPORTIONS if sign in read))


# Five per mille is not five per cent: each sign must be the facts' own.
_PROPORTIONS = {
    "%": "a percentage",
    "\u2030": "a per-mille figure",
    "\u2031": "a per-ten-thousand figure",
}


def _plain(number: str) -> str:
    """'1,299.00' and '1299' are the same claim, and so are '129' and Arabic-Indic '١٢٩', and
    '1.7' and the same in Arabic-Indic digits with the Arabic decimal separator."""
    value = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in number)
    value = value.replace(",", "").replace("\u066c", "").replace("\u066b", ".")
    return value[:-3] if value.endswith(".00") else value


def _echo(text: str, brief: Brief, config: LintConfig) -> str | None:
    prompt = _prompt(tuple(_own_texts(brief)))
    copied = [run for run in _runs(text, _ECHO_WORDS) if run in prompt.runs]
    if copied:  # the one the prompt writes first, as reading it run by run found
        return f"copies the prompt: {_shown(min(copied, key=prompt.runs.__getitem__))!r}"
    return _prompt_label(text, prompt) or _example_brand(text, prompt)


@dataclass(frozen=True)
class _Prompt:
    """What the echo rule reads in the prompt, which is the same for every line of a batch."""

    runs: dict[tuple[str, ...], int]
    """Each run of _ECHO_WORDS words of the instructions, to its place among them."""
    labels: frozenset[str]
    """The labels the brief writes itself ("Price: on request"), which its copy may write too."""
    names: frozenset[str]
    """Its words as names: a worked example's product it names itself is its own."""


# Reading a brief cost each line ~0.15 ms, more than the rest of the rule. The briefs a worker lints
# in its life are many (one per segment, edited in between), those in use at a time few: a job
# lints one segment's batch, a review page at most an experiment's 50 segments. An entry holds
# ~12 KiB for a brief of a few sentences, ~300 KiB at the longest the API takes (a 5,000-character
# description, 2,000-character persona): 64 of those are ~19 MB.
PROMPT_CACHE = 64


@functools.lru_cache(maxsize=PROMPT_CACHE)
def _prompt(own_texts: tuple[str, ...]) -> _Prompt:
    """`own_texts`: the product's name, then the prompt's instructions (_own_texts)."""
    runs: dict[tuple[str, ...], int] = {}
    for source in own_texts[1:]:
        for run in _runs(source, _ECHO_WORDS):
            runs.setdefault(run, len(runs))
    # Each field on its own: joined, a label first in one field came after the last word of the
    # one before, and was no label there.
    labels = {_label_key(match.group(1)) for text in own_texts for match in _labels(_folded(text))}
    return _Prompt(runs, frozenset(labels), frozenset(_names(" ".join(own_texts))))


# A label is the word and its colon ("Price:", "brand voice :", the full-width colon of Chinese
# copy folded) where a field's label stands: first in the line, or after punctuation ("Ridgeline
# shoes. Price: $129.", "Ridgeline shoes, price : $129"). The word alone ("the right price") is
# copy, and so is a phrase it ends ("at a fair price: $129", "your inner voice: ..."): read
# anywhere, such lines were refused. An apostrophe or hyphen after a letter ends or joins a word
# ("hikers' price: $129", "low-price: $129"): a label after one follows another word too.
# A dash is a label's colon only before a number or a price ("Price - $129"): before words it sets
# off an aside or a list ("Facts - not hype - sell", "grip - price - Ridgeline"). A hyphen or minus
# sign against the word joins it to the number ("customer-8812", "Product-5"): spaced, it is a dash.
_LABEL_WORDS = "|".join(label.replace(" ", r"\s+") for label in PROMPT_LABELS)
_LABEL = re.compile(
    rf"(?:^|(?<=[^\w\s])(?<!\w['\u2019\u2010-]))\s*({_LABEL_WORDS})"
    r"(?:\s*:|(?:\s+[-\u2010-\u2015\u2212]|[\u2012-\u2015])\s*(?=(\S)))",
    re.IGNORECASE | re.MULTILINE,
)
# Drawn as a colon, and left as they are by NFKC (which folds the full-width and small colons):
# RATIO, the modifier letters' colons, and the colons and full stops of other scripts.
_COLONS = dict.fromkeys(map(ord, "\u2236\ua789\u02f8\u0589\u05c3\u0703\u0704\u16ec\u205a"), ":")
# What _LABEL needs after a label's word: a colon, or a dash before a digit or a sign ('$').
_SEPARATOR = re.compile(r":|[-\u2010-\u2015\u2212]\s*(?:\d|[^\w\s])")


def _labels(folded: str) -> Iterator[re.Match[str]]:
    """The prompt labels `folded` writes: each word with its colon, or its dash before a value."""
    folded = folded.translate(_COLONS)
    if not _SEPARATOR.search(folded):  # most copy: the search costs more than the rest of the rule
        return
    for match in _LABEL.finditer(folded):
        value = match.group(2)
        if value is None or value.isdecimal() or unicodedata.category(value) == "Sc":
            yield match


def _prompt_label(text: str, prompt: _Prompt) -> str | None:
    folded = _folded(text)
    for match in _labels(folded):
        if _label_key(match.group(1)) not in prompt.labels:
            label = folded[match.start(1) : match.end()].rstrip()  # as written, its colon RATIO too
            return f"writes the prompt's label {label!r}"
    return None


def _label_key(label: str) -> str:
    return " ".join(label.casefold().split())


def _own_texts(brief: Brief) -> list[str]:
    """The brief's words, with the prompt's system rule (which has no label or example brand)."""
    return [brief.product_name, *instruction_texts(brief)]


def _names(source: str) -> set[str]:
    return {_possessor(word) for word in _words(source.replace("-", " "))}


def _example_brand(text: str, prompt: _Prompt) -> str | None:
    # A brief may sell an Aurora kettle itself (README's example does); then the name is its own.
    used = _names(text)
    for brand in EXAMPLE_BRANDS:
        if brand.casefold() in used and brand.casefold() not in prompt.names:
            return f"names {brand!r}, the product of one of the prompt's worked examples"
    return None


def _repetitive(text: str, brief: Brief, config: LintConfig) -> str | None:
    runs = _runs(text, _REPEATED_WORDS)
    repeated = next((run for run in runs if runs.count(run) > 1), None)
    return f"repeats {_shown(repeated)!r}" if repeated else None


def _possessor(word: str) -> str:
    return word.removesuffix("'s").removesuffix("\u2019s")


def _stem(word: str) -> str:
    """'Ridgeline's' and 'shoes' name what 'ridgeline' and 'shoe' do."""
    return _possessor(word).removesuffix("s")


def product_terms(brief: Brief) -> set[str]:
    """Words that name the product or its category: 'Ridgeline trail-running shoes' gives
    ridgeline, trail, running, shoe. A short word counts when it mixes letters and digits, as
    model names do ('X5'); other short words are mostly 'a', 'of' and 'to'."""
    return {
        _stem(word)
        for word in _words(brief.product_name.replace("-", " "))
        if (len(word) >= 3 or _MODEL_NAME.fullmatch(word)) and word not in _STOPWORDS
    }


_MODEL_NAME = re.compile(r"(?=.*\d)(?=.*[^\W\d_])\w+")


def _mentions_product(text: str, brief: Brief, config: LintConfig) -> str | None:
    terms = product_terms(brief)
    if any(_stem(word) in terms for word in _words(text.replace("-", " "))):
        return None
    plain, name = plain_text(text), plain_text(brief.product_name)
    if any(term in plain for term in terms if _UNSPACED.search(term)):
        return None
    if not terms and _name_pattern(name).search(plain):  # short words only, or split by signs
        return None
    return f"does not mention {brief.product_name!r} or its category"


# One compiled pattern per product name ever linted (experiments are never deleted), kept for the
# worker's life unbounded; the names in use at a time are few.
NAME_PATTERN_CACHE = 256


@functools.lru_cache(maxsize=NAME_PATTERN_CACHE)
def _name_pattern(name: str) -> re.Pattern[str]:
    """The name as a word of its own ('Go' is not in 'Good', 'Oz' not in 'cozy'), except in a
    script written without spaces, where it sits inside a longer run."""
    if _UNSPACED.search(name):
        return re.compile(re.escape(name))
    return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")


RULES = {
    "length": _length,
    "markup": _markup,
    "banned_phrase": _banned,
    "invented_number": _numbers,
    "prompt_echo": _echo,
    "repetitive": _repetitive,
    "off_product": _mentions_product,
    "lost_character": _lost_character,
}


def lint(text: str, brief: Brief, config: LintConfig | None = None) -> LintReport:
    config = config or LintConfig()
    findings = []
    for rule, check in RULES.items():
        reason = check(text, brief, config)
        if reason is not None:
            findings.append(Finding(rule, reason))
    return LintReport(tuple(findings))
