"""Per-task loss scales (``train.loss_scaling``): put every task's loss on the same footing.

Task losses live on different scales: cross-entropy starts near ``ln C`` for C classes (0.69 for two,
1.61 for five), a mean-squared error near the variance of the labels (in the labels' own units), and
their sum is dominated by whichever happens to be large. ``"auto"`` divides each loss by its value
for an uninformed predictor, so that every task starts near 1. Aghajanyan et al. 2021 ("Muppet")
scale classification losses by 1 / ln(num_classes) for heterogeneous batches; the regression rule is
the same idea for a mean-squared error (the MSE of predicting the label mean is the label variance):

    class labels  (classification, pair_classification)   × 1 / ln(num_classes)
    value labels  (regression)                              × 1 / Var(train labels)   (population variance)
    no labels     (contrastive)                             × 1

The rule is read from the task type's ``label_kind`` (never from its name), so a new type gets a
scale with no edit here. The variance is computed once, from the task's in-memory train split (after
``max_train_examples``); a value-label task whose train split streams through Ray Data
(``ray.streaming``) has no labels in memory, and ``"auto"`` refuses it before training instead of
guessing a variance from the first batches.

The scales multiply the task loss before the loss weighting (``weighting.combine({t: s_t · L_t})``), in
both batch modes, and enter the loop's clipping rule as part of the task's weight (``training/loop.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mtl_ray.errors import ConfigError
from mtl_ray.tasks.base import TaskSpec, get_task_type


def loss_scales(
    mode: str, specs: Mapping[str, TaskSpec], train_labels: Callable[[str], Sequence[float] | None]
) -> dict[str, float]:
    """``{task: scale}`` for the trained tasks ``specs`` (sorted names).

    ``train_labels(task)``: the task's train-split labels, or None where they are not in memory
    (streamed); called only for value-label tasks under ``"auto"``.
    """
    if mode == "none":
        return {t: 1.0 for t in sorted(specs)}
    if mode != "auto":
        raise ConfigError(f"train.loss_scaling: unknown {mode!r}; valid: none, auto")
    scales: dict[str, float] = {}
    for task in sorted(specs):
        spec = specs[task]
        kind = get_task_type(spec.type).label_kind
        if kind == "class":
            scales[task] = 1.0 / math.log(len(spec.label_names or ()))  # >= 2 classes: TaskSpec checks it
        elif kind == "value":
            labels = train_labels(task)
            if labels is None:
                raise ConfigError(
                    f"train.loss_scaling: 'auto' divides the {spec.type} loss of task {task!r} by the variance of its "
                    "train labels, but its train split streams through Ray Data (ray.streaming) and is not in memory; "
                    "set train.loss_scaling=none or ray.streaming=false"
                )
            var = float(np.var(np.asarray(labels, dtype=np.float64)))
            if not math.isfinite(var) or var <= 0:
                raise ConfigError(
                    f"train.loss_scaling: 'auto' divides the {spec.type} loss of task {task!r} by the variance of its "
                    f"{len(labels)} train labels, which is {var} (all labels equal?); set train.loss_scaling=none"
                )
            scales[task] = 1.0 / var
        else:
            scales[task] = 1.0
    return scales


def describe(scales: Mapping[str, float]) -> str:
    """One log line: ``loss scales: match ×1.4427, score ×0.2500, ...``."""
    return "loss scales (train.loss_scaling): " + ", ".join(f"{t} ×{s:.4g}" for t, s in sorted(scales.items()))
