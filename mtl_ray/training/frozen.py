"""Training on a frozen shared trunk: ``model.init_from`` + ``train.freeze_shared``.

    embeddings -> layers 1..k   frozen: weights from ``model.init_from`` (or the pretrained encoder),
                                requires_grad False, not in the optimizer, always in eval mode
               -> task layers k+1..L + head   trained (from ``model.init_from`` where it has them, else
                                              cloned from the pretrained encoder: training/init_from.py)

The shared weights stay bit-identical to the checkpoint they came from, so Serve's shared-weight
fingerprint check accepts a head trained this way next to the encoder it was trained against. This is
one mechanism with several users: ``mtl-ray add-task`` (a new task on a live model), Ray Tune trials
searching a new task's tower, stage-2 per-task tops.

Because the trunk is frozen and deterministic (eval mode: no dropout), its output for an example never
changes: :class:`~mtl_ray.training.trunk_cache.TaskTrunkCache` computes it once per training example,
so every epoch after the first runs only the towers (``train.trunk_cache``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl_ray.config import Config
from mtl_ray.errors import ConfigError
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import get_task_type
from mtl_ray.training.trunk_cache import TaskTrunkCache, token_key


def trainable_parameter_count(model: MultiTaskModel, task: str) -> int:
    return sum(p.numel() for m in (model.task_layers[task], model.heads[task]) for p in m.parameters())


class FrozenTrunk:
    """Freezes ``model.shared`` and computes task losses from its (cached) outputs.

    ``loss(task, batch)`` equals ``model.loss(task, batch)`` with the trunk in eval mode.
    """

    def __init__(self, model: MultiTaskModel, caches: dict[str, TaskTrunkCache] | None = None) -> None:
        self.model = model
        self.caches = caches or {}
        self.hard_shared = model.sharing_depth == model.num_layers
        for p in model.shared.parameters():
            p.requires_grad_(False)

    @classmethod
    def for_training(cls, cfg: Config, model: MultiTaskModel, data: dict[str, Any]) -> FrozenTrunk:
        """Freeze the trunk; one cache per trained in-memory task unless ``train.trunk_cache`` is off.
        ``data``: ``{task: TaskData}`` as the trainer holds it."""
        for task in sorted(data):
            if getattr(get_task_type(model.specs[task].type), "model_loss", None) is not None:
                raise ConfigError(
                    f"tasks.{task}: a {model.specs[task].type} task trains the shared encoder on its own inputs "
                    "(its loss runs the whole model), which train.freeze_shared freezes; drop one of the two"
                )
            if trainable_parameter_count(model, task) == 0:
                spec = model.specs[task]
                raise ConfigError(
                    f"tasks.{task}: a {spec.type} task at sharing depth k = L ({model.num_layers}) has no weights of its "
                    f"own (its head is the identity over the pooled vector), so on a frozen trunk there is nothing to "
                    "train; use a base model with k < L or drop train.freeze_shared"
                )
        caches = {}
        if cfg.train.trunk_cache != "off":
            for task, d in sorted(data.items()):
                if d.size("train") == 0:
                    continue
                split = d.splits["train"]
                types = split["token_type_ids"] if "token_type_ids" in split.column_names else None
                keys = (
                    token_key(ids, types[i] if types is not None else None) for i, ids in enumerate(split["input_ids"])
                )
                caches[task] = TaskTrunkCache(keys, model.hidden_size, cls._pools(model), cfg.train.trunk_cache)
        return cls(model, caches)

    @staticmethod
    def _pools(model: MultiTaskModel) -> bool:
        return model.sharing_depth == model.num_layers

    def trunk(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """Frozen trunk, eval mode, no grad: pooled (B, H) when k = L, else hidden states (B, T, H)."""
        self.model.shared.eval()
        with torch.no_grad():
            hidden = self.model.encode_shared(input_ids, attention_mask, token_type_ids)  # (B, T, H)
            return self.model.pool(hidden, attention_mask) if self.hard_shared else hidden

    def loss(self, task: str, batch: dict[str, Tensor]) -> Tensor:
        """Scalar training loss of one task's batch: the type's batch hook, trunk (cached), tower, loss."""
        spec = self.model.specs[task]
        ttype = get_task_type(spec.type)
        batch = ttype.train_batch(batch)
        mask = batch["attention_mask"]
        cache = self.caches.get(task)
        if cache is not None:
            trunk_out = cache.lookup(batch, self.trunk)
        else:
            trunk_out = self.trunk(batch["input_ids"], mask, batch.get("token_type_ids"))
        if self.hard_shared:
            output = self.model.head(task, trunk_out)  # trunk_out: pooled (B, H)
        else:
            output = self.model.head(task, self.model.pool(self.model.task_hidden(task, trunk_out, mask), mask))
        return ttype.loss(output, batch, spec)

    def close(self) -> None:
        for cache in self.caches.values():
            cache.close()
