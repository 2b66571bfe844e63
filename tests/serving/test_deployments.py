"""Deployment classes used directly (no cluster): a head swaps its weights in place, or refuses."""

from __future__ import annotations

import pytest
import torch
from serving_helpers import make_checkpoint

from mtl_ray.errors import CheckpointError
from mtl_ray.ray.serve.deployments import HeadDeployment
from mtl_ray.serving.parts import Encoded


def head(checkpoint) -> object:
    return HeadDeployment.func_or_class(str(checkpoint), "sentiment", expect={"type": "classification"})


def test_a_head_replica_swaps_to_a_new_checkpoint_in_place(ckpt_dir, ckpt_new_head_dir):
    h = head(ckpt_dir)
    h.reconfigure({"checkpoint": str(ckpt_dir)})
    old = h.part
    pooled = Encoded(pooled=torch.randn(3, 32).numpy())
    h.reconfigure({"checkpoint": str(ckpt_dir)})  # unchanged: nothing reloaded
    assert h.part is old
    h.reconfigure({"checkpoint": str(ckpt_new_head_dir)})
    assert h.part is not old and h.part.checkpoint == str(ckpt_new_head_dir) and h.refused is None
    assert h.part.predict(pooled) != old.predict(pooled)


def test_a_refused_replacement_keeps_the_old_head_serving(ckpt_dir, tmp_path, tiny_encoder_dir):
    h = head(ckpt_dir)
    h.reconfigure(None)  # default: the served checkpoint
    other = make_checkpoint(tmp_path / "other", tiny_encoder_dir, perturb_encoder=True)
    h.reconfigure({"checkpoint": str(other)})
    assert h.part.checkpoint == str(ckpt_dir)
    assert "different shared encoder weights" in h.refused
    with pytest.raises(ValueError, match="unknown keys \\['path'\\]"):
        h.reconfigure({"path": "x"})


def test_a_replica_without_a_head_fails_loudly(tampered_copy, ckpt_dir):
    h = head(ckpt_dir)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        h.reconfigure({"checkpoint": str(tampered_copy)})
