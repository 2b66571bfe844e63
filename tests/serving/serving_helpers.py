"""Helpers for serving tests: tiny checkpoints written straight from a MultiTaskModel (no data
pipeline), an in-process gateway, and a tolerance comparison with the Predictor's output.

Tasks: ``sentiment`` (classification), ``score`` (regression), ``match`` (pair classification) and
``unsup`` (contrastive: an embedding, returned only when asked for by name).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from mtl_ray.config import config_from_dict
from mtl_ray.model.encoder import load_encoder
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.serving.gateway import Gateway, LocalBackend
from mtl_ray.serving.lean_head import LeanHead
from mtl_ray.serving.parts import EncoderPart, HeadPart, read_checkpoint_info
from mtl_ray.serving.text_tokenizer import CheckpointTokenizer
from mtl_ray.tasks.base import TaskSpec
from mtl_ray.training.checkpointing import save_training_checkpoint

TEXTS = [
    "the movie was good",
    "bad",
    "a great film with a happy actor and a boring plot that the team did not love",
    "news",
    "sport music tech",
]
PAIRS = [["good film", "great movie"], ["the plot", "sad song"], ["vote", "government election news today"]]

SPECS = {
    "sentiment": TaskSpec("sentiment", "classification", ("neg", "pos"), ("accuracy",), max_length=32),
    "score": TaskSpec("score", "regression", None, ("pearson",), max_length=32),
    "match": TaskSpec("match", "pair_classification", ("diff", "same"), ("accuracy",), max_length=48),
    "unsup": TaskSpec("unsup", "contrastive", None, (), max_length=32),
}


def make_checkpoint(
    path: Path,
    encoder_dir: Path,
    *,
    sharing_depth: int | None = None,
    head_seed: int = 0,
    specs: dict[str, TaskSpec] | None = None,
    perturb_encoder: bool = False,
) -> Path:
    """A checkpoint of the tiny encoder (its own weights, so every checkpoint shares them unless
    ``perturb_encoder``) with heads initialised from ``head_seed``."""
    specs = specs or SPECS
    encoder, tokenizer = load_encoder(str(encoder_dir))
    torch.manual_seed(head_seed)
    model = MultiTaskModel(encoder, specs, sharing_depth=sharing_depth)
    with torch.no_grad():
        for p in model.heads.parameters():  # larger heads: probabilities far from 0.5, so labels differ
            p.mul_(8.0)
        if perturb_encoder:
            model.shared.embeddings.word_embeddings.weight.add_(0.01)
    tasks = {}
    for name, spec in specs.items():
        tasks[name] = {"type": spec.type, "source": "unused.csv", "max_length": spec.max_length}
        if spec.is_pair:
            tasks[name]["text_pair_field"] = "b"
    cfg = config_from_dict(
        {
            "tasks": tasks,
            "model": {"encoder": str(encoder_dir), "sharing_depth": sharing_depth},
            "train": {"output_dir": str(path.parent / "run")},
        }
    )
    return save_training_checkpoint(path, cfg, model.eval(), tokenizer, None)


def assert_predictions_close(got: dict, ref: dict, atol: float = 1e-5) -> None:
    """Same tasks in the same order, same labels, numbers within ``atol``."""
    assert list(got) == list(ref)
    for task in ref:
        assert len(got[task]) == len(ref[task]), task
        for a, b in zip(got[task], ref[task]):
            assert a.keys() == b.keys(), task
            for key, expected in b.items():
                if isinstance(expected, dict):
                    assert a[key].keys() == expected.keys()
                    assert a[key] == pytest.approx(expected, abs=atol), (task, key)
                elif isinstance(expected, (float, list)):
                    assert a[key] == pytest.approx(expected, abs=atol), (task, key)
                else:
                    assert a[key] == expected, (task, key)


def local_gateway(path, precision: str = "fp32", **kwargs) -> Gateway:
    """A Gateway over in-process parts (what the Serve app computes, without Ray): lean numpy heads
    when k = L, as the head replicas run them; torch heads when k < L."""
    info = read_checkpoint_info(path)
    encoder = EncoderPart.from_checkpoint(path, precision)
    if info.hard_shared:
        heads = {t: LeanHead.from_checkpoint(path, t) for t in info.specs}
    else:
        heads = {t: HeadPart.from_checkpoint(path, t, precision) for t in info.specs}
    tokenizer = CheckpointTokenizer.from_dir(info.tokenizer_dir)
    return Gateway(info.specs, tokenizer, LocalBackend(encoder, heads), **kwargs)


def hf_tokenizer(path) -> AutoTokenizer:
    """The checkpoint's tokenizer as the Predictor loads it (the reference the ingress must match)."""
    return AutoTokenizer.from_pretrained(str(read_checkpoint_info(path, verify=False).tokenizer_dir))
