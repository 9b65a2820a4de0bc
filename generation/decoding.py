"""Token-by-token sampling for `TransformersWriter`, shaped by how the pipeline uses a batch.

Every row of a batch continues the same prompt, so the prompt runs through the model once and its
cache is copied to each row: `model.generate` would run it once per row, and with a ~300-token
prompt that was over a third of a round. A row stops at EOS, at the token limit, as soon as its
text holds a complete first line, because `clean` keeps only the first line, or as soon as the line
it is writing is longer than the lint takes, because more tokens only make it longer; finished rows
leave the batch. Sampling follows transformers' warpers (temperature, then top-k, then top-p).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from generation.clean import clean, holds_copy

# What str.splitlines() splits on, and so where `clean` ends a line.
_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class Cache(Protocol):
    def repeat(self, n: int) -> None: ...

    def keep(self, rows: Tensor) -> None: ...


class Decoder(Protocol):
    def prefill(self, input_ids: Tensor) -> tuple[Tensor, Cache]:
        """Logits after each row's last token, shape (batch, vocab), and the filled cache."""
        ...

    def step(self, tokens: Tensor, cache: Any) -> Tensor:
        """One token per row, shape (batch,), in; logits for the next, (batch, vocab), out.
        `cache` is the one `prefill` returned."""
        ...


@dataclass
class Row:
    tokens: list[int] = field(default_factory=list)
    """Generated tokens, without the EOS that stopped the row."""
    logprobs: list[float] = field(default_factory=list)
    """Log-probability of every sampled token, the stopping EOS included."""
    end: Literal["eos", "line", "limit", "long"] = "limit"
    """What stopped the row; "long": its line passed `FirstLine.max_chars` before it ended, cut
    there as "limit" cuts it at the token limit."""
    eos: int | None = None
    """The stop token that ended the row, if one did."""

    @property
    def mean_logprob(self) -> float:
        # A row that stopped at once is scored by its EOS alone.
        scores = self.logprobs[: max(len(self.tokens), 1)] or [0.0]
        return sum(scores) / len(scores)


def line_break_table(texts: Sequence[str]) -> Tensor:
    """bool (len(texts),): which token ids' text (`texts[i]`, decoded alone) holds a line break."""
    return torch.tensor([_BREAK.search(text) is not None for text in texts], dtype=torch.bool)


def char_count_table(texts: Sequence[str]) -> Tensor:
    """int (len(texts),): the most characters each token id (`texts[i]`, decoded alone) can add
    to a line. One more than its own: a tokenizer that writes a word's leading space as part of
    the word (SentencePiece's "\u2581") drops it when the token is decoded alone."""
    return torch.tensor([len(text) + 1 for text in texts], dtype=torch.long)


@dataclass(frozen=True)
class FirstLine:
    """Ends a row once its text holds a complete line with copy in it: all that `clean` keeps.
    A label on a line of its own ("Headline:") does not count; the line after it is the copy.
    With `max_chars`, also once the line being written is longer than that: the lint refuses it,
    and a row that never ends its line would otherwise run to the token limit while the whole
    batch waits for it."""

    breaks: Tensor
    """bool (vocab,) from `line_break_table`: only these tokens can complete a line."""
    decode: Callable[[list[int]], str]
    max_chars: int | None = None
    """The longest line the lint takes (SamplingConfig.max_copy_chars); None: no such stop."""
    chars: Tensor | None = None
    """int (vocab,) from `char_count_table`, so that a row's text is decoded to measure its line
    only once its tokens could have passed `max_chars`; without it, at every token."""

    def complete(self, tokens: list[int]) -> bool:
        # Decoded whole, not token by token: a character split over two tokens reads right.
        *lines, _rest = _BREAK.split(self.decode(tokens))
        return any(holds_copy(line) for line in lines)

    def line_length(self, tokens: list[int]) -> int:
        """Characters of the line `clean` would keep, were the row to end with these tokens."""
        return len(clean(self.decode(tokens)))


