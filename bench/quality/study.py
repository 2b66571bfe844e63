"""Does multi-task learning pay here? Multi-task vs single-task on the built-in real tasks.

    python bench/quality/study.py                       # the default arms, 3 seeds (hours on 2 CPU cores)
    python bench/quality/study.py --seeds 0 --arms hard_balanced,hard_kd   # a piece (+ what it depends on)
    python bench/quality/study.py --smoke --out /tmp/q  # every default arm on tiny slices (what CI runs)
    python bench/quality/study.py --report-only         # re-write the tables/plot from finished runs
    python bench/quality/study.py --set train.batch_size=32 --mtl-steps 2000 --out runs/quality-gpu

Arms (study_arms.py), each trained with the public library (``mtl_ray.training.run.train``, what
``mtl-ray train --no-ray`` runs) on ``--config`` (default bench/quality/base.yaml) for every seed, under
two protocols: **equal compute** (a multi-task model trains ``--mtl-steps`` steps, each single-task
model ``--mtl-steps / T``; final weights scored) and **converged** (early stopping on validation, best
checkpoint scored). Recipes: samplers (temperature, proportional, uniform, annealed, balanced),
mixed-task batches with loss scaling, distillation from the single-task models, MLM on in-domain text,
and a shared trunk k < L with per-task tops trained on it (stage 2).

Resumable: a run whose ``result.json`` exists is not rerun; an interrupted run resumes exactly from the
latest checkpoint it kept (every ``train.eval_every`` steps) when its folder holds the same config,
else its folder is cleared and the run restarts. Parallel: study processes sharing one ``--out`` (``--seeds 0`` / ``--seeds 1`` ...)
claim runs with lock files, so each run is trained once; a run whose teachers or stage-1 model are not
finished is skipped (run the study again). Checkpoints are deleted after each run unless another arm
reads them (teachers, stage 1) or ``--keep-checkpoints``. Writes ``<out>/report.md``,
``<out>/results.csv``, ``<out>/quality.png`` and ``<out>/study.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))

from study_arms import (  # noqa: E402
    BEST_OF,
    SMOKE_BUDGET,
    Arm,
    Budget,
    Run,
    build_runs,
    default_arm_names,
    study_arms,
    supervised_tasks,
    with_dependencies,
)
from study_report import markdown, plot, summarize, write_csv  # noqa: E402

RESULT = "result.json"
SMOKE = {"max_train_examples": 32, "max_eval_examples": 16}
SMOKE_TASKS = ("bbc_topic", "tweet_valence", "bbc_headline_match")  # classification, regression, pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/quality/study.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Results and how to read them: docs/quality.md",
    )
    p.add_argument("--config", default=str(HERE / "base.yaml"), help="base mtl-ray config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the base config")
    p.add_argument("--out", default="runs/quality", help="study folder (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--smoke: 0)")
    p.add_argument(
        "--mtl-steps", type=int, default=None, help="equal-compute steps per multi-task model (default 600; --smoke 5)"
    )
    p.add_argument(
        "--arms",
        default=None,
        help="comma-separated arm names, or 'all' (default: the default set; the arms they depend on are added)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="3 tasks (one per type), tiny slices (32 train / 16 eval rows), 1 seed"
    )
    p.add_argument("--report-only", action="store_true", help="no training: tables and plot from finished runs")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_base(args: argparse.Namespace) -> dict[str, Any]:
    from mtl_ray.config import apply_overrides, config_from_dict, read_yaml_mapping

    base = apply_overrides(read_yaml_mapping(args.config), args.set)
    if args.smoke:  # one task of each supervised type, tiny slices
        base["tasks"] = {name: t for name, t in base["tasks"].items() if name in SMOKE_TASKS}
        for task in base["tasks"].values():
            task.update(SMOKE)
    config_from_dict(base)  # validate now: a wrong key fails before any run starts
    return base


def num_layers(base: dict[str, Any]) -> int:
    from mtl_ray.config import config_from_dict
    from mtl_ray.model.encoder import encoder_layers, load_encoder

    cfg = config_from_dict(base)
    encoder, _ = load_encoder(cfg.model.encoder, cfg.data.resolved_cache_dir())
    return len(encoder_layers(encoder))


def select_arms(all_arms: list[Arm], names: str | None, num_layers: int) -> list[Arm]:
    """The arms named (default: the default set; ``all``: every arm), plus the arms they depend on."""
    if names == "all":
        return all_arms
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else default_arm_names(num_layers)
    known = {a.name for a in all_arms}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"error: --arms: unknown arm(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return with_dependencies(all_arms, [a for a in all_arms if a.name in wanted])


def resolve(config: dict[str, Any], study_runs: Path) -> dict[str, Any]:
    """Replace ``@best:<run_id>`` values by that run's best checkpoint (it must have finished)."""
    out = json.loads(json.dumps(config))
    for section in out.values():
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            if isinstance(value, str) and value.startswith(BEST_OF):
                dep = study_runs / value[len(BEST_OF) :]
                result = dep / RESULT
                if not _finished(dep, keeps_checkpoints=True):
                    raise DependencyMissing(value[len(BEST_OF) :])
                section[key] = str(dep / json.loads(result.read_text(encoding="utf-8"))["best_checkpoint"])
    distill = out.get("train", {}).get("distill_from")
    if isinstance(distill, str):
        teachers = Path(distill)
        tasks = supervised_tasks(out)
        if not all(_finished(teachers / task, keeps_checkpoints=True) for task in tasks):
            raise DependencyMissing(str(teachers.relative_to(study_runs)))
    return out


