"""Session-scoped tiny checkpoints for serving tests (see serving_helpers.make_checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serving_helpers import make_checkpoint


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """k = L (hard sharing)."""
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "shared", tiny_encoder_dir)


@pytest.fixture(scope="session")
def ckpt_split_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """k = 2 of 4: heads own two layers each, the encoder sends hidden states."""
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "k2", tiny_encoder_dir, sharing_depth=2)


@pytest.fixture(scope="session")
def ckpt_new_head_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """Same encoder as ``ckpt_dir``, other head weights: a retrained head for replacement."""
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "newhead", tiny_encoder_dir, head_seed=7)


@pytest.fixture
def tampered_copy(tmp_path, ckpt_dir) -> Path:
    """A copy of ``ckpt_dir`` with one byte of its weights flipped."""
    copy = Path(shutil.copytree(ckpt_dir, tmp_path / "tampered"))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    return copy
