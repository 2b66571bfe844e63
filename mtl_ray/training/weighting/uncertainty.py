"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

Each task t has a learnable ``s_t = log σ_t²``, initialised to 0 (weight 1), and

    L = Σ_t  w_t · exp(−s_t) · L_t  +  s_t

over the tasks present in the micro-batch, where ``w_t`` is the static ``loss_weight`` from the
config: it scales the loss term only, not the regulariser ``s_t``, so ``w_t = 0`` switches a task's
loss off (its ``s_t`` then drifts down slowly, which is harmless).

This is the simplified form most implementations use (e.g. LibMTL's ``UW``). The paper derives
``1/(2σ²)·L + log σ`` for a Gaussian (regression) likelihood and ``1/σ²·L + log σ`` for a
softmax (classification) one; we apply the single form above to every task type, classification,
regression and contrastive alike, which differs from the paper's regression term by a constant
factor ½ on both parts (the same minimiser up to a reparameterisation of σ).

d L / d s_t = −w_t · exp(−s_t) · L_t + 1, so at equilibrium ``exp(s_t) = w_t · L_t``: a task with a
larger loss is down-weighted. Because each micro-batch trains one task, ``s_t`` only receives a
gradient when task t is sampled.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mtl_ray.training.weighting.base import LossWeighting


class UncertaintyWeighting(LossWeighting):
    """Learnable log-variances ``log_vars`` of shape (N,), one per task in sorted-name order."""

    name = "uncertainty"

    def __init__(self, static_weights: Mapping[str, float]) -> None:
        super().__init__(static_weights)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))  # (N,) s_t = log σ_t²
        self._index = {t: i for i, t in enumerate(self.task_names)}

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        self._check_tasks(losses)
        terms = []
        for task in sorted(losses):
            s = self.log_vars[self._index[task]]
            terms.append(self.static_weights[task] * torch.exp(-s) * losses[task] + s)
        return sum(terms[1:], terms[0])

    def weights(self) -> dict[str, float]:
        s = self.log_vars.detach().float().cpu()
        return {t: self.static_weights[t] * float(torch.exp(-s[i])) for t, i in self._index.items()}
