"""The de-quantized model cache goes into place whole, whatever already sits at its path."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from generation.model import ModelConfig, load_model, move_into_place


def _staged(parent: Path, weights: bytes) -> Path:
    staging = parent / ".cache-staging"
    staging.mkdir(mode=0o700)
    (staging / "config.json").write_text("{}")
    (staging / "model.safetensors").write_bytes(weights)
    (staging / "model.safetensors").chmod(0o600)  # as safetensors' save_file leaves it
    return staging


def _modes(folder: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in [folder, *folder.iterdir()]}


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask")
def test_a_new_cache_is_renamed_into_place_readable_by_others(tmp_path: Path) -> None:
    cache = tmp_path / "model"
    move_into_place(_staged(tmp_path, b"ours"), cache)
    assert (cache / "model.safetensors").read_bytes() == b"ours"
    assert _modes(cache) == {"model": 0o755, "config.json": 0o644, "model.safetensors": 0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.usefixtures("umask")
def test_the_cache_keeps_what_the_umask_takes_away(tmp_path: Path) -> None:
    staging = _staged(tmp_path, b"ours")
    os.umask(0o027)
    move_into_place(staging, tmp_path / "model")
    # The folder had been opened to everyone (0o755) whatever the umask said.
    assert _modes(tmp_path / "model") == {
        "model": 0o750,
        "config.json": 0o640,
        "model.safetensors": 0o640,
    }


def test_a_leftover_folder_without_weights_is_replaced(tmp_path: Path) -> None:
    # Before, the rename failed on it (directory not empty) and so did every later load.
    cache = tmp_path / "model"
    cache.mkdir()
    (cache / "config.json").write_text('{"left": "over"}')
    move_into_place(_staged(tmp_path, b"ours"), cache)
    assert (cache / "model.safetensors").read_bytes() == b"ours"
    assert (cache / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_cache_another_process_finished_first_is_kept(tmp_path: Path) -> None:
    cache = tmp_path / "model"
    cache.mkdir()
    (cache / "model.safetensors").write_bytes(b"theirs")
    move_into_place(_staged(tmp_path, b"ours"), cache)
    assert (cache / "model.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _damaged_cache(parent: Path) -> Path:
    cache = parent / "smollm2-135m-instruct-q4_1"
    cache.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        (cache / name).write_bytes(b"{cut")  # as a power cut or an interrupted copy leaves them
    return cache


def _remade(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The caches de-quantized (into place as the real one goes), without the 40 s it takes."""
    made: list[Path] = []

    def dequantize(folder: Path, say: Any, *, progress_bars: bool) -> None:
        made.append(folder)
        move_into_place(_staged(folder.parent, b"ours"), folder)

    monkeypatch.setattr("generation.model._dequantize_into", dequantize)
    return made


def _loads(monkeypatch: pytest.MonkeyPatch, first: Callable[[Path], None]) -> list[bytes]:
    """The weights each load of the cache saw; the first load runs `first` and fails with it."""
    seen: list[bytes] = []

    def load(folder: Path, *args: Any) -> str:
        seen.append((folder / "model.safetensors").read_bytes())
        if len(seen) == 1:
            first(folder)
        return "loaded"

    monkeypatch.setattr("generation.model._load_folder", load)
    return seen


def _read_with_safetensors(folder: Path) -> None:
    import safetensors

    safetensors.safe_open(str(folder / "model.safetensors"), framework="np")


def _read_with_tokenizers(folder: Path) -> None:
    from tokenizers import Tokenizer

    Tokenizer.from_str((folder / "tokenizer.json").read_text())  # raises a bare Exception


def _read_as_json(folder: Path) -> None:
    json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize(
    "read", [_read_with_safetensors, _read_with_tokenizers, _read_as_json], ids=lambda f: f.__name__
)
def test_a_damaged_cache_is_moved_aside_and_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: Callable[[Path], None]
) -> None:
    cache = _damaged_cache(tmp_path)
    made, seen = _remade(monkeypatch), _loads(monkeypatch, read)
    assert load_model(ModelConfig(cache_dir=tmp_path)) == "loaded"
    assert made == [cache] and seen == [b"{cut", b"ours"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # the damaged one removed


def _forbidden(folder: Path) -> None:
    raise PermissionError(13, "Permission denied", str(folder / "model.safetensors"))


def _out_of_memory(folder: Path) -> None:
    raise RuntimeError("CUDA out of memory")


@pytest.mark.parametrize("fail", [_forbidden, _out_of_memory], ids=lambda f: f.__name__)
def test_a_cache_that_is_not_damaged_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Callable[[Path], None]
) -> None:
    # A cache another user made, which this process may not read, was deleted (where it could
    # be) and de-quantized again; the load then failed on the same error anyway.
    cache = _damaged_cache(tmp_path)
    (cache / "model.safetensors").write_bytes(b"theirs")
    made, seen = _remade(monkeypatch), _loads(monkeypatch, fail)
    with pytest.raises((PermissionError, RuntimeError)):
        load_model(ModelConfig(cache_dir=tmp_path))
    assert made == [] and seen == [b"theirs"]
    assert (cache / "model.safetensors").read_bytes() == b"theirs"


def test_a_fresh_cache_another_worker_moved_in_meanwhile_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _damaged_cache(tmp_path)

    def other_worker_mends_it_first(folder: Path) -> None:
        # Failing on the same damaged cache, the other worker moves it aside and a fresh one in
        # before this one's load has failed.
        folder.rename(tmp_path / ".moved-aside-by-the-other")
        move_into_place(_staged(tmp_path, b"fresh"), folder)
        _read_as_json(tmp_path / ".moved-aside-by-the-other")

    made, seen = _remade(monkeypatch), _loads(monkeypatch, other_worker_mends_it_first)
    assert load_model(ModelConfig(cache_dir=tmp_path)) == "loaded"
    # Before, this worker deleted the fresh cache in place and de-quantized its own.
    assert made == [] and seen == [b"{cut", b"fresh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".moved-aside-by-the-other",
        cache.name,
    ]


def test_a_cache_moved_aside_while_being_read_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _damaged_cache(tmp_path)

    def other_worker_moves_it_aside(folder: Path) -> None:
        folder.rename(tmp_path / ".moved-aside-by-the-other")
        (folder / "tokenizer.json").read_bytes()  # this worker's next read: FileNotFoundError

    made, seen = _remade(monkeypatch), _loads(monkeypatch, other_worker_moves_it_aside)
    assert load_model(ModelConfig(cache_dir=tmp_path)) == "loaded"
    assert made == [cache] and seen == [b"{cut", b"ours"]


def test_a_tokenizer_this_process_may_not_read_is_an_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tokenizers raised a bare Exception ("Permission denied (os error 13)"), the same class as
    # for a tokenizer.json cut short, so the load took another user's cache for a damaged one.
    # CI runs as root, which may read anything, so the refusal is answered here.
    from tokenizers import Tokenizer, models

    from generation.tokenizer import ChatTokenizer

    Tokenizer(models.WordLevel({"<eos>": 0}, unk_token="<eos>")).save(
        str(tmp_path / "tokenizer.json")
    )
    config = {"tokenizer_class": "TokenizersBackend", "chat_template": "{{ messages }}"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTokenizer.from_folder(tmp_path) is not None
    real_read_text = Path.read_text

    def read_text(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "tokenizer.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(PermissionError):
        ChatTokenizer.from_folder(tmp_path)
