"""Batched, seeded sampling: several candidates of one prompt in one batch (see decoding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from generation.model import LoadedModel


@dataclass(frozen=True)
class Sample:
    text: str
    finished: bool
    """False when the token limit cut it off, or `too_long`; True at EOS or once a first line is
    complete."""
    logprob: float
    """Mean log-probability per token under the model (before temperature/top-k/top-p)."""
    tokens: int = 0
    """Tokens generated, excluding the EOS that stopped it."""
    too_long: bool = False
    """Cut off as soon as its line was longer than SamplingConfig.max_copy_chars, before it
    ended: more tokens could only make it longer."""


class Writer(Protocol):
    model_id: str

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]: ...


@dataclass
class SamplingConfig:
    temperature: float = 0.9
    top_p: float = 0.95
    # transformers' default, which `model.generate` applied here before sampling was our own.
    top_k: int | None = 50
    # 140 characters of English copy is about 30 tokens; longer lines fail the lint anyway. Briefs
    # in other scripts get room for `max_copy_chars` characters of theirs (generation.budget).
    max_new_tokens: int = 36
    # The lint's longest line (COPYBANDIT_COPY_MAX_CHARS), which no budget should cut; a row is cut
    # as soon as its line is longer (generation.decoding.FirstLine).
    max_copy_chars: int = 140
    # Korean or emoji copy of 140 characters takes up to ~440 tokens; the cap keeps a longer
    # COPY_MAX_CHARS from letting a rambling row run for thousands of steps.
    max_new_tokens_cap: int = 512
    # Briefs at the API's longest fields come to ~3,000 tokens of English; other scripts and emoji
    # take several tokens a character. Memory grows fast with the prompt: 9,727 tokens at batch
    # 16 peaked at 10.4 GB and wrote nothing usable, and ~29,000 would not fit in this machine.
    max_prompt_tokens: int = 4096


class PromptTooLong(ValueError):
    """The brief does not fit the model: the job fails saying so, before any memory is spent.
    `tokens` and `limit` say by how much, where the writer counted."""

    def __init__(self, message: str, *, tokens: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


class TransformersWriter:
    def __init__(self, loaded: LoadedModel, sampling: SamplingConfig | None = None) -> None:
        self.loaded = loaded
        self.sampling = sampling or SamplingConfig()
        self.model_id = loaded.model_id

    def token_budget(self, messages: list[dict[str, str]]) -> int:
        """Tokens each row of this prompt may sample: room for the lint's longest line in the
        script of the brief's own words (generation.budget)."""
        from generation.budget import token_budget
        from generation.prompts import brief_words, product_name

        sampling, tokenizer = self.sampling, self.loaded.tokenizer
        return token_budget(
            brief_words(messages),
            lambda words: len(tokenizer.encode(words, add_special_tokens=False)),
            product_name=product_name(messages),
            max_chars=sampling.max_copy_chars,
            english_tokens=sampling.max_new_tokens,
            cap=sampling.max_new_tokens_cap,
        )

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        import torch

        from generation.decoding import FirstLine, as_decoder, sample_rows

        loaded, sampling = self.loaded, self.sampling
        tokenizer = loaded.tokenizer

        def text(ids: list[int]) -> str:
            return str(tokenizer.decode(ids, skip_special_tokens=True))

        max_new_tokens = self.token_budget(messages)
        prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"].to(loaded.device)
        context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
        limit = min(sampling.max_prompt_tokens, (context or 2**31) - max_new_tokens)
        if prompt.shape[-1] > limit:
            raise PromptTooLong(
                f"the prompt is {prompt.shape[-1]:,} tokens, and at most {limit:,} fit: shorten "
                "the product description, the segment's persona or the brand voice",
                tokens=prompt.shape[-1],
                limit=limit,
            )
        # A generator of its own: the seed alone fixes the batch, whatever else uses torch.
        generator = torch.Generator(device=loaded.device).manual_seed(seed)
        with torch.inference_mode():
            rows = sample_rows(
                as_decoder(loaded.model),
                prompt,
                n,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                max_new_tokens=max_new_tokens,
                stop_ids=loaded.stop_ids,
                first_line=FirstLine(
                    loaded.line_breaks,
                    text,
                    max_chars=sampling.max_copy_chars,
                    chars=loaded.token_chars,
                ),
                generator=generator,
            )
        return [
            Sample(
                text=text(row.tokens),
                finished=row.end in ("eos", "line"),
                too_long=row.end == "long",
                # Raw logits, not the sampling-warped ones: the model's own view of the line.
                logprob=row.mean_logprob,
                tokens=len(row.tokens),
            )
            for row in rows
        ]
