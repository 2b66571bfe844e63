"""Regression on one text: dropout + Linear(H, 1) -> (B,), mean squared error.

Primary metric: Pearson r (the STS-B convention); higher is better, unlike MSE, so it can enter
the aggregate score directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mtl_ray.tasks.base import LABELS, TaskSpec, register_task_type
from mtl_ray.tasks.heads import LinearHead


@dataclass(frozen=True)
class RegressionType:
    name: str = "regression"
    is_pair: bool = False
    supervised: bool = True
    uses_temperature: bool = False
    has_classes: bool = False
    default_metrics: tuple[str, ...] = ("pearson", "spearman", "mse")
    valid_metrics: tuple[str, ...] = ("pearson", "spearman", "mse")
    primary_metric: str | None = "pearson"

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
