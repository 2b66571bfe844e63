"""The list of trials a search runs: single-task baselines, the default config, the searched draws.

Built before Ray starts from the base config (a plain dict) and the ``tune`` section; the grammar of
the search space itself is :mod:`mtl_ray.tuning.space`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from mtl_ray.config import TuneConfig, config_from_dict
from mtl_ray.errors import ConfigError
from mtl_ray.overrides import apply_overrides
from mtl_ray.tuning.space import (
    WILDCARD,
    ParamSpec,
    expand_key,
    grid_overrides,
    override_strings,
    parse_space,
    require_optuna,
    sample_overrides,
)


@dataclass
class TrialSpec:
    """One trial of a search: which tasks it trains and which overrides it applies to the base config."""

    trial_id: str  # "single-<task>", "default", "search-003"
    kind: str  # "single" (a single-task baseline), "default" (the base config), "search"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, wildcards expanded
    only_task: str | None = None  # single: the one task kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "kind": self.kind,
            "overrides": dict(self.overrides),
            "only_task": self.only_task,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        return cls(d["trial_id"], d["kind"], dict(d.get("overrides") or {}), d.get("only_task"))


def apply_trial(base: dict[str, Any], trial: TrialSpec) -> dict[str, Any]:
    """The trial's config as a plain dict: base + overrides, other tasks dropped for a single-task baseline."""
    data = apply_overrides(base, override_strings(trial.overrides))
    if trial.only_task is not None:
        data["tasks"] = {trial.only_task: data["tasks"][trial.only_task]}
        data["tasks"][trial.only_task]["loss_weight"] = 1.0
    data.pop("tune", None)  # a trial is a plain training run
    return data


def check_keys(base: dict[str, Any], specs: list[ParamSpec]) -> None:
    """Every key must be a config key whose value the spec's options can take: apply a draw (every
    option, for choice) to the base config and build it. Raises ConfigError naming the key."""
    if not specs:
        raise ConfigError(
            "tune.search_space: empty; declare at least one key (e.g. train.lr: {loguniform: [1e-5, 3e-4]})"
        )
    tasks = sorted(base.get("tasks") or {})
    for spec in specs:
        if spec.key.startswith("tune."):
            raise ConfigError(f"tune.search_space.{spec.key}: the tune section cannot be searched")
        if spec.key.startswith("tasks.") and not spec.key.startswith(WILDCARD):
            task = spec.key.split(".")[1]
            if task not in tasks:
                raise ConfigError(f"tune.search_space.{spec.key}: unknown task {task!r}; tasks: {', '.join(tasks)}")
        if spec.kind == "choice":
            probes = list(spec.values)
        elif spec.kind == "simplex":
            probes = [None]
        else:
            probes = list(spec.values)
        for value in probes:
            overrides = (
                sample_overrides([spec], tasks, random.Random(0))
                if value is None
                else expand_key(spec.key, value, tasks)
            )
            trial = TrialSpec("check", "search", overrides)
            try:
                data = apply_trial(base, trial)
                _check_known_path(base, overrides)
                config_from_dict(data)
            except ConfigError as exc:
                raise ConfigError(f"tune.search_space.{spec.key}: {exc}") from None


def _check_known_path(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``apply_overrides`` creates missing mappings; a key under ``tasks.<name>`` that is not a task
    would silently add a task, so check the first two levels exist before building."""
    for key in overrides:
        parts = key.split(".")
        if parts[0] == "tasks" and parts[1] not in (base.get("tasks") or {}):
            raise ConfigError(f"{key}: unknown task {parts[1]!r}")


def build_trials(base: dict[str, Any], tune_cfg: TuneConfig, supervised_tasks: list[str]) -> list[TrialSpec]:
    """The experiment's pre-drawn trials in run order: single-task baselines, the default config, then
    the search (``num_samples`` random draws or the full grid; none for ``optuna``, whose ``num_samples``
    trials are suggested while the search runs)."""
    if tune_cfg.search_alg == "optuna":
        require_optuna()
    specs = parse_space(tune_cfg.search_space)
    check_keys(base, specs)
    tasks = sorted(base["tasks"])
    trials: list[TrialSpec] = []
    if tune_cfg.baselines:
        if len(supervised_tasks) < 2 and len(tasks) < 2:
            raise ConfigError("tune.baselines: a single-task config has no multi-task trial to compare; set it false")
        trials += [TrialSpec(f"single-{t}", "single", {}, only_task=t) for t in supervised_tasks]
    if tune_cfg.include_default:
        trials.append(TrialSpec("default", "default", {}))
    if tune_cfg.search_alg == "optuna":
        return trials
    if tune_cfg.search_alg == "grid":
        draws = grid_overrides(specs, tasks)
    else:
        rng = random.Random(tune_cfg.seed)
        draws = [sample_overrides(specs, tasks, rng) for _ in range(tune_cfg.num_samples)]
    trials += [TrialSpec(f"search-{i:03d}", "search", o) for i, o in enumerate(draws)]
    return trials