def _finished(run_dir: Path, *, keeps_checkpoints: bool) -> bool:
    return (run_dir / RESULT).is_file() and (not keeps_checkpoints or (run_dir / "checkpoints").is_dir())


def finished(run: Run) -> bool:
    """A run is done when its ``result.json`` exists and, for an arm that other arms read (teachers,
    stage 1), its checkpoints too: a study folder copied without checkpoints (e.g. the committed
    results) retrains those runs — seeded and single-threaded, they come out the same."""
    return _finished(Path(run.config["train"]["output_dir"]), keeps_checkpoints=run.arm.keep_checkpoints)


class DependencyMissing(Exception):
    """A run's teachers or stage-1 model have not finished (yet)."""


def count_params(checkpoint: Path) -> int:
    from mtl_ray.checkpoint import read_tensors  # every checkpoint reader goes through it (encrypted too)

    return sum(t.numel() for t in read_tensors(checkpoint).values())


def run_one(run: Run, keep_checkpoints: bool, study_runs: Path) -> dict[str, Any]:
    """Train one run in this process (stdout to ``<run>/train.log``); write its ``result.json``."""
    from mtl_ray.config import config_from_dict, dump_config
    from mtl_ray.training.checkpointing import step_checkpoints
    from mtl_ray.training.run import train

    config = resolve(run.config, study_runs)
    out = Path(run.config["train"]["output_dir"])
    cfg = config_from_dict(config)
    resume = resume_point(out, dump_config(cfg))
    if out.exists() and resume is None:
        shutil.rmtree(out)  # an interrupted attempt of another config, or one that kept no checkpoint
    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        summary = train(cfg, resume_from=resume, progress=False)
    with open(out / "train.log", "a", encoding="utf-8") as f:
        f.write(log.getvalue())
    if summary["best_checkpoint"] is not None:
        ckpt = Path(summary["best_checkpoint"])
    else:  # nothing scored (an MLM-only stage 0): its final weights are what a later stage starts from
        ckpt = step_checkpoints(out / "checkpoints")[-1][1]
    result = {
        "arm": run.arm.name,
        "seed": run.seed,
        "task": run.task,
        "protocol": run.arm.protocol,
        "steps": summary["steps"],
        "max_steps": run.steps,
        "best_step": summary.get("best_step"),
        "resumed_from_step": summary.get("resumed_from_step"),
        "best_checkpoint": str(ckpt.relative_to(out)),
        "params": count_params(ckpt),
        "train_seconds": summary["train_seconds"],
        "task_types": {name: t.type for name, t in cfg.tasks.items()},
        "test": summary["test"],
        "majority_baseline": summary["majority_baseline"],
    }
    if not (keep_checkpoints or run.arm.keep_checkpoints):
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    tmp = out / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(out / RESULT)
    return result


def resume_point(out: Path, config_text: str) -> Path | None:
    """An interrupted attempt of this run to continue: its latest readable ``step-*`` checkpoint, when
    the attempt's ``config.yaml`` is ``config_text`` (the same run); None: start over."""
    from mtl_ray.checkpoint import load_meta
    from mtl_ray.errors import CheckpointError
    from mtl_ray.training.checkpointing import step_checkpoints

    saved = out / "config.yaml"
    if not saved.is_file() or saved.read_text(encoding="utf-8") != config_text:
        return None
    for _, path in reversed(step_checkpoints(out / "checkpoints")):
        try:
            load_meta(path)
        except CheckpointError:
            continue  # torn or foreign: an older one may still do
        return path
    return None


