"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

The paper compares epoch-mean losses; we compare windows of ``train.dwa_window`` optimizer steps
(an "epoch" of a step-based loop). With ``L̄_t(k)`` the mean loss of task t over window k:

    r_t(k)   = L̄_t(k − 1) / L̄_t(k − 2)                 (how fast task t's loss is falling)
    λ_t(k)   = N · exp(r_t(k) / T) / Σ_i exp(r_i(k) / T)   (T = train.dwa_temperature, N tasks)
    L        = Σ_t  w_t · λ_t · L_t

so a task whose loss falls slowly gets a larger weight; Σ_t λ_t = N. λ = 1 for the first two
windows (no ratio yet). A task that was not trained in one of the two previous windows (the sampler
skipped it) gets r_t = 1, as does one whose earlier mean is not positive. ``w_t`` is the static
``loss_weight`` from the config; it multiplies λ_t.

Windows are counted by :meth:`DynamicWeightAverage.update` calls (one per optimizer step), so it
does not matter whether the caller numbers steps from 0 or 1. Non-finite losses are ignored (they
would poison the averages and cannot be stored as JSON); the loop is expected to stop on them anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mtl_ray.config import TrainConfig
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.training.weighting.base import LossWeighting


class DynamicWeightAverage(LossWeighting):
    """DWA; the weights change only at window boundaries."""

    name = "dwa"

    def __init__(self, static_weights: Mapping[str, float], window: int = 50, temperature: float = 2.0) -> None:
        super().__init__(static_weights)
        if window < 1:
            raise ConfigError(f"train.dwa_window: must be >= 1, got {window}")
        if temperature <= 0:
            raise ConfigError(f"train.dwa_temperature: must be > 0, got {temperature}")
        self.window = int(window)
        self.temperature = float(temperature)
        self._lambdas: dict[str, float] = {t: 1.0 for t in self.task_names}
        self._sums: dict[str, float] = {}  # task -> sum of losses in the current window
        self._counts: dict[str, int] = {}  # task -> steps with a loss in the current window
        self._steps_in_window = 0
        self._history: list[dict[str, float]] = []  # window means, last two windows, oldest first
        self._windows_done = 0

    @classmethod
    def from_config(cls, static_weights: Mapping[str, float], cfg: TrainConfig) -> DynamicWeightAverage:
        return cls(static_weights, window=cfg.dwa_window, temperature=cfg.dwa_temperature)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        self._check_tasks(losses)
        terms = [self.static_weights[t] * self._lambdas[t] * losses[t] for t in sorted(losses)]
        return sum(terms[1:], terms[0])

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        if losses:
            self._check_tasks(losses)
        for task in sorted(losses):
            value = float(losses[task])
            if math.isfinite(value):
                self._sums[task] = self._sums.get(task, 0.0) + value
                self._counts[task] = self._counts.get(task, 0) + 1
        self._steps_in_window += 1
        if self._steps_in_window >= self.window:
            self._close_window()

    def _close_window(self) -> None:
        means = {t: self._sums[t] / self._counts[t] for t in sorted(self._sums) if self._counts.get(t)}
        self._history = [*self._history, means][-2:]
        self._sums, self._counts, self._steps_in_window = {}, {}, 0
        self._windows_done += 1
        if len(self._history) == 2:
            self._lambdas = self._dwa_lambdas(*self._history)

    def _dwa_lambdas(self, older: Mapping[str, float], newer: Mapping[str, float]) -> dict[str, float]:
        ratios = {}
        for task in self.task_names:
            before, after = older.get(task), newer.get(task)
            ok = before is not None and after is not None and before > 0
            ratios[task] = after / before if ok else 1.0
        # softmax of r/T, shifted by its max for stability, times N
        top = max(ratios.values())
        exps = {t: math.exp((r - top) / self.temperature) for t, r in ratios.items()}
        total = sum(exps.values())
        return {t: len(self.task_names) * e / total for t, e in exps.items()}

    def weights(self) -> dict[str, float]:
        return {t: self.static_weights[t] * self._lambdas[t] for t in self.task_names}

    def extra_state(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "tasks": list(self.task_names),
            "lambdas": dict(self._lambdas),
            "sums": dict(self._sums),
            "counts": dict(self._counts),
            "steps_in_window": self._steps_in_window,
            "history": [dict(h) for h in self._history],
            "windows_done": self._windows_done,
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if list(state.get("tasks", self.task_names)) != self.task_names:
            raise CheckpointError(f"DWA state: saved for tasks {state.get('tasks')}, this run has {self.task_names}")
        self._lambdas = {t: float(state["lambdas"][t]) for t in self.task_names}
        self._sums = {t: float(v) for t, v in state["sums"].items()}
        self._counts = {t: int(v) for t, v in state["counts"].items()}
        self._steps_in_window = int(state["steps_in_window"])
        self._history = [{t: float(v) for t, v in h.items()} for h in state["history"]]
        self._windows_done = int(state["windows_done"])
