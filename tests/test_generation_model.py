"""The real default model, end to end: SmolLM2-135M-Instruct writes copy that passes the lint.

The first run de-quantizes the GGUF into var/models (about 40 s); later runs load the cached
safetensors in about a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from generation import Brief, generate_variants
from generation.lint import LintConfig, lint
from generation.llama import Llama
from generation.model import LoadedModel, ModelConfig, load_model
from generation.prompts import build_messages
from generation.similarity import DEFAULT_THRESHOLD, NgramSimilarity
from generation.tokenizer import ChatTokenizer
from generation.writer import PromptTooLong, SamplingConfig, TransformersWriter

CACHE = Path(__file__).resolve().parent.parent / "var" / "models"
FOLDER = CACHE / "smollm2-135m-instruct-q4_1"
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


def test_a_brief_too_long_for_the_model_fails_at_once_saying_what_to_shorten(
    loaded: LoadedModel,
) -> None:
    # Fields the API accepts, in a script that takes more tokens a character than English: the
    # prefill of ~9,700 tokens at batch 16 peaked at 10.4 GB and wrote nothing usable.
    long_brief = Brief(
        product_name="Ridgeline",
        product_description="ñ" * 5000,
        segment="ü" * 2000,
        price=None,
    )
    with pytest.raises(PromptTooLong, match=r"the prompt is [\d,]+ tokens, and at most 4,096 fit"):
        TransformersWriter(loaded).sample(build_messages(long_brief), n=16, seed=1)


def test_same_seed_same_copy(loaded: LoadedModel) -> None:
    writer = TransformersWriter(loaded)
    messages = [{"role": "user", "content": "Write one advertising line for Ridgeline shoes."}]
    first = writer.sample(messages, 4, seed=5)
    assert writer.sample(messages, 4, seed=5) == first
    assert writer.sample(messages, 4, seed=6) != first


def test_a_local_model_folder_loads_through_configuration(loaded: LoadedModel) -> None:
    # The de-quantized cache is itself a plain Hugging Face folder: configure it like any other.
    other = load_model(ModelConfig(path=str(FOLDER)))
    assert other.model_id == FOLDER.name
    assert other.model.config.num_hidden_layers == loaded.model.config.num_hidden_layers


def test_the_default_model_loads_without_transformers_model_code(loaded: LoadedModel) -> None:
    assert isinstance(loaded.model, Llama)
    assert isinstance(loaded.tokenizer, ChatTokenizer)
    assert loaded.stop_ids == {loaded.tokenizer.eos_token_id}


def test_chat_tokenizer_encodes_and_decodes_as_transformers_does(loaded: LoadedModel) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)
    messages = build_messages(BRIEF)
    arguments: dict[str, Any] = {"add_generation_prompt": True, "return_dict": True}
    ours = loaded.tokenizer.apply_chat_template(messages, **arguments, return_tensors="pt")
    theirs = reference.apply_chat_template(messages, **arguments, return_tensors="pt")
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == theirs["attention_mask"].tolist()
    assert loaded.tokenizer.eos_token_id == reference.eos_token_id
    sampled = TransformersWriter(loaded).sample(messages, 2, seed=1)
    for text in ("Caf\u00e9 \U0001f45f <|im_end|> grip!\n", *(s.text for s in sampled)):
        encoded = reference.encode(text, add_special_tokens=False)
        for skip in (True, False):
            assert loaded.tokenizer.decode(encoded, skip) == reference.decode(encoded, skip)


@pytest.mark.usefixtures("loaded")  # the cached folder lends its tokenizer
def test_another_architecture_loads_and_samples_through_transformers(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(FOLDER / name, tmp_path / name)
    eos = json.loads((FOLDER / "config.json").read_text())["eos_token_id"]
    config = GPT2Config(vocab_size=49152, n_embd=16, n_layer=2, n_head=2, eos_token_id=eos)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)

    other = load_model(ModelConfig(path=str(tmp_path)))
    assert type(other.model).__name__ == "GPT2LMHeadModel"
    writer = TransformersWriter(other)
    first = writer.sample([{"role": "user", "content": "Write a line."}], 3, seed=2)
    assert len(first) == 3
    assert all(0 < s.tokens <= writer.sampling.max_new_tokens for s in first)
    assert writer.sample([{"role": "user", "content": "Write a line."}], 3, seed=2) == first


@pytest.mark.usefixtures("loaded")
def test_tokenizers_transformers_would_rebuild_are_left_to_it(tmp_path: Path) -> None:
    shutil.copy(FOLDER / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"tokenizer_class": "LlamaTokenizer", "chat_template": "{{ messages }}"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTokenizer.from_folder(tmp_path) is None
    config["tokenizer_class"] = "TokenizersBackend"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTokenizer.from_folder(tmp_path) is not None


@pytest.mark.usefixtures("loaded")  # the cached folder is the good copy
@pytest.mark.parametrize("damaged", ["model.safetensors", "tokenizer.json"])
def test_a_damaged_cache_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damaged: str
) -> None:
    cache = tmp_path / FOLDER.name
    cache.mkdir()
    for file in FOLDER.iterdir():
        shutil.copy(file, cache / file.name)
    with open(
        cache / damaged, "r+b"
    ) as cut_short:  # as a power cut or an interrupted copy leaves it
        cut_short.truncate(1000)
    made: list[Path] = []

    def dequantize(folder: Path, say: Any, *, progress_bars: bool) -> None:
        made.append(folder)
        folder.mkdir()  # the damaged cache is gone
        for file in FOLDER.iterdir():
            (folder / file.name).symlink_to(file)

    monkeypatch.setattr("generation.model._dequantize_into", dequantize)
    # Before, every load failed on the loader's words ("incomplete metadata, file not fully
    # covered"), and with it every generation job, until someone deleted the folder by hand.
    loaded = load_model(ModelConfig(cache_dir=tmp_path))
    assert made == [cache]
    assert isinstance(loaded.model, Llama)
    assert f"the cached model in {cache} cannot be read" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # moved aside, removed


def test_a_folder_without_a_model_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model folder must be a local Hugging Face causal-LM"):
        load_model(ModelConfig(path=str(tmp_path)))


def _tiny_gpt2_folder(folder: Path) -> Path:
    """A two-token GPT-2 that loads through transformers' Auto classes, in a blink."""
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel

    Tokenizer(models.WordLevel({"<eos>": 0, "a": 1}, unk_token="<eos>")).save(
        str(folder / "tokenizer.json")
    )
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<eos>",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = GPT2Config(vocab_size=2, n_embd=8, n_layer=1, n_head=1, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("shown", [True, False])
def test_transformers_progress_bars_stay_off_stderr_when_not_wanted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], shown: bool
) -> None:
    """With JSON logs the first start wrote tqdm's raw bars (de-quantizing, loading weights,
    writing shards) between the JSON lines on stderr."""
    from transformers import modeling_gguf_pytorch_utils as gguf

    from generation.model import transformers_progress_bars

    folder = _tiny_gpt2_folder(tmp_path)
    capfd.readouterr()

    load_model(ModelConfig(path=str(folder), progress_bars=shown))
    with transformers_progress_bars(shown):
        list(gguf.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))

    stderr = capfd.readouterr().err
    assert ("Loading weights" in stderr) == shown
    assert ("de-quantizing GGUF tensors" in stderr) == shown
    list(gguf.tqdm(range(3), desc="Converting again"))  # as they were afterwards
    assert "Converting again" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("damaged", "part"),
    [("model.safetensors", "its weights"), ("tokenizer.json", "its tokenizer")],
)
def test_a_configured_folder_that_cannot_be_loaded_is_named_in_one_line(
    tmp_path: Path, damaged: str, part: str
) -> None:
    """A cut-short file passes the start-up check (it is there) and fails at the load: before,
    the job said only "SafetensorError: Error while deserializing header: invalid header length"
    or "Exception: key must be a string", naming neither the folder nor the file's part."""
    from generation.model import ModelUnavailable

    folder = _tiny_gpt2_folder(tmp_path)
    with open(folder / damaged, "r+b") as cut_short:
        cut_short.truncate(5)

    with pytest.raises(ModelUnavailable) as raised:
        load_model(ModelConfig(path=str(folder), progress_bars=False))
    message = str(raised.value)
    assert message.startswith(f"the model folder {str(folder)!r} cannot be loaded: {part} (")
    assert "\n" not in message


