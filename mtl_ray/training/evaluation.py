"""Per-task evaluation of a model on tokenized splits (used by the trainer, `mtl-ray eval`, the study)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from mtl_ray.data.tokenize import collate
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import get_task_type
from mtl_ray.training import distributed as dist_utils
from mtl_ray.training.metrics import compute_metrics
from mtl_ray.training.task_data import TaskData


def rows(dataset: Any, indices: list[int]) -> list[dict[str, Any]]:
    """Rows of a tokenized HF dataset as a list of dicts (what ``collate`` takes)."""
    columns = dataset[indices]
    keys = list(columns)
    return [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]


@torch.no_grad()
def evaluate_model(
    model: MultiTaskModel,
    data: dict[str, TaskData],
    split: str,
    *,
    pad_token_id: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per supervised task on ``split``. Under torch.distributed each rank scores every
    world_size-th example and predictions are gathered, so metrics cover the whole split."""
    rank, world = dist_utils.rank_and_world()
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    for task in sorted(data):
        spec = data[task].spec
        if not spec.supervised or not spec.metrics or split not in data[task].splits:
            continue
        ttype = get_task_type(spec.type)
        ds = data[task].splits[split]
        mine = list(range(rank, len(ds), world))
        preds: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for start in range(0, len(mine), batch_size):
            batch = collate(rows(ds, mine[start : start + batch_size]), pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast if autocast is not None else contextlib.nullcontext():
                out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), tasks=[task])[
                    task
                ]
            preds.append(ttype.metric_inputs(out.float()).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
        empty = np.zeros(0)
        gathered = dist_utils.gather_objects(
            (np.concatenate(preds) if preds else empty, np.concatenate(labels) if labels else empty)
        )
        all_preds = np.concatenate([g[0] for g in gathered])
        all_labels = np.concatenate([g[1] for g in gathered])
        num_labels = len(spec.label_names) if spec.label_names else None
        results[task] = compute_metrics(spec.type, spec.metrics, all_preds, all_labels, num_labels)
    model.train(was_training)
    return results
