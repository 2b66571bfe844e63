"""The unsupervised objective: unsupervised SimCSE (Gao, Yao & Chen 2021, "SimCSE: Simple
Contrastive Learning of Sentence Embeddings").

Each sentence is encoded twice with different dropout masks; the two views of a sentence are a
positive pair, the other sentences of the batch are negatives, and the loss is InfoNCE over cosine
similarities divided by a temperature τ (model.contrastive_temperature, 0.05 as in the paper):

    ℓ_i = -log( exp(cos(z_i, z'_i)/τ) / Σ_j exp(cos(z_i, z'_j)/τ) )

``train_batch`` concatenates the batch with itself (B -> 2B rows), so both views come from ONE
forward pass: one autograd graph, and under data parallelism one gradient all-reduce per step.

SimCSE adds no parameters and trains exactly the pooled vector every other task reads, but the
default encoder, all-MiniLM-L6-v2, was trained contrastively (sentence-transformers), so on it this
loss is ≈ 0 from the first steps; ``mtl_ray/tasks/mlm.py`` (masked-language modelling, decoder tied to
the input embeddings) is the unsupervised objective that still teaches it something.

The head is the identity over the pooled vector (Gao et al. also report it works without the MLP
used in their training-time pooler). No supervised metrics: contrastive tasks have
``primary_metric=None`` and stay out of the aggregate score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_ray.tasks.base import TaskSpec, register_task_type
from mtl_ray.tasks.metric_fns import MetricFn

DEFAULT_TEMPERATURE = 0.05  # Gao et al. 2021; model.contrastive_temperature defaults to it


def info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE of (B, H) views ``z1`` against ``z2``: row i's positive is z2[i]."""
    sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temperature  # (B, B)
    targets = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(sim, targets)


@dataclass(frozen=True)
class ContrastiveType:
    name: str = "contrastive"
    is_pair: bool = False
    supervised: bool = False
    uses_temperature: bool = True
    has_classes: bool = False
    label_kind: str | None = None
    default_metrics: tuple[str, ...] = ()
    valid_metrics: tuple[str, ...] = ()
    primary_metric: str | None = None

    @property
    def metric_fns(self) -> Mapping[str, MetricFn]:
        return {}  # no labels to score

    def metric_arrays(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("a contrastive task has no labels to score")

    def baseline_prediction(self, train_labels: np.ndarray, n: int) -> np.ndarray:
        raise ValueError("a contrastive task has no labels to predict")

    def build_head(self, hidden_size: int, spec: TaskSpec, dropout: float) -> nn.Module:
        return nn.Identity()  # the pooled vector is the embedding; no parameters

    def train_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rows [x_1..x_B, x_1..x_B]: dropout makes the two copies two views in one forward."""
        n = batch["input_ids"].shape[0]
        return {
            k: torch.cat([v, v], dim=0) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v
            for k, v in batch.items()
        }

    def loss(self, output: Tensor, batch: dict[str, Tensor], spec: TaskSpec) -> Tensor:
        # output: (2B, H) pooled embeddings of the duplicated batch
        if output.shape[0] % 2:
            raise ValueError(f"contrastive loss needs the duplicated batch (even rows), got {output.shape[0]} rows")
        z = output.float()
        b = z.shape[0] // 2
        tau = spec.temperature if spec.temperature is not None else DEFAULT_TEMPERATURE
        return info_nce(z[:b], z[b:], tau)

    def postprocess(self, output: Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
        # L2-normalised, so a dot product of two embeddings is the cosine the objective trained
        z = F.normalize(output.detach().float(), dim=-1).cpu()
        return [{"embedding": row} for row in z.tolist()]

    def metric_inputs(self, output: Tensor) -> Tensor:
        return output  # (B, H); no supervised metrics are defined for this type


CONTRASTIVE = register_task_type(ContrastiveType())
