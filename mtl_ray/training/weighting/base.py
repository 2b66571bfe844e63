"""The loss-weighting interface: how the per-task losses of a micro-batch become one scalar.

A weighting is an ``nn.Module`` so that learnable weights (uncertainty weighting's log-variances)
are ordinary parameters: :func:`mtl_ray.training.optim.build_optimizer` puts them in the optimizer
and their values travel in ``state_dict()``. Non-parameter state (DWA's loss histories) is plain
JSON via :meth:`LossWeighting.extra_state` / :meth:`LossWeighting.load_extra_state`; we do not use
``nn.Module.get_extra_state`` because that would put a non-tensor into ``state_dict()``.

The training loop calls, for every micro-batch, ``total = weighting.combine({task: loss})`` (one
task per micro-batch here, but any subset of the tasks is accepted) and, after every optimizer
step, ``weighting.update(step, {task: mean_loss})`` with that step's detached losses, already
averaged across data-parallel ranks. It never branches on which weighting it holds.

Adding a method (PCGrad, GradNorm, FAMO, ...): one file with a subclass and one line in
``WEIGHTINGS`` in ``__init__.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from mtl_ray.config import TrainConfig
from mtl_ray.errors import ConfigError


class LossWeighting(nn.Module):
    """Combines per-task losses; subclasses implement :meth:`combine` (and maybe :meth:`update`).

    ``static_weights`` (task -> the config's ``loss_weight``) fixes the task set: tasks are the
    sorted keys. Every method multiplies its own weights by these static weights.
    """

    name = ""

    def __init__(self, static_weights: Mapping[str, float]) -> None:
        super().__init__()
        if not static_weights:
            raise ConfigError("loss weighting: no tasks (static_weights is empty)")
        self.task_names: list[str] = sorted(static_weights)
        self.static_weights: dict[str, float] = {t: float(static_weights[t]) for t in self.task_names}
        for task, w in self.static_weights.items():
            if not math.isfinite(w) or w < 0:
                raise ConfigError(f"tasks.{task}.loss_weight: must be a finite number >= 0, got {w}")

    @classmethod
    def from_config(cls, static_weights: Mapping[str, float], cfg: TrainConfig) -> LossWeighting:
        """Build from the train config; override when the method has settings there."""
        return cls(static_weights)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Weighted total (a 0-d tensor) of the tasks present in ``losses`` (task -> 0-d loss)."""
        raise NotImplementedError

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """Called after every optimizer step with its detached, rank-averaged per-task losses."""

    def weights(self) -> dict[str, float]:
        """Current effective weight of every task (for logs and metrics)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """JSON-safe non-parameter state (parameters go through ``state_dict()``)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def _check_tasks(self, losses: Mapping[str, Any]) -> None:
        if not losses:
            raise ValueError(f"{type(self).__name__}: no task losses given")
        unknown = sorted(set(losses) - set(self.static_weights))
        if unknown:
            raise KeyError(f"{type(self).__name__}: unknown task(s) {unknown}; known: {self.task_names}")
