"""generation.llama against transformers' LlamaForCausalLM on tiny random checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from generation import llama
from generation.model import LoadedModel
from generation.writer import PromptTooLong, TransformersWriter

BASE: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
}


def _save_transformers_llama(folder: Path, *, tied: bool, **settings: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        **{k: v for k, v in BASE.items() if k != "model_type"},
        **settings,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_logits_match_transformers_through_prefill_steps_and_batch_edits(
    tmp_path: Path, tied: bool
) -> None:
    reference = _save_transformers_llama(tmp_path, tied=tied)
    model = llama.load(tmp_path, torch.float32, "cpu")
    assert model is not None
    assert model.eos_token_ids == (2,)
    ids = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(1))

    with torch.inference_mode():
        expected = reference(ids).logits[0]
        logits, cache = model.prefill(ids[:, :8])
        torch.testing.assert_close(logits[0], expected[7], atol=1e-4, rtol=1e-4)
        for position in range(8, 12):
            logits = model.step(ids[:, position], cache)
            torch.testing.assert_close(logits[0], expected[position], atol=1e-4, rtol=1e-4)

        # One prompt's cache copied to three rows, then rows 2 and 0 kept, in that order.
        _, cache = model.prefill(ids[:, :8])
        cache.repeat(3)
        nexts = torch.tensor([10, 20, 30])
        model.step(nexts, cache)
        cache.keep(torch.tensor([2, 0]))
        logits = model.step(torch.tensor([40, 50]), cache)
        for row, (first, second) in enumerate([(30, 40), (10, 50)]):
            sequence = torch.cat([ids[0, :8], torch.tensor([first, second])])[None]
            torch.testing.assert_close(
                logits[row], reference(sequence).logits[0, -1], atol=1e-4, rtol=1e-4
            )


def test_greedy_generate_matches_transformers(tmp_path: Path) -> None:
    reference = _save_transformers_llama(tmp_path, tied=True)
    model = llama.load(tmp_path, torch.float32, "cpu")
    assert model is not None
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(2))
    arguments = {"do_sample": False, "max_new_tokens": 8, "pad_token_id": 0, "eos_token_id": 2}
    with torch.inference_mode():
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), **arguments)
        assert torch.equal(model.generate(ids, **arguments), expected)


def test_a_folder_without_safetensors_is_left_to_transformers(tmp_path: Path) -> None:
    _save_transformers_llama(tmp_path, tied=True)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    assert llama.load(tmp_path, torch.float32, "cpu") is None


@pytest.mark.parametrize(
    "change",
    [
        {"model_type": "mistral"},
        {"hidden_act": "gelu"},
        {"attention_bias": True},
        {"mlp_bias": True},
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
        {"quantization_config": {"quant_method": "bitsandbytes"}},
    ],
)
def test_checkpoints_it_does_not_implement_are_refused(change: dict[str, Any]) -> None:
    assert llama.LlamaConfig.parse({**BASE, **change}) is None


def test_config_reads_old_and_new_rotary_fields() -> None:
    old = llama.LlamaConfig.parse({**BASE, "rope_theta": 5e5, "rope_scaling": None})
    new = llama.LlamaConfig.parse(
        {**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}
    )
    cached = llama.LlamaConfig.parse({**BASE, "quantization_config": {"quant_method": "gguf"}})
    assert old is not None and old.rope_theta == 5e5
    assert new is not None and new.rope_theta == 1e5
    assert cached is not None and cached.head_dim == 8 and cached.num_key_value_heads == 2


def test_config_reads_the_context_length() -> None:
    short = llama.LlamaConfig.parse({**BASE, "max_position_embeddings": 512})
    unstated = llama.LlamaConfig.parse(BASE)
    assert short is not None and short.max_position_embeddings == 512
    assert unstated is not None and unstated.max_position_embeddings == 2048


class _PromptOf:
    """A tokenizer whose chat template always comes to `length` tokens."""

    def __init__(self, length: int) -> None:
        self.length = length

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.full((1, self.length), 5)}

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        # A token a word, as English goes: the writer keeps its English budget.
        return [5] * len(text.split())


def test_a_prompt_longer_than_the_models_context_is_refused(tmp_path: Path) -> None:
    _save_transformers_llama(tmp_path, tied=True, max_position_embeddings=64)
    model = llama.load(tmp_path, torch.float32, "cpu")
    loaded = LoadedModel(model=model, tokenizer=_PromptOf(40), model_id="tiny", device="cpu")
    messages = [{"role": "user", "content": "Write one line."}]
    # 64 positions, less the 36 the copy may take.
    with pytest.raises(PromptTooLong, match="the prompt is 40 tokens, and at most 28 fit"):
        TransformersWriter(loaded).sample(messages, n=2, seed=1)
