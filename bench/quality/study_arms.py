"""The quality study's arms: which configs are trained, as plain changes to the base config dict.

Two protocols (docs/quality.md):

* **equal** — the same training compute per *system*: a multi-task arm trains one model for
  ``mtl_steps`` optimizer steps; the single-task baseline trains one model per task for
  ``mtl_steps / T`` steps each (T supervised tasks), so the T single-task models together see as many
  examples as one multi-task model. Every arm is scored with its final weights.
* **converged** — every system trains until its validation score stops improving
  (``train.early_stopping_patience``; single-task models on their task's metric, multi-task models on
  the validation aggregate, stage-2 towers each on their own task's metric) up to a step cap, and the
  best validation checkpoint is the one scored on test.

Arms can depend on another arm's runs of the same seed: distillation (``teachers``: the single-task
models of that protocol are the teachers) and stage 2 (``stage1``: starts from that arm's best
checkpoint). Dependencies are listed before their dependents, so one study process trains them in order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
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
MLM = "mlm"
MLM_TASK = {
    "type": "mlm",
    "source": "builtin:unlabeled_text",
    "include_task_texts": True,
    "mask_probability": 0.15,
    "max_length": 64,
    "loss_weight": 0.5,
    "max_eval_examples": 1,
}
BEST_OF = "@best:"  # a config value resolved at run time to the best checkpoint of another run


@dataclass(frozen=True)
class Budget:
    """Step caps and evaluation cadence of the converged protocol (``--smoke`` shrinks them)."""

    single_max_steps: int = 1500
    single_eval_every: int = 40
    multi_max_steps: int = 3000
    multi_eval_every: int = 100
    tops_max_steps: int = 1500
    tops_eval_every: int = 40
    patience: int = 4


SMOKE_BUDGET = Budget(6, 2, 8, 2, 6, 2, 1)


@dataclass(frozen=True)
class Arm:
    """One row of the study's tables. ``kind``: "single" (one model per task) or "multi"."""

    name: str
    kind: str
    label: str
    protocol: str = "equal"  # "equal" | "converged"
    sharing_depth: int | None = None  # None -> k = L
    weighting: str = "static"
    unsupervised: bool = False  # SimCSE on the unlabeled text as an extra task
    mlm: bool = False  # masked-LM on the tasks' training texts + unlabeled text as an extra task
    settings: dict[str, Any] = field(default_factory=dict)  # dotted config keys -> values
    teachers: str | None = None  # arm whose single-task models (same seed) are the distillation teachers
    stage1: str | None = None  # arm whose best checkpoint (same seed) stage 2 starts from
    # "0": an MLM-only stage 0 on the tasks' corpora (1/(T+1) of the equal-compute steps, not scored);
    # "after": the supervised run that starts from it (the other T/(T+1)): hard_mlm's split, in sequence
    mlm_stage: str | None = None
    # fraction of the run's steps for which every mlm task trains only its head (tasks.<mlm>.head_warmup_steps)
    mlm_head_warmup: float = 0.0
    keep_checkpoints: bool = False  # another arm reads this arm's checkpoints

    def __hash__(self) -> int:
        return hash(self.name)


BALANCED = {"train.sampler": "balanced"}
MIXED = {"train.sampler": "uniform", "train.mixed_batches": True, "train.loss_scaling": "auto"}
TOPS = {"train.freeze_shared": True, "train.early_stopping_per_task": True}  # stage 2 on a frozen trunk


