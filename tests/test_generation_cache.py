"""The de-quantized model cache goes into place whole, whatever already sits at its path."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.model import move_into_place


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