def load_results(runs: list[Run]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        path = Path(run.config["train"]["output_dir"]) / RESULT
        if path.is_file():
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def machine(threads: int | None = None) -> dict[str, Any]:
    """Where the study ran; ``threads``: the runs' ``train.num_threads`` (None: torch's default)."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_report(
    out: Path, arms: list[Arm], runs: list[Run], layers: int, meta: dict[str, Any]
) -> list[dict[str, Any]]:
    records = load_results(runs)
    rows = summarize(records, arms, layers)
    table = markdown(rows)
    header = (
        f"# Quality study ({meta['finished']}/{meta['total_runs']} runs finished)\n\n"
        f"- command: `{meta['command']}`\n"
        f"- seeds: {meta['seeds']}; multi-task steps: {meta['mtl_steps']}; single-task steps per task: "
        f"{meta['single_steps']}; batch size: {meta['batch_size']}\n"
        f"- machine: {meta['machine']['device']}, {meta['machine']['cpu_count']} CPUs, "
        f"torch {meta['machine']['torch']} ({meta['machine']['torch_threads']} threads)\n"
        f"- primary test metric per task (accuracy; Pearson for regression), mean ± std over seeds; "
        f"Δm% against the single-task mean\n\n"
    )
    (out / "report.md").write_text(header + table, encoding="utf-8")
    write_csv(records, out / "results.csv")
    plot(rows, out / "quality.png", layers)
    (out / "study.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, default=str), encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtl_ray.errors import MtlRayError

    try:
        base = load_base(args)
        if not args.report_only:
            from mtl_ray.config import config_from_dict
            from mtl_ray.data.prepare import BUILTIN_TASKS, prepare_builtin

            builtins = [
                t["source"].split(":", 1)[1]
                for t in base["tasks"].values()
                if str(t.get("source", "")).startswith("builtin:")
            ]
            names = sorted({*builtins, "unlabeled_text"} & set(BUILTIN_TASKS))
            prepare_builtin(names, config_from_dict(base).data, progress=not args.no_progress)
        layers = num_layers(base)
    except MtlRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seeds = args.seeds if args.seeds is not None else ([0] if args.smoke else [0, 1, 2])
    mtl_steps = args.mtl_steps if args.mtl_steps is not None else (5 if args.smoke else 600)
    arms = select_arms(study_arms(layers), args.arms, layers)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = SMOKE_BUDGET if args.smoke else Budget()
    try:
        runs = build_runs(base, arms, seeds, mtl_steps, str(out / "runs"), budget)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    todo = [r for r in runs if not finished(r)]
    meta = {
        "command": "python " + " ".join(["bench/quality/study.py", *(argv if argv is not None else sys.argv[1:])]),
        "seeds": seeds,
        "mtl_steps": mtl_steps,
        "single_steps": mtl_steps // len(supervised_tasks(base)),
        "batch_size": base.get("train", {}).get("batch_size"),
        "machine": machine(base.get("train", {}).get("num_threads")),
        "total_runs": len(runs),
    }
    print(f"{len(runs)} runs ({len(arms)} arms × {len(seeds)} seeds), {len(todo)} to train, k in 0..{layers}")
    if not args.report_only and todo:
        _train_all(todo, args)
    meta["finished"] = len(load_results(runs))
    rows = write_report(out, arms, runs, layers, meta)
    print()
    print(markdown(rows))
    print(f"report: {out / 'report.md'}\nplot:   {out / 'quality.png'}\ncsv:    {out / 'results.csv'}")
    return 0


def _train_all(todo: list[Run], args: argparse.Namespace) -> None:
    """Train the missing runs; the bar counts optimizer steps, so its time estimate weighs runs by size.
    Several study processes may share one ``--out`` (e.g. one per seed, ``--seeds 1``): each run is
    claimed with a lock file first, and a run finished or claimed by another live process is skipped."""
    from tqdm.auto import tqdm

    from mtl_ray.tuning.deltam import primary_metrics

    bar = tqdm(
        total=sum(r.steps for r in todo), unit="step", desc="study", disable=args.no_progress, dynamic_ncols=True
    )
    for run in todo:
        bar.set_postfix_str(run.run_id)
        out = Path(run.config["train"]["output_dir"])
        if finished(run) or not claim(out):
            bar.write(f"{run.run_id}: finished or running in another study process, skipped")
            bar.update(run.steps)
            continue
        try:
            start = time.perf_counter()
            result = run_one(run, args.keep_checkpoints, Path(args.out).resolve() / "runs")
        except DependencyMissing as exc:
            bar.write(f"{run.run_id}: waiting for {exc} (not finished), skipped; run the study again")
            bar.update(run.steps)
            continue
        finally:
            release(out)
        prim = primary_metrics(result["test"], result["task_types"])
        scores = " ".join(f"{t}={v:.3f}" for t, v in sorted(prim.items()))
        bar.write(f"{run.run_id}: {time.perf_counter() - start:.0f} s  {scores}")
        bar.update(run.steps)
    bar.close()


def _lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def claim(out: Path) -> bool:
    """Take ``<run>.lock`` (holding this PID); a lock whose process is gone is taken over."""
    lock = _lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
                return False  # alive: another study process trains this run
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process died
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def release(out: Path) -> None:
    _lock_path(out).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
