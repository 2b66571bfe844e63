"""Static weighting: ``L = Σ_t w_t · L_t`` with the fixed per-task ``loss_weight`` from the config."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mtl_ray.training.weighting.base import LossWeighting


class StaticWeighting(LossWeighting):
    """Fixed weights; with all weights 1 this is the plain sum of task losses."""

    name = "static"

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        self._check_tasks(losses)
        terms = [self.static_weights[t] * losses[t] for t in sorted(losses)]
        return sum(terms[1:], terms[0])

    def weights(self) -> dict[str, float]:
        return dict(self.static_weights)
