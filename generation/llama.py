"""A plain Llama decoder (SmolLM2's architecture) in torch alone, so a warm start stays fast.

Importing transformers' modeling code takes 4-6 s here (it pulls in torch._dynamo,
torch.distributed, scipy and accelerate), ten times what the weights take to load. RMSNorm, rotary
positions, grouped-query attention and a SwiGLU MLP are small enough to own; the parameter names
match transformers' LlamaForCausalLM, so its safetensors load as they are. A folder needing anything
more (other rotary scalings, biases, quantized weights) gets None from `load` and goes through
transformers instead (see generation.model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generation.decoding import generate_like_transformers

# Spare positions reserved beyond what is written, so decoding rarely reallocates the cache.
_CACHE_SLACK = 64


@dataclass(frozen=True)
class LlamaConfig:
    """The fields of a transformers LlamaConfig that inference uses (same names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    """The context length the model was trained for; the writer refuses longer prompts."""

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> LlamaConfig | None:
        """None when the checkpoint needs something this module does not implement."""
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        quantized = (raw.get("quantization_config") or {}).get("quant_method")
        if (
            raw.get("model_type") != "llama"
            or raw.get("hidden_act", "silu") != "silu"
            or raw.get("attention_bias")
            or raw.get("mlp_bias")
            or rope.get("rope_type", rope.get("type", "default")) != "default"
            # The de-quantized cache still names its GGUF origin; its weights are plain floats.
            or quantized not in (None, "gguf")
        ):
            return None
        heads = raw["num_attention_heads"]
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", raw.get("rope_theta", 10000.0)),
            tie_word_embeddings=raw.get("tie_word_embeddings", True),
            max_position_embeddings=raw.get(
                "max_position_embeddings", 2048
            ),  # transformers' default
        )


class KVCache:
    """Keys and values per layer, shape (batch, kv_heads, positions, head_dim), grown in place."""

    def __init__(self, layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * layers
        self.values: list[Tensor | None] = [None] * layers
        self.length = 0

    def update(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + key.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None or end > keys.shape[2]:
            keys, values = self._grown(keys, key, end), self._grown(values, value, end)
            self.keys[layer], self.values[layer] = keys, values
        keys[:, :, self.length : end] = key
        values[:, :, self.length : end] = value
        return keys[:, :, :end], values[:, :, :end]

    def _grown(self, old: Tensor | None, new: Tensor, end: int) -> Tensor:
        batch, heads, _, dim = new.shape
        buffer = new.new_empty(batch, heads, end + _CACHE_SLACK, dim)
        if old is not None:
            buffer[:, :, : self.length] = old[:, :, : self.length]
        return buffer

    def repeat(self, n: int) -> None:
        """Every row n times over: one prompt's cache becomes a batch's."""
        self.keys = [k.repeat(n, 1, 1, 1) if k is not None else None for k in self.keys]
        self.values = [v.repeat(n, 1, 1, 1) if v is not None else None for v in self.values]

    def keep(self, rows: Tensor) -> None:
        """Only these rows (indices into the batch), in this order."""
        self.keys = [k[rows] if k is not None else None for k in self.keys]
        self.values = [v[rows] if v is not None else None for v in self.values]


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # In float32 whatever the weights' dtype, as transformers does: bf16 squares overflow.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Attention(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, layer: int) -> Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        keys, values = cache.update(layer, _rotate(k, cos, sin), v)
        # A prompt starts from an empty cache (causal mask); a decoding step sees every position.
        out = F.scaled_dot_product_attention(
            _rotate(q, cos, sin), keys, values, is_causal=length > 1, enable_gqa=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class _MLP(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(c)
        self.mlp = _MLP(c)
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, layer: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        # Given an empty weight, Embedding skips its random init, which on the meta device (see
        # `load`) goes through torch's Python reference ops and imports torch._dynamo: 1.5-2 s.
        weight = torch.empty(c.vocab_size, c.hidden_size)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)


class Llama(nn.Module):
    """Decoder-only Llama. `prefill` and `step` return logits for each row's last position."""

    inv_freq: Tensor

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.eos_token_ids: tuple[int, ...] = ()
        """What `generate` stops at unless told otherwise (set by `load`)."""
        self.model = _Body(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        # On the CPU even inside `load`'s meta-device block (meta arange imports torch._dynamo).
        self.register_buffer("inv_freq", _inverse_frequencies(config, "cpu"), persistent=False)

    def forward(self, input_ids: Tensor, cache: KVCache) -> Tensor:
        length = input_ids.shape[1]
        if length > 1 and cache.length:
            raise ValueError("several tokens at once only into an empty cache (a prompt)")
        positions = torch.arange(cache.length, cache.length + length, device=input_ids.device)
        freqs = positions[:, None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        x = self.model.embed_tokens(input_ids)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for index, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, index)
        cache.length += length
        # Only the last position's logits: a whole prompt's would be ~300 x 49k floats per row.
        last = self.model.norm(x[:, -1])
        head = self.lm_head.weight if self.lm_head is not None else self.model.embed_tokens.weight
        return F.linear(last, head)

    def prefill(self, input_ids: Tensor) -> tuple[Tensor, KVCache]:
        cache = KVCache(self.config.num_hidden_layers)
        return self(input_ids, cache), cache

    def step(self, tokens: Tensor, cache: KVCache) -> Tensor:
        return self(tokens[:, None], cache)

    def generate(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        """`model.generate(...)` for the sampling settings this project uses (see decoding)."""
        return generate_like_transformers(self, input_ids, **kwargs)


def load(folder: Path, dtype: torch.dtype, device: str) -> Llama | None:
    """The checkpoint in `folder`, or None when it is not a plain Llama in safetensors."""
    config = LlamaConfig.parse(json.loads((folder / "config.json").read_text()))
    files = _weight_files(folder)
    if config is None or files is None:
        return None
    from safetensors.torch import load_file

    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_file(file, device=device))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Llama(config)
    state = {k: v.to(dtype) for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        return None  # weights this module has no place for: not a plain Llama after all
    if missing:
        raise ValueError(f"{folder} lacks weights for {', '.join(missing[:3])}")
    model.inv_freq = _inverse_frequencies(config, device)
    model.eos_token_ids = eos_token_ids(folder)
    return model.eval()


def _inverse_frequencies(config: LlamaConfig, device: str) -> Tensor:
    half = torch.arange(0, config.head_dim, 2, dtype=torch.float32, device=device) / config.head_dim
    return 1.0 / config.rope_theta**half


def eos_token_ids(folder: Path) -> tuple[int, ...]:
    """Where generation stops: generation_config.json's EOS, else config.json's, as transformers."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return tuple(eos) if isinstance(eos, list) else (eos,)
    return ()


def _weight_files(folder: Path) -> list[Path] | None:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    return None
