"""What a copywriter is told: the product facts, the segment, the voice, and what already works."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Brief:
    product_name: str
    product_description: str
    segment: str
    """The persona or consumer insight the copy is written for."""
    price: float | None = None
    brand_voice: str | None = None
    leaders: tuple[str, ...] = ()
    """The segment's current best copy, to improve on."""

    def price_text(self) -> str | None:
        if self.price is None:
            return None
        return f"${self.price:,.0f}" if self.price == int(self.price) else f"${self.price:,.2f}"

    def facts(self) -> str:
        """Everything the copy may claim; numbers outside this text are invented."""
        price = self.price_text()
        return f"{self.product_description}" + (f" Price: {price}." if price else "")