def study_arms(num_layers: int) -> list[Arm]:
    """Every arm, dependencies first. The default set (:func:`default_arm_names`) leaves out the arms
    that no longer inform (the old depth sweep, DWA, uncertainty, SimCSE) to save CPU."""
    L = num_layers
    arms = [
        # ---- equal compute, 1x serving cost unless the label says otherwise
        Arm("single_task", "single", "single-task (one model per task)", keep_checkpoints=True),
        Arm("hard_sharing", "multi", f"hard sharing k={L}, temperature T=2", sharing_depth=L),
        Arm(
            "hard_proportional",
            "multi",
            f"k={L}, proportional (T=1)",
            sharing_depth=L,
            settings={"train.temperature": 1.0},
        ),
        Arm("hard_uniform", "multi", f"k={L}, uniform", sharing_depth=L, settings={"train.sampler": "uniform"}),
        Arm(
            "hard_annealed",
            "multi",
            f"k={L}, annealed (T 1→5)",
            sharing_depth=L,
            settings={"train.sampler": "annealed"},
        ),
        Arm("hard_balanced", "multi", f"k={L}, balanced (equal updates)", sharing_depth=L, settings=BALANCED),
        Arm(
            "hard_mixed",
            "multi",
            f"k={L}, mixed-task batches + loss scaling",
            sharing_depth=L,
            settings=MIXED,
        ),
        Arm(
            "hard_mixed_unscaled",
            "multi",
            f"k={L}, mixed-task batches, no loss scaling",
            sharing_depth=L,
            settings={"train.sampler": "uniform", "train.mixed_batches": True},
        ),
        Arm(
            "hard_kd",
            "multi",
            f"k={L}, balanced + distillation",
            sharing_depth=L,
            settings=BALANCED,
            teachers="single_task",
        ),
        Arm("hard_mlm", "multi", f"k={L}, balanced + MLM auxiliary", sharing_depth=L, settings=BALANCED, mlm=True),
        Arm(
            "hard_mixed_mlm",
            "multi",
            f"k={L}, balanced mixed-task batches + loss scaling + MLM auxiliary",
            sharing_depth=L,
            settings={**BALANCED, "train.mixed_batches": True, "train.loss_scaling": "auto"},
            mlm=True,
        ),
        Arm(
            "mlm_stage0",
            "multi",
            "MLM stage 0 on the tasks' corpora (not scored)",
            sharing_depth=L,
            settings={"train.sampler": "proportional"},
            mlm_stage="0",
            keep_checkpoints=True,
        ),
        Arm(
            "hard_mlm_stage0",
            "multi",
            f"k={L}, MLM stage 0, then balanced",
            sharing_depth=L,
            settings=BALANCED,
            stage1="mlm_stage0",
            mlm_stage="after",
        ),
        Arm(
            "mlm_stage0_warm",
            "multi",
            "MLM stage 0, heads warmed up on a still encoder for its first half (not scored)",
            sharing_depth=L,
            settings={"train.sampler": "proportional"},
            mlm_stage="0",
            mlm_head_warmup=0.5,
            keep_checkpoints=True,
        ),
        Arm(
            "hard_mlm_stage0_warm",
            "multi",
            f"k={L}, MLM stage 0 with head warm-up, then balanced",
            sharing_depth=L,
            settings=BALANCED,
            stage1="mlm_stage0_warm",
            mlm_stage="after",
        ),
        # ---- converged protocol (early stopping, best validation checkpoint)
        Arm("single_es", "single", "single-task, early-stopped", protocol="converged", keep_checkpoints=True),
        Arm(
            "hard_es",
            "multi",
            f"k={L}, balanced, early-stopped",
            protocol="converged",
            sharing_depth=L,
            settings=BALANCED,
            keep_checkpoints=True,
        ),
        Arm(
            "hard_kd_es",
            "multi",
            f"k={L}, balanced + distillation, early-stopped",
            protocol="converged",
            sharing_depth=L,
            settings=BALANCED,
            teachers="single_es",
        ),
        Arm(
            "hard_mlm_es",
            "multi",
            f"k={L}, balanced + MLM auxiliary, early-stopped",
            protocol="converged",
            sharing_depth=L,
            settings=BALANCED,
            mlm=True,
            keep_checkpoints=True,
        ),
        Arm(
            "hard_mixed_es",
            "multi",
            f"k={L}, mixed-task batches + loss scaling, early-stopped",
            protocol="converged",
            sharing_depth=L,
            settings=MIXED,
            keep_checkpoints=True,
        ),
    ]
    # stage 2 on a frozen trunk, one arm per (stage 1, k < L); the mlm task is not carried into stage 2
    trunks = (
        ("tops", "shared trunk", "hard_es", (5, 4, 3)),
        ("tops_mixed", "mixed-batch trunk", "hard_mixed_es", (5, 4)),
        ("tops_mlm", "MLM-adapted trunk", "hard_mlm_es", (5,)),
    )
    for prefix, trunk, stage1, depths in trunks:
        arms += [
            Arm(
                f"{prefix}_k{k}",
                "multi",
                f"{trunk} k={k} + per-task tops (stage 2)",
                protocol="converged",
                sharing_depth=k,
                stage1=stage1,
                settings=TOPS,
            )
            for k in depths
            if k < L
        ]
    # ---- earlier arms, kept runnable (--arms) but out of the default set
    for k in (4, 2, 0):
        if k < L:
            arms.append(Arm(f"depth_k{k}", "multi", f"sharing depth k={k}, static equal", sharing_depth=k))
    arms += [
        Arm("uncertainty", "multi", f"k={L}, uncertainty weighting", sharing_depth=L, weighting="uncertainty"),
        Arm("dwa", "multi", f"k={L}, DWA weighting", sharing_depth=L, weighting="dwa"),
        Arm("unsupervised", "multi", f"k={L}, static + SimCSE on unlabeled text", sharing_depth=L, unsupervised=True),
    ]
    return arms


def default_arm_names(num_layers: int) -> list[str]:
    legacy = {"uncertainty", "dwa", "unsupervised"} | {f"depth_k{k}" for k in (4, 2, 0)}
    return [a.name for a in study_arms(num_layers) if a.name not in legacy]


def with_dependencies(arms: list[Arm], selected: list[Arm]) -> list[Arm]:
    """``selected`` plus every arm they depend on, in :func:`study_arms` order."""
    by_name = {a.name: a for a in arms}
    wanted = {a.name for a in selected}
    changed = True
    while changed:
        changed = False
        for name in list(wanted):
            for dep in (by_name[name].teachers, by_name[name].stage1):
                if dep and dep not in wanted:
                    wanted.add(dep)
                    changed = True
    return [a for a in arms if a.name in wanted]


