"""How many tokens a row may sample: room for the lint's longest line in the brief's script.

SmolLM2's vocabulary is byte-level and mostly English, so a character costs very different
numbers of tokens by script: English copy about 0.2, Russian and Greek 0.7-0.8, Hindi and Arabic
1.0-1.1, Japanese, Chinese, Thai and Korean 1.8-2.2, emoji 2.5. A budget sized for English (36
tokens for 140 characters) cut Japanese lines at about 19 characters, and clean dropped them as
fragments. The model answers in the script of the brief it is given, so the brief's own words set
the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# English briefs tokenize at 0.25-0.31 tokens a character, denser than the copy written from them
# (0.20: product names, numbers and hyphenated words), and the English budget fits that copy with
# room to spare; a brief up to this rate keeps it, so English jobs sample exactly as before.
ENGLISH_LIKE_TOKENS_PER_CHAR = 0.33
# Copy in other scripts costs about what its brief does (Japanese 1.83 tokens a character against
# its brief's 1.74, Russian 0.72 against 0.76, Chinese up to 1.3 times its brief's); two fifths
# more covers that, and the label or quotes that clean takes off the line.
HEADROOM = 1.4
# The line length `english_tokens` (SamplingConfig.max_new_tokens) was sized for.
ENGLISH_CHARS = 140


def token_budget(
    brief_words: str,
    count_tokens: Callable[[str], int],
    *,
    product_name: str = "",
    max_chars: int,
    english_tokens: int,
    cap: int,
) -> int:
    """Tokens a row may sample: `english_tokens` (at least) for a brief that tokenizes like English,
    and the product name's own tokens where it does not; else room for `max_chars` characters at
    the brief's own tokens per character; at most `cap`."""
    english = max(english_tokens, -(-english_tokens * max_chars // ENGLISH_CHARS))
    # Every line names the product (the lint's off_product), and an English brief for a product
    # named in Japanese still reads as English: リッジライン alone is 11 tokens of the 36.
    if _rate(product_name, count_tokens) > ENGLISH_LIKE_TOKENS_PER_CHAR:
        english += count_tokens(product_name)
    rate = _rate(brief_words, count_tokens)
    if rate <= ENGLISH_LIKE_TOKENS_PER_CHAR:
        return min(english, cap)
    return min(max(english, math.ceil(max_chars * rate * HEADROOM)), cap)


def _rate(text: str, count_tokens: Callable[[str], int]) -> float:
    return count_tokens(text) / len(text) if text else 0.0
