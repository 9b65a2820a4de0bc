"""What copy is checked against: its segment's brief and the lint rules as configured. Generation
jobs lint what the model writes, the review queue checks pending copy again, and an edit records
the lint of the text it stores."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from generation.brief import Brief
from generation.lint import DEFAULT_BANNED_PHRASES, RULES, LintConfig, lint
from service.config import Settings
from service.models import Experiment, Segment, Variant, VariantStatus

# The best-converting live lines a brief names as the ones to beat.
_LEADERS = 2


def brief_for(session: Session, experiment: Experiment, segment: Segment) -> Brief:
    """The segment's brief, with its best-converting live copy as the lines to beat."""
    leaders = session.exec(
        select(Variant)
        .where(
            Variant.segment_id == segment.id,
            Variant.status == VariantStatus.ACTIVE,
            Variant.impressions > 0,
        )
        .order_by(
            sa.desc(
                (col(Variant.prior_alpha) + col(Variant.conversions))
                / (col(Variant.prior_alpha) + col(Variant.prior_beta) + col(Variant.impressions))
            )
        )
        .limit(_LEADERS)
    ).all()
    return Brief(
        product_name=experiment.product_name,
        product_description=experiment.product_description,
        segment=segment.description,
        price=experiment.product_price,
        brand_voice=experiment.brand_voice,
        leaders=tuple(v.text for v in leaders),
    )


def lint_config(settings: Settings) -> LintConfig:
    banned = tuple(p.strip() for p in settings.banned_phrases.split(",") if p.strip())
    # Unset keeps the default list; a value naming no phrase (",") is a choice of none.
    if not settings.banned_phrases:
        banned = DEFAULT_BANNED_PHRASES
    return LintConfig(settings.copy_min_chars, settings.copy_max_chars, banned).validate()


def audit_after_edit(
    session: Session, variant: Variant, text: str, config: LintConfig
) -> dict[str, Any]:
    """The variant's audit with its lint record describing `text`, the edit about to be stored:
    the generated line's results no longer describe what is served. Checked as the review queue
    checks pending copy, against the segment's brief now. A rule it fails is recorded, not
    refused: the person editing decides."""
    experiment = session.get(Experiment, variant.experiment_id)
    segment = session.get(Segment, variant.segment_id)
    assert experiment is not None and segment is not None  # the foreign keys
    report = lint(text, brief_for(session, experiment, segment), config)
    failed = {finding.rule for finding in report.findings}
    return {
        **(variant.audit or {}),
        "lint": {
            "passed": [rule for rule in RULES if rule not in failed],
            "failed": report.reasons(),
            "edited": True,
        },
    }
