"""The chat prompt: a short system rule, two worked examples, then the brief.

A 135M-parameter model follows examples far better than instructions, so the examples carry the
format (one sentence, names the product, only given facts) and the instructions stay short.
"""

from __future__ import annotations

from generation.brief import Brief

SYSTEM = (
    "You write one-sentence advertising lines. Each line names the product, speaks to the customer "
    "described, and uses only the facts given."
)

_EXAMPLES = (
    (
        Brief(
            product_name="Aurora kettle",
            product_description="A 1.7 litre glass kettle that boils in three minutes.",
            segment="Busy parents who need hot water fast.",
            price=49.0,
        ),
        "The Aurora kettle boils in three minutes, so breakfast never waits.",
    ),
    (
        Brief(
            product_name="Nimbus rain jacket",
            product_description=(
                "A packable waterproof jacket with taped seams and a stowable hood."
            ),
            segment="City cyclists who commute in all weather.",
        ),
        "Ride dry through any downpour in the packable Nimbus rain jacket.",
    ),
)
# The examples' own brand names: the model carries them into its copy ("Nimbus trail-running
# shoes" for a brief selling Ridgeline shoes), which names the category and so passes off_product.
EXAMPLE_BRANDS = ("Aurora", "Nimbus")
# The labels _ask and Brief.facts() write before the brief's fields, and the names the brief's
# fields go by on the dashboard or in the model's own words for them: it echoes one in its copy
# ("Price: $129.", "Audience: busy parents").
PROMPT_LABELS = (
    "Product",
    "Product name",
    "Product description",
    "Brand voice",
    "Facts",
    "Price",
    "Customer",
    "Voice",
    "Audience",
    "Segment",
    "Description",
)


# What _ask writes around the brief's own words, which brief_words takes away again.
_FIELD_LABELS = ("Product: ", "Facts: ", "Customer: ", "Voice: ", "- ")
_LEADERS_INTRO = "Lines that work now; write a new one that could beat them:"
_WRITE = "Write one advertising line."


def _ask(brief: Brief) -> str:
    product, facts, customer, voice, leader = _FIELD_LABELS
    lines = [
        f"{product}{brief.product_name}",
        f"{facts}{brief.facts()}",
        f"{customer}{brief.segment}",
    ]
    if brief.brand_voice:
        lines.append(f"{voice}{brief.brand_voice}")
    if brief.leaders:
        lines.append(_LEADERS_INTRO)
        lines.extend(f"{leader}{text}" for text in brief.leaders)
    lines.append(_WRITE)
    return "\n".join(lines)


def brief_words(messages: list[dict[str, str]]) -> str:
    """The brief's own words in the last ask of `messages`: its fields without the English labels
    and instructions _ask writes around them. The copy comes back in their script, which in a
    Japanese brief's ask is only about half of the text."""
    words = []
    for line in _last_ask(messages).split("\n"):
        if line in (_LEADERS_INTRO, _WRITE):
            continue
        label = next((label for label in _FIELD_LABELS if line.startswith(label)), "")
        words.append(line[len(label) :])
    return "\n".join(words)


def product_name(messages: list[dict[str, str]]) -> str:
    """The product name in the last ask of `messages`, which every line must mention."""
    first = _last_ask(messages).split("\n", 1)[0]
    return first.removeprefix(_FIELD_LABELS[0]) if first.startswith(_FIELD_LABELS[0]) else ""


def _last_ask(messages: list[dict[str, str]]) -> str:
    """The last user message's text: the ask for this brief, after the examples' asks."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def build_messages(brief: Brief) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    for example, answer in _EXAMPLES:
        messages.append({"role": "user", "content": _ask(example)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": _ask(brief)})
    return messages


def instruction_texts(brief: Brief) -> list[str]:
    """The prompt's own words, which a candidate must not parrot back."""
    return [SYSTEM, brief.product_description, brief.segment, *(brief.brand_voice or "",)]