def candidates(
    logits: Tensor, *, temperature: float, top_k: int | None, top_p: float
) -> tuple[Tensor, Tensor]:
    """Sampling probabilities and the token ids they belong to, each shape (rows, k): what
    transformers' temperature, top-k and top-p warpers leave of `logits` (rows, vocab)."""
    values, ids = (logits / temperature).topk(min(top_k or logits.shape[-1], logits.shape[-1]))
    if top_p < 1.0:
        # Drop the least likely tokens while their combined mass stays <= 1 - top_p; keep the best.
        mass_from_bottom = values.softmax(-1).flip(-1).cumsum(-1).flip(-1)
        dropped = mass_from_bottom <= 1 - top_p
        dropped[:, 0] = False
        values = values.masked_fill(dropped, float("-inf"))
    return values.softmax(-1), ids


def pick(
    logits: Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One sampled token id per row, shape (rows,)."""
    probs, ids = candidates(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return ids.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)


def decode(
    decoder: Decoder,
    logits: Tensor,
    cache: Cache,
    *,
    max_new_tokens: int,
    stop_ids: Collection[int],
    choose: Callable[[Tensor], Tensor],
    first_line: FirstLine | None = None,
) -> list[Row]:
    """Continue every row of a prefilled batch; `choose` maps logits (rows, vocab) to token ids."""
    rows = [Row() for _ in range(logits.shape[0])]
    active = list(range(len(rows)))  # batch position -> row
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=logits.device)
    breaks = None
    if first_line is not None:
        # Ids past the tokenizer's table (a padded embedding) decode to nothing: no break.
        breaks = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        known = min(len(first_line.breaks), len(breaks))
        breaks[:known] = first_line.breaks[:known]
    long_line = _LongLine.of(first_line, len(rows), logits)
    for step in range(max_new_tokens):
        logprobs = logits.float().log_softmax(-1)
        tokens = choose(logits)
        picked = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
        stopped = torch.isin(tokens, stops).tolist()
        may_end_line = breaks[tokens].tolist() if breaks is not None else [False] * len(active)
        still = []
        for position, (token, logprob, eos, may_end) in enumerate(
            zip(tokens.tolist(), picked, stopped, may_end_line, strict=True)
        ):
            row = rows[active[position]]
            row.logprobs.append(logprob)
            if eos:
                row.end, row.eos = "eos", token
                continue
            row.tokens.append(token)
            if may_end and first_line is not None and first_line.complete(row.tokens):
                row.end = "line"
                continue
            if long_line is not None and long_line.passed(active[position], row.tokens, token):
                row.end = "long"
                continue
            still.append(position)
        if not still or step == max_new_tokens - 1:
            break
        if len(still) < len(active):
            keep = torch.tensor(still, device=logits.device)
            cache.keep(keep)
            tokens = tokens[keep]
            active = [active[position] for position in still]
        logits = decoder.step(tokens, cache)
    return rows


@dataclass
class _LongLine:
    """Which rows' lines have passed `first_line.max_chars`. Decoding a row's text costs CPU at
    every step, so each row has an allowance: characters its tokens may add before its line could
    pass the limit (a token adds at most its `chars` entry). Only a row whose allowance runs out is
    decoded, and its allowance is then what its line lacks of the limit."""

    first_line: FirstLine
    max_chars: int
    chars: list[int] | None
    allowance: list[int]

    @classmethod
    def of(cls, first_line: FirstLine | None, rows: int, logits: Tensor) -> _LongLine | None:
        if first_line is None or first_line.max_chars is None:
            return None
        # A list: a Python int per picked token is cheaper than a tensor gather per step.
        chars = None if first_line.chars is None else first_line.chars.tolist()
        if chars is not None:  # ids past the tokenizer's table decode to nothing
            chars += [0] * (logits.shape[-1] - len(chars))
        return cls(first_line, first_line.max_chars, chars, [first_line.max_chars] * rows)

    def passed(self, row: int, tokens: list[int], token: int) -> bool:
        """Whether row `row`'s line, `tokens` with `token` last, is longer than the limit."""
        if self.chars is not None:
            self.allowance[row] -= self.chars[token]
            if self.allowance[row] >= 0:
                return False
        length = self.first_line.line_length(tokens)
        self.allowance[row] = self.max_chars - length
        return length > self.max_chars


def sample_rows(
    decoder: Decoder,
    prompt: Tensor,
    n: int,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float,
    max_new_tokens: int,
    stop_ids: Collection[int],
    first_line: FirstLine | None = None,
    generator: torch.Generator | None = None,
) -> list[Row]:
    """n continuations of one prompt (shape (1, length)), the prompt run through the model once."""
    logits, cache = _prefill_once(decoder, prompt, n)
    return decode(
        decoder,
        logits,
        cache,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids,
        choose=lambda scores: pick(
            scores, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        ),
        first_line=first_line,
    )


def _prefill_once(decoder: Decoder, prompt: Tensor, n: int) -> tuple[Tensor, Cache]:
    """The prompt (shape (1, length)) through the model once; its logits and cache for n rows."""
    logits, cache = decoder.prefill(prompt)
    cache.repeat(n)
    return logits.repeat(n, 1), cache


def as_decoder(model: Any) -> Decoder:
    """The model itself when it decodes step by step (generation.llama), else an adapter."""
    if hasattr(model, "prefill") and hasattr(model, "step"):
        return model
    return TransformersDecoder(model)


class TransformersDecoder:
    """Any transformers causal LM, one step at a time through its own cache object."""

    def __init__(self, model: Any) -> None:
        self.model = model
        # Renamed from past_key_values in transformers 5; older releases know only that name.
        parameters = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"

    def prefill(self, input_ids: Tensor) -> tuple[Tensor, Cache]:
        out = self.model(input_ids=input_ids, use_cache=True)
        return out.logits[:, -1], _TransformersCache(self._cache_of(out))

    def step(self, tokens: Tensor, cache: _TransformersCache) -> Tensor:
        arguments = {self._cache_arg: cache.inner}
        out = self.model(input_ids=tokens[:, None], use_cache=True, **arguments)
        cache.inner = self._cache_of(out)
        return out.logits[:, -1]

    @staticmethod
    def _cache_of(out: Any) -> Any:
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values


class _TransformersCache:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def repeat(self, n: int) -> None:
        self.inner.batch_repeat_interleave(n)

    def keep(self, rows: Tensor) -> None:
        self.inner.batch_select_indices(rows)


def generate_like_transformers(
    decoder: Decoder,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    max_new_tokens: int = 20,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
) -> Tensor:
    """The subset of `model.generate` this project calls, for a model without one.

    Returns prompt and continuation, shape (batch, length + new), rows padded after their EOS.
    Rows that repeat one prompt share its prefill, as in `sample_rows`.
    """
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("padded prompts are not supported: give rows of one length")
    if eos_token_id is None:
        eos_token_id = list(getattr(decoder, "eos_token_ids", ()))
    stop_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    batch = input_ids.shape[0]
    if bool((input_ids == input_ids[:1]).all()):
        logits, cache = _prefill_once(decoder, input_ids[:1], batch)
    else:
        logits, cache = decoder.prefill(input_ids)

    def choose(scores: Tensor) -> Tensor:
        if not do_sample:
            return scores.argmax(-1)
        return pick(scores, temperature=temperature, top_k=top_k, top_p=top_p)

    rows = decode(
        decoder, logits, cache, max_new_tokens=max_new_tokens, stop_ids=stop_ids, choose=choose
    )
    pad = pad_token_id if pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    width = max(len(row.tokens) + (row.end == "eos") for row in rows)
    out = torch.full((batch, width), pad, dtype=input_ids.dtype, device=input_ids.device)
    for index, row in enumerate(rows):
        tokens = row.tokens + ([row.eos] if row.eos is not None else [])
        out[index, : len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    return torch.cat([input_ids, out], dim=1)