@dataclass(frozen=True)
class Run:
    """One training run: an arm, a seed and (single-task arms) the one task it trains."""

    arm: Arm
    seed: int
    task: str | None
    config: dict[str, Any]
    steps: int  # the step cap (what the progress bar counts); converged runs may stop earlier

    @property
    def run_id(self) -> str:
        suffix = f"/{self.task}" if self.task else ""
        return f"{self.arm.name}/seed{self.seed}{suffix}"


def supervised_tasks(base: dict[str, Any]) -> list[str]:
    return [name for name, t in base["tasks"].items() if get_task_type(t.get("type", "classification")).supervised]


def build_runs(
    base: dict[str, Any], arms: list[Arm], seeds: list[int], mtl_steps: int, out_dir: str, budget: Budget = Budget()
) -> list[Run]:
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
                    steps, every = _steps(arm, budget, single_steps, single=True)
                    cfg = _with(base, seed, steps, every, arm, budget)
                    cfg["tasks"] = {task: copy.deepcopy(base["tasks"][task])}
                    runs.append(Run(arm, seed, task, _place(cfg, out_dir, arm, seed, task), steps))
            else:
                equal = mtl_steps
                if arm.mlm_stage:  # stage 0 takes the MLM task's share in hard_mlm, the run after it the rest
                    stage0 = max(1, mtl_steps // (len(tasks) + 1))
                    equal = stage0 if arm.mlm_stage == "0" else mtl_steps - stage0
                steps, every = _steps(arm, budget, equal, single=False)
                cfg = _with(base, seed, steps, every, arm, budget)
                if arm.mlm_stage == "0":
                    cfg["tasks"] = mlm_stage0_tasks(base)
                cfg["model"]["sharing_depth"] = arm.sharing_depth
                cfg["train"]["weighting"] = arm.weighting
                if arm.unsupervised:
                    cfg["tasks"][UNLABELED] = dict(UNLABELED_TASK)
                if arm.mlm:
                    cfg["tasks"][MLM] = dict(MLM_TASK)
                if arm.mlm_head_warmup:  # the heads alone learn during the run's first fraction of steps
                    for task in cfg["tasks"].values():
                        if task.get("type") == "mlm":
                            task["head_warmup_steps"] = int(steps * arm.mlm_head_warmup)
                if arm.teachers:
                    cfg["train"]["distill_from"] = f"{out_dir}/{arm.teachers}/seed{seed}"
                if arm.stage1:
                    cfg["model"]["init_from"] = f"{BEST_OF}{arm.stage1}/seed{seed}"
                runs.append(Run(arm, seed, None, _place(cfg, out_dir, arm, seed, None), steps))
    return runs


def mlm_stage0_tasks(base: dict[str, Any]) -> dict[str, Any]:
    """The stage-0 tasks: one mlm task per supervised task's corpus (its train split only) + the
    unlabeled text — the texts hard_mlm's one mlm task reads with ``include_task_texts``. A pair task
    is left out: its source is a pair view of another task's corpus (bbc_headline_match: bbc_topic's
    articles), and an mlm task reads one text field."""
    tasks = {}
    for name in supervised_tasks(base):
        t = base["tasks"][name]
        if not get_task_type(t.get("type", "classification")).is_pair and "source" in t:
            tasks[f"{MLM}_{name}"] = {
                "type": "mlm",
                "source": t["source"],
                "mask_probability": MLM_TASK["mask_probability"],
                "max_length": t.get("max_length", MLM_TASK["max_length"]),
                "max_eval_examples": 1,
            }
    tasks[f"{MLM}_{UNLABELED}"] = {k: v for k, v in MLM_TASK.items() if k not in ("include_task_texts", "loss_weight")}
    return tasks


def _steps(arm: Arm, budget: Budget, equal_steps: int, *, single: bool) -> tuple[int, int]:
    """(max_steps, eval_every) of one run of ``arm``."""
    if arm.protocol == "equal":
        return equal_steps, equal_steps  # one validation pass at the end; the final model is scored
    if arm.stage1:
        return budget.tops_max_steps, budget.tops_eval_every
    if single:
        return budget.single_max_steps, budget.single_eval_every
    return budget.multi_max_steps, budget.multi_eval_every


def _with(base: dict[str, Any], seed: int, steps: int, every: int, arm: Arm, budget: Budget) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg.setdefault("model", {})
    train = cfg.setdefault("train", {})
    train["seed"] = seed
    train["max_steps"] = steps
    train["eval_every"] = every
    train["log_every"] = max(1, min(int(train.get("log_every", 20)), steps))
    if arm.protocol == "converged":
        train["early_stopping_patience"] = budget.patience
    for key, value in arm.settings.items():
        section, name = key.split(".", 1)
        cfg.setdefault(section, {})[name] = value
    return cfg


def _place(cfg: dict[str, Any], out_dir: str, arm: Arm, seed: int, task: str | None) -> dict[str, Any]:
    suffix = f"/{task}" if task else ""
    cfg["train"]["output_dir"] = f"{out_dir}/{arm.name}/seed{seed}{suffix}"
    return cfg
