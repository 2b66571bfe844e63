"""Early stopping on the validation score, and the best evaluation's weights kept for the end of the run.

``train.early_stopping_patience = p``: training stops after p evaluations in a row that did not beat
the best score by more than ``train.early_stopping_min_delta``; the weights of the best evaluation
(the highest score, the one the checkpoints call best) are restored when :func:`fit` returns, so
test scoring and the returned model are the best, not the last. Two trackers, one interface:

- :class:`RunEarlyStopping` monitors the validation aggregate (a single task: its primary metric);
- :class:`PerTaskEarlyStopping` (``train.early_stopping_per_task``, stage 2 on a frozen trunk with
  k < L) monitors each task's primary metric: a stopped task leaves the task sampler
  (:class:`ActiveTaskSampler`), the run ends when every monitored task stopped, and each task's
  tower + head of ITS best evaluation is restored before the final evaluation, so the last checkpoint
  holds them. The towers are independent given the frozen trunk, so that combination scores each
  task's best. A task without a validation score (contrastive) is not monitored: it trains, and keeps
  its last weights, until the monitored tasks have stopped.

Rank agreement: the scores are broadcast from rank 0 before any decision, so every Ray Train worker
updates the same state and stops at the same step. Resume: the counters and the best weights (only
where they differ from the model's current weights) are part of the trainer's state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl_ray.config import Config
from mtl_ray.errors import ConfigError
from mtl_ray.model.multitask import HEADS_PREFIX, TASK_LAYERS_PREFIX, MultiTaskModel
from mtl_ray.tasks.base import get_task_type
from mtl_ray.training import distributed as dist_utils
from mtl_ray.training.samplers import TaskSampler
from mtl_ray.training.task_data import TaskData

MAX_REDRAWS = 100_000  # ActiveTaskSampler: draws before concluding the active tasks have no probability


class EarlyStopping:
    """Patience counter on one score (higher is better).

    ``update(step, score)`` records an evaluation and returns True once ``patience`` evaluations in a
    row failed to beat the best by more than ``min_delta``. ``best_step`` is the evaluation with the
    highest score (ties: the earlier one); NaN never improves.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ConfigError(f"train.early_stopping_patience: must be >= 1 (evaluations), got {patience}")
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.bad_evals = 0  # evaluations since the last improvement
        self.stopped_at: int | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def update(self, step: int, score: float) -> bool:
        if self.stopped:
            return True
        improved = score > self.best_score + self.min_delta  # False for NaN
        if score > self.best_score:
            self.best_score, self.best_step = float(score), int(step)
        self.bad_evals = 0 if improved else self.bad_evals + 1
        if self.bad_evals >= self.patience:
            self.stopped_at = int(step)
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score = float(state["best_score"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.bad_evals = int(state["bad_evals"])
        self.stopped_at = None if state["stopped_at"] is None else int(state["stopped_at"])


# --------------------------------------------------------------------------- weight snapshots


def snapshot(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """CPU copies of the state-dict entries whose key starts with one of ``prefixes``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k.startswith(prefixes)}


def load_snapshot(model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Copy ``weights`` into ``model``'s parameters / buffers in place (the optimizer keeps its tensors)."""
    state = model.state_dict()
    with torch.no_grad():
        for key, value in weights.items():
            state[key].copy_(value)


def differs(model: nn.Module, weights: Mapping[str, Tensor]) -> bool:
    state = model.state_dict()
    return any(not torch.equal(state[k].detach().cpu(), v) for k, v in weights.items())


# --------------------------------------------------------------------------- trackers


class RunEarlyStopping:
    """``train.early_stopping_patience`` on the validation aggregate; keeps the best weights in memory."""

    rewrites_final = False  # the best weights are an earlier checkpoint's: nothing new to write

    def __init__(self, patience: int, min_delta: float, prefixes: tuple[str, ...] = ("",)) -> None:
        self.es = EarlyStopping(patience, min_delta)
        self.prefixes = prefixes  # what to snapshot (a frozen trunk: only the towers and heads)
        self.best_weights: dict[str, Tensor] | None = None

    @property
    def finished(self) -> bool:
        return self.es.stopped

    def observe(
        self, step: int, per_task: Mapping[str, Mapping[str, float]], aggregate: float, model: nn.Module
    ) -> None:
        (score,) = dist_utils.broadcast_floats([aggregate], _device(model))
        self.es.update(step, score)
        if self.es.best_step == step:
            self.best_weights = snapshot(model, self.prefixes)

    def restore(self, model: nn.Module) -> None:
        if self.best_weights is not None:
            load_snapshot(model, self.best_weights)

    def summary(self) -> dict[str, Any]:
        return {"mode": "aggregate", "best_step": self.es.best_step, "stopped_at": self.es.stopped_at}

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        state: dict[str, Any] = {"mode": "aggregate", "es": self.es.state_dict()}
        if self.best_weights is not None and differs(model, self.best_weights):
            state["best_weights"] = self.best_weights  # else the checkpoint's own weights are the best
        return state

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        _check_mode(state, "aggregate")
        self.es.load_state_dict(state["es"])
        if "best_weights" in state:
            self.best_weights = {k: v.cpu() for k, v in state["best_weights"].items()}
        elif self.es.best_step is not None:
            self.best_weights = snapshot(model, self.prefixes)


class PerTaskEarlyStopping:
    """``train.early_stopping_per_task``: one :class:`EarlyStopping` per task on its primary metric,
    each task's tower + head snapshotted at its own best evaluation."""

    rewrites_final = True  # the best towers come from different evaluations: the final checkpoint holds them

    def __init__(self, tasks: Mapping[str, str], patience: int, min_delta: float) -> None:
        """``tasks``: task -> the validation metric it is monitored on."""
        self.metrics = dict(sorted(tasks.items()))
        self.es = {t: EarlyStopping(patience, min_delta) for t in self.metrics}
        self.best_weights: dict[str, dict[str, Tensor]] = {}

    def is_active(self, task: str) -> bool:
        return task not in self.es or not self.es[task].stopped

    @property
    def finished(self) -> bool:
        return all(es.stopped for es in self.es.values())

    def observe(
        self, step: int, per_task: Mapping[str, Mapping[str, float]], aggregate: float, model: nn.Module
    ) -> None:
        names = [t for t in self.metrics if self.is_active(t)]  # a stopped task's tower no longer changes
        scores = dist_utils.broadcast_floats([per_task[t][self.metrics[t]] for t in names], _device(model))
        for task, score in zip(names, scores):
            self.es[task].update(step, score)
            if self.es[task].best_step == step:
                self.best_weights[task] = snapshot(model, _tower_prefixes(task))

    def restore(self, model: nn.Module) -> None:
        for weights in self.best_weights.values():
            load_snapshot(model, weights)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": "per_task",
            "best_step": {t: es.best_step for t, es in self.es.items()},
            "stopped_at": {t: es.stopped_at for t, es in self.es.items()},
        }

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {
            "mode": "per_task",
            "es": {t: es.state_dict() for t, es in self.es.items()},
            "best_weights": {t: w for t, w in self.best_weights.items() if differs(model, w)},
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        _check_mode(state, "per_task")
        if sorted(state["es"]) != sorted(self.es):
            raise ValueError(
                f"early stopping state: saved for tasks {sorted(state['es'])}, this run has {sorted(self.es)}"
            )
        saved = state["best_weights"]
        for task, es in self.es.items():
            es.load_state_dict(state["es"][task])
            if task in saved:
                self.best_weights[task] = {k: v.cpu() for k, v in saved[task].items()}
            elif es.best_step is not None:
                self.best_weights[task] = snapshot(model, _tower_prefixes(task))


def _tower_prefixes(task: str) -> tuple[str, ...]:
    return (f"{TASK_LAYERS_PREFIX}{task}.", f"{HEADS_PREFIX}{task}.")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_mode(state: Mapping[str, Any], mode: str) -> None:
    if state.get("mode") != mode:
        raise ValueError(f"early stopping state is {state.get('mode')!r}, this run stops by {mode!r}")


class ActiveTaskSampler:
    """A task sampler that never returns a stopped task: it redraws from the wrapped sampler until an
    active task comes out (the wrapped distribution renormalised over the active tasks). Every rank
    draws the same sequence and knows the same stopped tasks, so ranks agree; the state is the wrapped
    sampler's, so resume is exact."""

    def __init__(self, inner: TaskSampler, is_active: Callable[[str], bool]) -> None:
        self.inner, self.is_active = inner, is_active
        self.name = inner.name

    def probabilities(self, step: int) -> dict[str, float]:
        probs = {t: p for t, p in self.inner.probabilities(step).items() if self.is_active(t)}
        total = sum(probs.values())
        return {t: p / total for t, p in probs.items()} if total > 0 else {}

    def sample(self, step: int) -> str:
        for _ in range(MAX_REDRAWS):
            task = self.inner.sample(step)
            if self.is_active(task):
                return task
        raise RuntimeError(f"task sampler: no active task drawn in {MAX_REDRAWS} draws at step {step}")

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


Tracker = RunEarlyStopping | PerTaskEarlyStopping


def build_early_stopping(cfg: Config, model: MultiTaskModel, data: Mapping[str, TaskData]) -> Tracker | None:
    """The tracker ``cfg.train`` asks for (None: no early stopping), checked against the model and the
    trained tasks' data (``data``: the trained tasks)."""
    tcfg = cfg.train
    if tcfg.early_stopping_patience is None:
        return None
    if not tcfg.early_stopping_per_task:
        prefixes = (TASK_LAYERS_PREFIX, HEADS_PREFIX) if tcfg.freeze_shared else ("",)
        return RunEarlyStopping(tcfg.early_stopping_patience, tcfg.early_stopping_min_delta, prefixes)
    if model.sharing_depth >= model.num_layers:
        raise ConfigError(
            f"train.early_stopping_per_task: needs per-task layers, but model.sharing_depth {model.sharing_depth} "
            f"is k = L ({model.num_layers} layers); use train.early_stopping_patience alone"
        )
    metrics = {}
    for task in sorted(data):  # a task without a validation score (contrastive) trains while others do
        spec = model.specs[task]
        primary = get_task_type(spec.type).primary_metric
        if primary is not None and primary in (spec.metrics or ()) and "validation" in data[task].splits:
            metrics[task] = primary
    if not metrics:
        raise ConfigError(
            f"train.early_stopping_per_task: no trained task has a validation primary metric to stop on "
            f"(tasks: {', '.join(sorted(data))})"
        )
    return PerTaskEarlyStopping(metrics, tcfg.early_stopping_patience, tcfg.early_stopping_min_delta)
