"""Single-text and text-pair classification: dropout + Linear(H, C), cross-entropy.

Both types share one implementation; they differ only in their inputs (``is_pair``).
The primary metric is accuracy: it is the headline number of the benchmarks these tasks mirror
(SST/RT sentiment, topic classification, MRPC-style pairs), defined for any number of classes and
comparable across the single-task baselines that Δm% needs. Macro-F1 and MCC are reported beside
it because several built-in tasks are imbalanced.
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
from mtl_ray.tasks.metric_fns import CLASSIFICATION_METRICS, MetricFn


@dataclass(frozen=True)
class ClassificationType:
    name: str
    is_pair: bool
    supervised: bool = True
    uses_temperature: bool = False
    has_classes: bool = True
    label_kind: str | None = "class"
    default_metrics: tuple[str, ...] = ("accuracy", "macro_f1", "mcc")
    primary_metric: str | None = "accuracy"

    @property
    def metric_fns(self) -> Mapping[str, MetricFn]:
        return CLASSIFICATION_METRICS

    @property
    def valid_metrics(self) -> tuple[str, ...]:
        return tuple(CLASSIFICATION_METRICS)

    def metric_arrays(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred = predictions.argmax(axis=1) if predictions.ndim == 2 else predictions  # logits (N, C) -> ids
        return pred.astype(np.int64), labels.astype(np.int64)

    def baseline_prediction(self, train_labels: np.ndarray, n: int) -> np.ndarray:
        # the most frequent train class; ties: the lowest index
        return np.full(n, int(np.bincount(train_labels.astype(np.int64)).argmax()), dtype=np.int64)

    def build_head(self, hidden_size: int, spec: TaskSpec, dropout: float) -> nn.Module:
        assert spec.label_names is not None  # TaskSpec validation guarantees >= 2 classes
        return LinearHead(hidden_size, len(spec.label_names), dropout)

    def train_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def loss(self, output: Tensor, batch: dict[str, Tensor], spec: TaskSpec) -> Tensor:
        # output: (B, C) logits; labels: (B,) int64 class ids. fp32 for a stable log-softmax under bf16.
        return F.cross_entropy(output.float(), batch[LABELS].long())

    def postprocess(self, output: Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
        assert spec.label_names is not None
        probs = output.detach().float().softmax(dim=-1).cpu()  # (B, C)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "label": spec.label_names[best],
                    "score": row[best],
                    "probabilities": dict(zip(spec.label_names, row)),
                }
            )
        return out

    def metric_inputs(self, output: Tensor) -> Tensor:
        return output.argmax(dim=-1)  # (B,) class ids


CLASSIFICATION = register_task_type(ClassificationType(name="classification", is_pair=False))
PAIR_CLASSIFICATION = register_task_type(ClassificationType(name="pair_classification", is_pair=True))
