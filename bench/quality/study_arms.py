"""The quality study's arms: which configs are trained, as plain changes to the base config dict.

Budget rule (the same training compute for every *system*): a multi-task arm trains one model for
``mtl_steps`` optimizer steps; the single-task baseline trains one model per task for
``mtl_steps / T`` steps each (T supervised tasks), so the five single-task models together see as
many examples as one multi-task model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mtl_ray.tasks import get_task_type

UNLABELED = "unlabeled"
UNLABELED_TASK = {
    "type": "contrastive",
    "source": "builtin:unlabeled_text",
    "max_length": 64,
    "loss_weight": 0.5,
    "max_eval_examples": 1,
}


@dataclass(frozen=True)
class Arm:
    """One row of the study's tables. ``kind``: "single" (one model per task) or "multi"."""

    name: str
    kind: str
    label: str  # what the tables print
    sharing_depth: int | None = None  # None -> k = L
    weighting: str = "static"
    unsupervised: bool = False


def study_arms(num_layers: int) -> list[Arm]:
    """Single-task baseline, hard sharing, the depth sweep, the weightings, the unsupervised objective.
    The depth sweep is k in {0, 2, 4} plus hard sharing (k = L) itself."""
    arms = [
        Arm("single_task", "single", "single-task (one model per task)"),
        Arm("hard_sharing", "multi", f"hard sharing k={num_layers}, static equal", sharing_depth=num_layers),
    ]
    for k in (4, 2, 0):
        if k < num_layers:
            arms.append(Arm(f"depth_k{k}", "multi", f"sharing depth k={k}, static equal", sharing_depth=k))
    arms += [
        Arm("uncertainty", "multi", f"k={num_layers}, uncertainty weighting", num_layers, "uncertainty"),
        Arm("dwa", "multi", f"k={num_layers}, DWA weighting", num_layers, "dwa"),
        Arm(
            "unsupervised", "multi", f"k={num_layers}, static + SimCSE on unlabeled text", num_layers, unsupervised=True
        ),
    ]
    return arms


@dataclass(frozen=True)
class Run:
    """One training run: an arm, a seed and (single-task arms) the one task it trains."""

    arm: Arm
    seed: int
    task: str | None
    config: dict[str, Any]
    steps: int

    @property
    def run_id(self) -> str:
        suffix = f"/{self.task}" if self.task else ""
        return f"{self.arm.name}/seed{self.seed}{suffix}"


def supervised_tasks(base: dict[str, Any]) -> list[str]:
    return [name for name, t in base["tasks"].items() if get_task_type(t.get("type", "classification")).supervised]


def build_runs(base: dict[str, Any], arms: list[Arm], seeds: list[int], mtl_steps: int, out_dir: str) -> list[Run]:
    """Every run of the study, seed-major (all arms of seed 0 first, so a partial study still compares
    complete seeds). ``out_dir``: each run's ``train.output_dir`` is ``<out_dir>/<run_id>``."""
    tasks = supervised_tasks(base)
    if not tasks:
        raise ValueError("the base config has no supervised task")
    single_steps = mtl_steps // len(tasks)
    if single_steps < 1:
        raise ValueError(f"--mtl-steps {mtl_steps} is less than one step per task ({len(tasks)} tasks)")
    runs = []
    for seed in seeds:
        for arm in arms:
            if arm.kind == "single":
                for task in tasks:
                    cfg = _with(base, seed, single_steps)
                    cfg["tasks"] = {task: copy.deepcopy(base["tasks"][task])}
                    runs.append(Run(arm, seed, task, _place(cfg, out_dir, arm, seed, task), single_steps))
            else:
                cfg = _with(base, seed, mtl_steps)
                cfg["model"]["sharing_depth"] = arm.sharing_depth
                cfg["train"]["weighting"] = arm.weighting
                if arm.unsupervised:
                    cfg["tasks"][UNLABELED] = dict(UNLABELED_TASK)
                runs.append(Run(arm, seed, None, _place(cfg, out_dir, arm, seed, None), mtl_steps))
    return runs


def _with(base: dict[str, Any], seed: int, steps: int) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg.setdefault("model", {})
    train = cfg.setdefault("train", {})
    train["seed"] = seed
    train["max_steps"] = steps
    train["eval_every"] = steps  # one validation pass at the end; the study reports the test split
    train["log_every"] = max(1, min(int(train.get("log_every", 20)), steps))
    return cfg


def _place(cfg: dict[str, Any], out_dir: str, arm: Arm, seed: int, task: str | None) -> dict[str, Any]:
    suffix = f"/{task}" if task else ""
    cfg["train"]["output_dir"] = f"{out_dir}/{arm.name}/seed{seed}{suffix}"
    return cfg
