"""Per-task evaluation metrics, the aggregate score and baseline tables.

Which metrics a task has, which one is primary and what the trivial baseline predicts all belong to
its task type (``mtl_ray.tasks``: ``metric_fns``, ``primary_metric``, ``baseline_prediction``); this
module only applies them, so a new task type needs no edit here. Built-in types:

| task type | metrics |
|---|---|
| ``classification``, ``pair_classification`` | ``accuracy``, ``macro_f1``, ``mcc`` |
| ``regression`` | ``pearson``, ``spearman``, ``mse`` |
| ``contrastive`` | none (unsupervised: no labels to score) |

Every value is a Python ``float``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mtl_ray.errors import ConfigError, DataError
from mtl_ray.tasks.base import TASK_TYPES, TaskType
from mtl_ray.tasks.metric_fns import MetricFn


def _task_type(task_type: str) -> TaskType:
    if task_type not in TASK_TYPES:
        raise ConfigError(f"metrics: unknown task type {task_type!r}; valid: {', '.join(sorted(TASK_TYPES))}")
    return TASK_TYPES[task_type]


def primary_metric(task_type: str) -> str | None:
    """The metric that stands for a task of this type in the aggregate score (None: not scored)."""
    return _task_type(task_type).primary_metric


def _check_metric_names(task_type: str, metric_names: Sequence[str]) -> dict[str, MetricFn]:
    available = _task_type(task_type).metric_fns
    for name in metric_names:
        if name not in available:
            valid = ", ".join(available) or "none (the task has no labels)"
            raise ConfigError(f"metrics: unknown metric {name!r} for a {task_type} task; valid: {valid}")
    return available


def compute_metrics(
    task_type: str,
    metric_names: Sequence[str],
    predictions: np.ndarray,
    labels: np.ndarray,
    num_labels: int | None = None,
) -> dict[str, float]:
    """Score ``predictions`` against ``labels``: metric name -> value, in ``metric_names`` order.

    Classification: ``predictions`` are class indices (N,) or scores/logits (N, C), which are
    argmax-ed; ``labels`` are class indices (N,). ``num_labels`` defaults to
    ``max(labels, predictions) + 1`` (pass the task's real class count so macro-F1 counts every class).
    Regression: ``predictions`` and ``labels`` are floats of shape (N,) (or (N, 1)).
    """
    available = _check_metric_names(task_type, metric_names)
    if not metric_names:
        return {}
    ttype = _task_type(task_type)
    pred, gold = ttype.metric_arrays(np.asarray(predictions), np.asarray(labels))
    if pred.ndim != 1 or gold.ndim != 1 or len(pred) != len(gold):
        raise DataError(f"metrics: predictions {pred.shape} and labels {gold.shape} must be two (N,) arrays")
    if len(gold) == 0:
        raise DataError("metrics: no examples to score (empty evaluation split?)")
    if ttype.has_classes and num_labels is None:
        num_labels = int(max(pred.max(), gold.max())) + 1
    return {name: available[name](pred, gold, num_labels or 0) for name in metric_names}


def aggregate_score(
    per_task: Mapping[str, Mapping[str, float]],
    task_types: Mapping[str, str],
    weights: Mapping[str, float] | None = None,
) -> float:
    """Weighted mean over supervised tasks of their type's ``primary_metric`` (the model-selection score).

    Tasks whose type has no primary metric (the unsupervised ``contrastive`` task) are left out.
    ``weights`` (task -> weight, default 1 each) need not sum to 1. Returns NaN when no supervised
    task was scored. The primary metric must be among each supervised task's computed metrics.
    """
    total, norm = 0.0, 0.0
    for task in per_task:
        if task not in task_types:
            raise ConfigError(f"aggregate score: task {task!r} has no type in task_types")
        primary = primary_metric(task_types[task])
        if primary is None:
            continue
        if primary not in per_task[task]:
            raise ConfigError(
                f"tasks.{task}.metrics: the aggregate score needs {primary!r} for a {task_types[task]} task; "
                f"computed only {sorted(per_task[task])}"
            )
        w = 1.0 if weights is None else float(weights.get(task, 0.0))
        if w < 0:
            raise ConfigError(f"aggregate score: weight of {task!r} must be >= 0, got {w}")
        total += w * float(per_task[task][primary])
        norm += w
    if norm == 0:
        return math.nan
    return total / norm


def majority_baseline(
    task_type: str,
    train_labels: np.ndarray,
    eval_labels: np.ndarray,
    metric_names: Sequence[str],
    num_labels: int | None = None,
) -> dict[str, float]:
    """Metrics of the trivial predictor: the most frequent train class (ties: the lowest index) or,
    for regression, the train mean — the row any trained model has to beat."""
    _check_metric_names(task_type, metric_names)
    train = np.asarray(train_labels)
    gold = np.asarray(eval_labels)
    if len(train) == 0:
        raise DataError("majority baseline: the train split has no labels")
    ttype = _task_type(task_type)
    pred = ttype.baseline_prediction(train, len(gold))
    if ttype.has_classes and num_labels is None:
        num_labels = int(max(train.max(), gold.max())) + 1
    return compute_metrics(task_type, metric_names, pred, gold, num_labels)


def format_table(
    per_task: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """Fixed-width text table: one row per task (plus a ``  baseline`` row under it when given),
    one column per metric (first-seen order), 4 decimals, ``-`` where a task lacks the metric."""
    columns: list[str] = []
    for metrics in [*per_task.values(), *(baseline or {}).values()]:
        columns += [m for m in metrics if m not in columns]
    rows: list[tuple[str, Mapping[str, float]]] = []
    for task, metrics in per_task.items():
        rows.append((task, metrics))
        if baseline and task in baseline:
            rows.append(("  baseline", baseline[task]))

    def cell(metrics: Mapping[str, float], col: str) -> str:
        return f"{float(metrics[col]):.4f}" if col in metrics else "-"

    first = max([len("task"), *(len(name) for name, _ in rows)])
    widths = [max(len(col), 7, *(len(cell(m, col)) for _, m in rows)) for col in columns]
    lines = ["  ".join(["task".ljust(first), *(c.rjust(w) for c, w in zip(columns, widths))])]
    lines.append("-" * len(lines[0]))
    for name, metrics in rows:
        lines.append("  ".join([name.ljust(first), *(cell(metrics, c).rjust(w) for c, w in zip(columns, widths))]))
    return "\n".join(lines)
