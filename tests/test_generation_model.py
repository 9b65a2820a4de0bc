"""The real default model, end to end: SmolLM2-135M-Instruct writes copy that passes the lint.

The first run de-quantizes the GGUF into var/models (about 40 s); later runs load the cached
safetensors in about a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from generation import Brief, generate_variants
from generation.lint import lint
from generation.model import LoadedModel, ModelConfig, load_model
from generation.similarity import DEFAULT_THRESHOLD, NgramSimilarity
from generation.writer import TransformersWriter

CACHE = Path(__file__).resolve().parent.parent / "var" / "models"
BRIEF = Brief(
    product_name="Ridgeline trail-running shoes",
    product_description="Lightweight trail-running shoes with a grippy lugged sole, a rock plate "
    "and a breathable, quick-drying upper.",
    segment="Casual hikers who head out on weekends; value comfort and reliable grip over speed.",
    price=129.0,
)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(ModelConfig(cache_dir=CACHE))


def test_the_default_model_writes_distinct_copy_that_passes_the_lint(loaded: LoadedModel) -> None:
    result = generate_variants(BRIEF, 3, writer=TransformersWriter(loaded), seed=11)

    texts = [candidate.text for candidate in result.accepted]
    assert len(texts) == 3, result.rejected
    assert len(set(texts)) == 3
    similarity = NgramSimilarity().matrix(texts, texts)
    assert all(similarity[i][j] < DEFAULT_THRESHOLD for i in range(3) for j in range(3) if i != j)
    for text in texts:
        assert lint(text, BRIEF).passed, text
    assert result.model_id.startswith("SmolLM2-135M-Instruct")
    assert all(candidate.logprob < 0 for candidate in result.accepted)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_same_seed_same_copy(loaded: LoadedModel) -> None:
    writer = TransformersWriter(loaded)
    messages = [{"role": "user", "content": "Write one advertising line for Ridgeline shoes."}]
    first = writer.sample(messages, 4, seed=5)
    assert writer.sample(messages, 4, seed=5) == first
    assert writer.sample(messages, 4, seed=6) != first


def test_a_local_model_folder_loads_through_configuration(loaded: LoadedModel) -> None:
    # The de-quantized cache is itself a plain Hugging Face folder: configure it like any other.
    folder = CACHE / "smollm2-135m-instruct-q4_1"
    other = load_model(ModelConfig(path=str(folder)))
    assert other.model_id == folder.name
    assert other.model.config.num_hidden_layers == loaded.model.config.num_hidden_layers


def test_a_folder_without_a_model_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no config\.json; give a local Hugging Face"):
        load_model(ModelConfig(path=str(tmp_path)))
