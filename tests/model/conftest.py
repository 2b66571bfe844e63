"""Fixtures for model tests: the tiny random BERT from mtl_ray.testing, its tokenizer, task specs, a batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from mtl_ray.tasks.base import TaskSpec
from mtl_ray.testing import make_tiny_encoder

TEXTS = ["the movie was good", "bad", "a great film with a happy actor", "news"]
PAIRS = ["good", "the plot", "sad", "sport and music"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="session")
def _tiny_encoder_pristine(tiny_dir: Path) -> PreTrainedModel:
    return AutoModel.from_pretrained(tiny_dir, add_pooling_layer=False)


@pytest.fixture
def tiny_encoder(_tiny_encoder_pristine: PreTrainedModel) -> PreTrainedModel:
    """A fresh copy per test: MultiTaskModel takes (not copies) the encoder's shared modules."""
    return copy.deepcopy(_tiny_encoder_pristine).eval()


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def specs() -> dict[str, TaskSpec]:
    """One task of every type (insertion order is the model's task order)."""
    return {
        "topic": TaskSpec("topic", "classification", ("business", "sport", "tech"), ("accuracy",)),
        "match": TaskSpec("match", "pair_classification", ("no", "yes"), ("accuracy", "mcc")),
        "valence": TaskSpec("valence", "regression", None, ("pearson",)),
        "simcse": TaskSpec("simcse", "contrastive", None, ()),
    }


@pytest.fixture
def batch(tokenizer) -> dict[str, torch.Tensor]:
    """Text pairs with padding (rows of different lengths) and segment ids."""
    enc = tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # the padding path is exercised
    return dict(enc)
