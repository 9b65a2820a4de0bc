"""The de-quantized model cache goes into place whole, whatever already sits at its path."""

from __future__ import annotations

import stat
from pathlib import Path

from generation.model import move_into_place


def _staged(parent: Path, weights: bytes) -> Path:
    staging = parent / ".cache-staging"
    staging.mkdir(mode=0o700)
    (staging / "config.json").write_text("{}")
    (staging / "model.safetensors").write_bytes(weights)
    return staging


def test_a_new_cache_is_renamed_into_place_readable_by_others(tmp_path: Path) -> None:
    cache = tmp_path / "model"
    move_into_place(_staged(tmp_path, b"ours"), cache)
    assert (cache / "model.safetensors").read_bytes() == b"ours"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


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
