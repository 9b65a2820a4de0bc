"""Batched, seeded sampling: several candidates from one `generate` call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from generation.model import LoadedModel


@dataclass(frozen=True)
class Sample:
    text: str
    finished: bool
    """False when the token limit cut it off."""
    logprob: float
    """Mean log-probability per token under the model (before temperature/top-p)."""
    tokens: int = 0
    """Tokens generated, up to and excluding the stop token."""


class Writer(Protocol):
    model_id: str

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]: ...


@dataclass
class SamplingConfig:
    temperature: float = 0.9
    top_p: float = 0.95
    # 140 characters of English copy is about 30 tokens; longer lines fail the lint anyway.
    max_new_tokens: int = 36


class TransformersWriter:
    def __init__(self, loaded: LoadedModel, sampling: SamplingConfig | None = None) -> None:
        self.loaded = loaded
        self.sampling = sampling or SamplingConfig()
        self.model_id = loaded.model_id

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Sample]:
        import torch

        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        prompt = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        # One prompt repeated: no padding, so every row is sampled exactly as a single run would be.
        inputs = {k: v.repeat(n, 1).to(self.loaded.device) for k, v in prompt.items()}
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                do_sample=True,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                max_new_tokens=self.sampling.max_new_tokens,
                pad_token_id=tokenizer.eos_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
        generated = out.sequences[:, inputs["input_ids"].shape[1] :]
        # Raw logits, not the sampling-warped scores: the model's own view of how fluent a line is.
        token_logprobs = model.compute_transition_scores(
            out.sequences, out.logits, normalize_logits=True
        )
        stop_ids = _stop_ids(tokenizer, model)
        samples = []
        for row, scores in zip(generated.tolist(), token_logprobs, strict=True):
            length = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
            mean = float(scores[: max(length, 1)].mean())
            samples.append(
                Sample(
                    text=tokenizer.decode(row[:length], skip_special_tokens=True),
                    finished=length < len(row),
                    logprob=mean,
                    tokens=length,
                )
            )
        return samples


def _stop_ids(tokenizer: object, model: object) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    ids.append(getattr(tokenizer, "eos_token_id", None))
    return {i for i in ids if i is not None}
