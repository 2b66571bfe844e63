"""Regression on one text: dropout + Linear(H, 1) -> (B,), mean squared error.

Primary metric: Pearson r (the STS-B convention); higher is better, unlike MSE, so it can enter
the aggregate score directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_ray.tasks.base import LABELS, TaskSpec, register_task_type
from mtl_ray.tasks.heads import LinearHead
from mtl_ray.tasks.metric_fns import REGRESSION_METRICS, MetricFn


@dataclass(frozen=True)
class RegressionType:
    name: str = "regression"
    is_pair: bool = False
    supervised: bool = True
    uses_temperature: bool = False
    has_classes: bool = False
    label_kind: str | None = "value"
    default_metrics: tuple[str, ...] = ("pearson", "spearman", "mse")
    primary_metric: str | None = "pearson"

    @property
    def metric_fns(self) -> Mapping[str, MetricFn]:
        return REGRESSION_METRICS

    @property
    def valid_metrics(self) -> tuple[str, ...]:
        return tuple(REGRESSION_METRICS)

    def metric_arrays(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def flat(x: np.ndarray) -> np.ndarray:
            return x[:, 0] if x.ndim == 2 and x.shape[1] == 1 else x  # a (N, 1) head output

        return flat(predictions).astype(np.float64), flat(labels).astype(np.float64)

    def baseline_prediction(self, train_labels: np.ndarray, n: int) -> np.ndarray:
        return np.full(n, float(np.mean(train_labels.astype(np.float64))))  # the train mean

    def build_head(self, hidden_size: int, spec: TaskSpec, dropout: float) -> nn.Module:
        return LinearHead(hidden_size, 1, dropout, squeeze=True)

    def train_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def loss(self, output: Tensor, batch: dict[str, Tensor], spec: TaskSpec) -> Tensor:
        # output: (B,) predictions; labels: (B,) float targets in the data's own units
        return F.mse_loss(output.float(), batch[LABELS].float())

    def postprocess(self, output: Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
        return [{"value": v} for v in output.detach().float().reshape(-1).cpu().tolist()]

    def metric_inputs(self, output: Tensor) -> Tensor:
        return output.reshape(-1)  # (B,) values


REGRESSION = register_task_type(RegressionType())
