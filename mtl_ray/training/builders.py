"""Builders: turn a :class:`~mtl_ray.config.Config` into tokenized task data and a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from mtl_ray.config import Config
from mtl_ray.data.sources import load_task_splits
from mtl_ray.data.tokenize import tokenize_split
from mtl_ray.model.encoder import load_encoder
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import TaskSpec

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    """One task's resolved spec and tokenized splits (columns input_ids, attention_mask, token_type_ids[, labels])."""

    spec: TaskSpec
    splits: dict[str, datasets.Dataset]

    def size(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0


def load_specs_and_splits(
    cfg: Config, preloaded: dict[str, tuple[datasets.DatasetDict, list[str] | None]] | None = None
) -> tuple[dict[str, TaskSpec], dict[str, datasets.DatasetDict]]:
    """Read every task's raw splits (built-in or user files) and resolve its spec. ``preloaded``:
    ``(splits, label_names)`` of tasks already read elsewhere (streamed tasks: eval splits only)."""
    specs: dict[str, TaskSpec] = {}
    raw: dict[str, datasets.DatasetDict] = {}
    for name in sorted(cfg.tasks):
        task = cfg.tasks[name]
        if preloaded is not None and name in preloaded:
            splits, label_names = preloaded[name]
        else:
            splits, label_names = load_task_splits(task, cfg.data)
        specs[name] = TaskSpec.from_config(task, label_names)
        raw[name] = splits
    return specs, raw


def tokenize_tasks(
    specs: dict[str, TaskSpec], raw: dict[str, datasets.DatasetDict], tokenizer: Any
) -> dict[str, TaskData]:
    out = {}
    for name, spec in specs.items():
        splits = {
            split: tokenize_split(raw[name][split], tokenizer, spec.max_length, spec.is_pair)
            for split in SPLITS
            if split in raw[name] and len(raw[name][split]) > 0
        }
        out[name] = TaskData(spec=spec, splits=splits)
    return out


def build_model(cfg: Config, specs: dict[str, TaskSpec]) -> tuple[MultiTaskModel, Any]:
    """The pretrained encoder cut at ``model.sharing_depth``, with a head per task, and its tokenizer."""
    encoder, tokenizer = load_encoder(cfg.model.encoder, cfg.data.resolved_cache_dir())
    model = MultiTaskModel(
        encoder,
        specs,
        sharing_depth=cfg.model.sharing_depth,
        pooling=cfg.model.pooling,
        head_dropout=cfg.model.head_dropout,
        contrastive_temperature=cfg.model.contrastive_temperature,
    )
    if cfg.model.init_from:  # shared weights from a trained checkpoint (training/frozen.py)
        from mtl_ray.training.frozen import load_shared_from

        load_shared_from(model, cfg.model.init_from, cfg.model.pooling)
    return model, tokenizer
