"""Per-task evaluation metrics (scikit-learn / scipy), the aggregate score and baseline tables.

Metrics by task type (the names a task's ``metrics:`` list may use):

| task type | metrics |
|---|---|
| ``classification``, ``pair_classification`` | ``accuracy``, ``macro_f1``, ``mcc`` |
| ``regression`` | ``pearson``, ``spearman``, ``mse`` |
| ``contrastive`` | none (unsupervised: no labels to score) |

Every value is a Python ``float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error

from mtl_ray.errors import ConfigError, DataError

# --------------------------------------------------------------------------- metric functions
# Each takes (predictions, labels, num_labels): class indices (int) or floats, both shape (N,).


def _accuracy(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    return float(accuracy_score(gold, pred))


def _macro_f1(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    # labels=range(num_labels): a class absent from both predictions and labels still counts (as 0),
    # so the score is comparable across evaluation slices with different class coverage.
    return float(f1_score(gold, pred, average="macro", labels=list(range(num_labels)), zero_division=0))


def _mcc(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    return float(matthews_corrcoef(gold, pred))


def _is_constant(x: np.ndarray) -> bool:
    return x.size < 2 or bool(np.all(x == x[0]))


def _pearson(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    # A correlation is undefined (scipy: NaN + a warning) when either side is constant, e.g. a
    # collapsed regressor or the mean baseline. We report 0.0 — "no linear relationship" — so that
    # aggregates and checkpoint ranking stay finite and a constant predictor never beats a real one.
    if _is_constant(pred) or _is_constant(gold):
        return 0.0
    return float(stats.pearsonr(pred, gold).statistic)


def _spearman(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    if _is_constant(pred) or _is_constant(gold):  # same NaN-safety rule as pearson
        return 0.0
    return float(stats.spearmanr(pred, gold).statistic)


def _mse(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    return float(mean_squared_error(gold, pred))


MetricFn = Callable[[np.ndarray, np.ndarray, int], float]
_CLASSIFICATION: dict[str, MetricFn] = {"accuracy": _accuracy, "macro_f1": _macro_f1, "mcc": _mcc}
_REGRESSION: dict[str, MetricFn] = {"pearson": _pearson, "spearman": _spearman, "mse": _mse}

METRICS: dict[str, dict[str, MetricFn]] = {
    "classification": _CLASSIFICATION,
    "pair_classification": _CLASSIFICATION,
    "regression": _REGRESSION,
    "contrastive": {},
}

# The metric that stands for a task in the aggregate score. Accuracy lies in [0, 1] and Pearson in
# [-1, 1] (in practice [0, 1] for a useful model): comparable scales where higher is better, so an
# average of them is meaningful, unlike one that mixes in an unbounded, lower-is-better MSE.
PRIMARY_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "pair_classification": "accuracy",
    "regression": "pearson",
}


def _check_metric_names(task_type: str, metric_names: Sequence[str]) -> dict[str, MetricFn]:
    if task_type not in METRICS:
        raise ConfigError(f"metrics: unknown task type {task_type!r}; valid: {', '.join(METRICS)}")
    available = METRICS[task_type]
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
    pred = np.asarray(predictions)
    gold = np.asarray(labels)
    regression = task_type == "regression"
    if regression:
        pred = pred[:, 0] if pred.ndim == 2 and pred.shape[1] == 1 else pred  # (N, 1) head output
        gold = gold[:, 0] if gold.ndim == 2 and gold.shape[1] == 1 else gold
        pred, gold = pred.astype(np.float64), gold.astype(np.float64)
    elif pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.ndim != 1 or gold.ndim != 1 or len(pred) != len(gold):
        raise DataError(f"metrics: predictions {pred.shape} and labels {gold.shape} must be two (N,) arrays")
    if len(gold) == 0:
        raise DataError("metrics: no examples to score (empty evaluation split?)")
    if not regression:
        pred, gold = pred.astype(np.int64), gold.astype(np.int64)
        if num_labels is None:
            num_labels = int(max(pred.max(), gold.max())) + 1
    return {name: available[name](pred, gold, num_labels or 0) for name in metric_names}


def aggregate_score(
    per_task: Mapping[str, Mapping[str, float]],
    task_types: Mapping[str, str],
    weights: Mapping[str, float] | None = None,
) -> float:
    """Weighted mean over supervised tasks of their :data:`PRIMARY_METRIC` (the model-selection score).

    Tasks whose type has no primary metric (the unsupervised ``contrastive`` task) are left out.
    ``weights`` (task -> weight, default 1 each) need not sum to 1. Returns NaN when no supervised
    task was scored. The primary metric must be among each supervised task's computed metrics.
    """
    total, norm = 0.0, 0.0
    for task in per_task:
        if task not in task_types:
            raise ConfigError(f"aggregate score: task {task!r} has no type in task_types")
        primary = PRIMARY_METRIC.get(task_types[task])
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
    if task_type == "regression":
        pred = np.full(len(gold), float(np.mean(train.astype(np.float64))))
    else:
        majority = int(np.bincount(train.astype(np.int64)).argmax())
        pred = np.full(len(gold), majority, dtype=np.int64)
        if num_labels is None:
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
