"""The one entry point: `generate_variants(brief, n, writer=...)` -> accepted and rejected lines.

Each round samples a batch, cleans and lints every line, and drops near-duplicates of what the
experiment already has (live, retired or rejected) and of what this run already accepted. Rounds
repeat, bounded, until `n` lines survive; the survivors are then ranked and the top `n` kept.

Ranking is by the model's own mean token log-likelihood, traded off against similarity to lines
already picked (maximal marginal relevance). Likelihood is the cheapest fluency signal a small model
gives: garbled lines score low. Diversity matters because every line becomes an arm the bandit must
spend traffic on, and two near-twins teach it nothing the first would not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from generation.brief import Brief
from generation.clean import clean
from generation.lint import LintConfig, lint
from generation.prompts import build_messages
from generation.similarity import DEFAULT_THRESHOLD, NgramSimilarity, Similarity, most_similar
from generation.writer import Writer

FRAGMENT = "fragment: cut off mid-sentence at the token limit"
TOO_LONG = "length: cut off once longer than the longest line allowed, no whole sentence within it"
EMPTY = "empty: nothing left after cleaning"
# Log-likelihood (nats per token) a line gives up for each unit of similarity to a line already
# picked: an exact twin must be 0.5 nats/token more fluent to be picked over a distinct line.
DIVERSITY_WEIGHT = 0.5


@dataclass(frozen=True)
class Candidate:
    text: str
    logprob: float
    seed: int
    """The round's seed: with the same model, prompt and batch size it reproduces this line."""
    lint: tuple[str, ...] = ()
    """Lint rules passed (all of them, for accepted lines)."""


@dataclass(frozen=True)
class Rejection:
    text: str
    reasons: tuple[str, ...]


def near_duplicate(score: float, twin: str) -> str:
    """The reason a line too like `twin` (by `score`) is refused."""
    return f"near_duplicate: {score:.2f} similar to {twin!r}"


@dataclass
class GenerationResult:
    accepted: list[Candidate]
    rejected: list[Rejection]
    messages: list[dict[str, str]]
    model_id: str
    rounds: int
    sampled: int = 0


Progress = Callable[[int, int, int], None]
"""(round done, rounds at most, lines accepted so far)"""


def generate_variants(
    brief: Brief,
    n: int,
    *,
    writer: Writer,
    existing: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 16,
    max_rounds: int = 4,
    lint_config: LintConfig | None = None,
    similarity: Similarity | None = None,
    duplicate_threshold: float = DEFAULT_THRESHOLD,
    progress: Progress | None = None,
) -> GenerationResult:
    if n < 1 or batch_size < 1 or max_rounds < 1:
        raise ValueError(
            f"n, batch_size and max_rounds must be >= 1, got {n}, {batch_size}, {max_rounds}"
        )
    lint_config = (lint_config or LintConfig()).validate()
    similarity = similarity or NgramSimilarity()
    messages = build_messages(brief)
    result = GenerationResult(
        accepted=[], rejected=[], messages=messages, model_id=writer.model_id, rounds=0
    )
    survivors: list[Candidate] = []
    passed = tuple(_rule_names())
    for round_index in range(max_rounds):
        round_seed = seed + round_index
        for sample in writer.sample(messages, batch_size, round_seed):
            result.sampled += 1
            text = clean(sample.text, finished=sample.finished)
            if not text:
                reason = EMPTY if sample.finished else TOO_LONG if sample.too_long else FRAGMENT
                result.rejected.append(Rejection(sample.text, (reason,)))
                continue
            report = lint(text, brief, lint_config)
            if not report.passed:
                result.rejected.append(Rejection(text or sample.text, tuple(report.reasons())))
                continue
            score, twin = most_similar(text, [*existing, *(c.text for c in survivors)], similarity)
            if twin is not None and score >= duplicate_threshold:
                result.rejected.append(Rejection(text, (near_duplicate(score, twin),)))
                continue
            survivors.append(Candidate(text, sample.logprob, round_seed, passed))
        result.rounds = round_index + 1
        if progress is not None:
            progress(result.rounds, max_rounds, min(len(survivors), n))
        if len(survivors) >= n:
            break
    result.accepted = rank(survivors, n, similarity)
    return result


def rank(candidates: list[Candidate], n: int, similarity: Similarity) -> list[Candidate]:
    """Greedy maximal marginal relevance: likelihood minus similarity to lines already picked."""
    if not candidates:
        return []
    pairwise = similarity.matrix([c.text for c in candidates], [c.text for c in candidates])
    chosen: list[int] = []
    remaining = list(range(len(candidates)))
    while remaining and len(chosen) < n:

        def value(i: int) -> float:
            redundancy = max((pairwise[i][j] for j in chosen), default=0.0)
            return candidates[i].logprob - DIVERSITY_WEIGHT * redundancy

        best = max(remaining, key=value)
        chosen.append(best)
        remaining.remove(best)
    return [candidates[i] for i in chosen]


def _rule_names() -> list[str]:
    from generation.lint import RULES

    return [*RULES, "near_duplicate"]
