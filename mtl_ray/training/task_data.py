"""One task's resolved spec and tokenized splits: what the loop, evaluation and baselines read."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from mtl_ray.tasks.base import TaskSpec


@dataclass
class TaskData:
    """One task's resolved spec and tokenized splits (columns input_ids, attention_mask, token_type_ids[, labels])."""

    spec: TaskSpec
    splits: dict[str, datasets.Dataset]

    def size(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0