def test_a_folder_that_needs_its_own_code_is_refused_at_start(tmp_path: Path) -> None:
    """Before, it passed the check (its class name ends in ForCausalLM), and at a terminal
    transformers then asked whether to run the folder's code, inside the command's progress bar."""
    folder = _tiny_gpt2_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "architectures": ["HomeGrownForCausalLM"],
        "model_type": "home-grown",
        "auto_map": {"AutoModelForCausalLM": "modeling_home.HomeGrownForCausalLM"},
    }
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(
        ValueError, match=r"must be a model type transformers knows; .*'home-grown'"
    ):
        ModelConfig(path=str(folder)).validate()


JAPANESE_BRIEF = Brief(
    product_name="リッジライン トレイルランニングシューズ",
    product_description="防水性のあるトレイルランニングシューズ。グリップ力の高いソールで、片足わずか"
    "280グラム。",
    segment="ぬかるんだ山道でも足を濡らさずに歩きたい、週末のハイカー。",
    price=129.0,
)
# Copy as a Japanese copywriter writes it, not the brief's words: kana, kanji and punctuation.
JAPANESE_COPY = (
    "週末のハイキングに、軽くて滑りにくいリッジラインを。雨の山道でも足元はいつもドライ。"
)


def japanese_line(tokenizer: Any, chars: int) -> list[int]:
    """Token ids of Japanese copy `chars` characters long, with no line break in it."""
    text = (JAPANESE_COPY * (chars // len(JAPANESE_COPY) + 1))[:chars]
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def test_a_japanese_brief_gets_tokens_for_the_lints_longest_line(loaded: LoadedModel) -> None:
    writer = TransformersWriter(loaded)
    longest = len(japanese_line(loaded.tokenizer, LintConfig().max_chars))
    assert longest > 6 * writer.sampling.max_new_tokens  # ~250 tokens, against 36
    assert writer.token_budget(build_messages(JAPANESE_BRIEF)) >= longest
    # English keeps the budget it always had.
    assert writer.token_budget(build_messages(BRIEF)) == writer.sampling.max_new_tokens == 36


def test_an_english_brief_for_a_product_named_in_japanese_gets_tokens_for_the_name_too(
    loaded: LoadedModel,
) -> None:
    # The brief reads as English (0.31 tokens a character), so it got 36 tokens; but every line
    # must name the product (lint's off_product), and リッジライン alone is 11 of them: a line of
    # 128 characters naming it takes 39, and was cut.
    brief = dataclasses.replace(BRIEF, product_name="リッジライン")
    line = (
        "リッジライン keeps your feet dry on every muddy weekend trail, with a lugged sole "
        "that bites into loose rock and a quick-drying upper."
    )
    assert len(line) <= LintConfig().max_chars
    needed = len(loaded.tokenizer.encode(line, add_special_tokens=False))
    assert needed > 36
    assert TransformersWriter(loaded).token_budget(build_messages(brief)) >= needed


class _WritesOneLineForever:
    """A model that writes the same Japanese tokens over and over and never ends its line."""

    def __init__(self, ids: list[int], vocab: int) -> None:
        self.ids, self.vocab, self.written = ids, vocab, 0

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self._next(1), self

    def step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        return self._next(len(tokens))

    def _next(self, rows: int) -> torch.Tensor:
        logits = torch.zeros(rows, self.vocab)
        logits[:, self.ids[self.written % len(self.ids)]] = 100.0
        self.written += 1
        return logits

    def repeat(self, n: int) -> None:
        pass

    def keep(self, rows: torch.Tensor) -> None:
        pass


def test_japanese_copy_is_not_cut_short_of_the_lints_longest_line(loaded: LoadedModel) -> None:
    # With 36 tokens, the budget English needs, a Japanese row was cut at about 19 characters and
    # clean dropped it as a fragment.
    limit = LintConfig().max_chars
    ids = japanese_line(loaded.tokenizer, 3 * limit)
    fake = dataclasses.replace(loaded, model=_WritesOneLineForever(ids, len(loaded.tokenizer)))
    (sample,) = TransformersWriter(fake).sample(build_messages(JAPANESE_BRIEF), 1, seed=1)
    assert not sample.finished
    assert len(sample.text) > limit
    assert sample.text.startswith(JAPANESE_COPY)


def test_a_row_stops_as_soon_as_its_line_is_longer_than_the_configured_longest(
    loaded: LoadedModel,
) -> None:
    # A row that never ended its line ran to the token limit: a Japanese one for 300 tokens and
    # 1,116 characters, which the lint refuses, while every step of it cost the whole batch.
    limit = 100  # not the default: SamplingConfig's is the one the decoder obeys
    ids = japanese_line(loaded.tokenizer, 3 * limit)
    fake = dataclasses.replace(loaded, model=_WritesOneLineForever(ids, len(loaded.tokenizer)))
    writer = TransformersWriter(fake, SamplingConfig(max_copy_chars=limit))
    messages = build_messages(JAPANESE_BRIEF)
    (sample,) = writer.sample(messages, 1, seed=1)
    assert sample.too_long and not sample.finished
    assert len(sample.text) == limit + 1  # each of these tokens adds at most one character
    assert sample.tokens < writer.token_budget(messages)
