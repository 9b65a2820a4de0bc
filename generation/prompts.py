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


def _ask(brief: Brief) -> str:
    lines = [
        f"Product: {brief.product_name}",
        f"Facts: {brief.facts()}",
        f"Customer: {brief.segment}",
    ]
    if brief.brand_voice:
        lines.append(f"Voice: {brief.brand_voice}")
    if brief.leaders:
        lines.append("Lines that work now; write a new one that could beat them:")
        lines.extend(f"- {leader}" for leader in brief.leaders)
    lines.append("Write one advertising line.")
    return "\n".join(lines)


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
