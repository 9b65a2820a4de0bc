"""Language-model copy generation: prompt, sample, clean, lint, de-duplicate, rank.

`generate_variants(brief, n, writer=...)` is the entry point. This package never imports flask,
sqlmodel or `service`; torch and transformers load only when a model does.
"""

from generation.brief import Brief
from generation.lint import LintConfig
from generation.pipeline import Candidate, GenerationResult, Rejection, generate_variants

__all__ = ["Brief", "Candidate", "GenerationResult", "LintConfig", "Rejection", "generate_variants"]
