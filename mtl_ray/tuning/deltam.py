"""Δm%: the standard multi-task summary against single-task baselines (Maninis et al. 2019; LibMTL).

    Δm% = 1/T · Σ_t (−1)^{l_t} · (M_mtl,t − M_single,t) / M_single,t · 100

over the T supervised tasks, with M the task's primary metric (accuracy, Pearson) on the validation
split and l_t = 1 when lower is better (MSE). The denominator is |M_single,t| (equal to M_single,t for the
usual positive metrics). Positive: the multi-task model beats training each task
alone on average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mtl_ray.tasks import TASK_TYPES

LOWER_IS_BETTER = frozenset({"mse"})


def primary_metrics(per_task: Mapping[str, Mapping[str, float]], task_types: Mapping[str, str]) -> dict[str, float]:
    """task -> its primary metric value, for the supervised tasks in ``per_task``."""
    out = {}
    for task, metrics in per_task.items():
        ttype = TASK_TYPES.get(task_types.get(task, ""))
        name = ttype.primary_metric if ttype is not None else None
        if name is not None and name in metrics:
            out[task] = float(metrics[name])
    return out


def delta_m(
    mtl: Mapping[str, float],
    single: Mapping[str, float],
    metric_names: Mapping[str, str] | None = None,
) -> float:
    """Δm% of one multi-task result. ``mtl`` / ``single``: task -> primary metric value;
    ``metric_names``: task -> metric name (for the sign; default: higher is better).
    Tasks missing a baseline are left out; NaN when no task has one, or a baseline is 0."""
    terms = []
    for task, value in mtl.items():
        if task not in single:
            continue
        base = float(single[task])
        if base == 0 or math.isnan(base) or math.isnan(float(value)):
            return math.nan
        sign = -1.0 if metric_names and metric_names.get(task) in LOWER_IS_BETTER else 1.0
        # |M_single|: a (rare) negative baseline correlation must not flip what "better" means
        terms.append(sign * (float(value) - base) / abs(base) * 100.0)
    return sum(terms) / len(terms) if terms else math.nan
