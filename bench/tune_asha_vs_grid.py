"""ASHA vs the full grid: how much compute does early stopping save, and what does it cost in quality?

    python bench/tune_asha_vs_grid.py [--config configs/tune_bench.yaml] [--out runs/bench-tune] [key=value ...]
    python bench/tune_asha_vs_grid.py --smoke                  # tiny budget (≈ 6 min, 18 trials): checks the script
    python bench/tune_asha_vs_grid.py --report-only            # re-print the table of finished arms

Runs the config's search twice through the public API (``mtl_ray.ray.tune.run_tune``), same trials,
same seeds, one embedded local Ray for both:

  asha    tune.scheduler=asha   trials below the rung's cut are stopped at the rungs (grace_period ·
          reduction_factor^i steps)
  grid    tune.scheduler=none   every trial runs its full train.max_steps

Each arm is its own experiment, ``<out>/<arm>/<tune.name>`` (results.csv, summary.json, trials.json,
...). Then prints, and writes as JSON and markdown (``<out>/asha_vs_grid.{json,md}``), per arm: trials,
trial-steps spent (sum over trials of the last step each reached), trials stopped early, trial-seconds
(sum of Tune's per-trial ``time_total_s``), wall time, the best ``val/aggregate`` and its config; then
the steps saved, the difference of the best aggregates, whether both arms picked the same config, the
rank of ASHA's pick in the full grid and the per-trial table side by side.

``--smoke`` shrinks the budget of whatever config is given (8 steps, evaluations / rungs every 2, 64
training and 16 validation examples of at most 32 tokens per task); ``key=value`` overrides apply to
both arms after it (``tune.scheduler`` and ``train.output_dir`` are set by the script).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = {"asha": "asha", "grid": "none"}  # arm name -> tune.scheduler
SMOKE = {
    "train.max_steps": 8,
    "train.eval_every": 2,
    "train.log_every": 2,
    "train.dwa_window": 2,
    "tune.grace_period": 2,
}
SMOKE_TASK = {"max_train_examples": 64, "max_eval_examples": 16, "max_length": 32}


# ============================================================================ running the arms


def arm_overrides(config: str, out: Path, arm: str, overrides: list[str], smoke: bool) -> list[str]:
    """The overrides one arm runs with: --smoke's budget, the user's, then the scheduler and where it goes."""
    from mtl_ray.config import load_config

    pre: list[str] = []
    if smoke:
        pre += [f"{k}={v}" for k, v in SMOKE.items()]
        for task in load_config(config, overrides).tasks:
            pre += [f"tasks.{task}.{k}={v}" for k, v in SMOKE_TASK.items()]
    return [*pre, *overrides, f"tune.scheduler={ARMS[arm]}", f"train.output_dir={out / arm}"]


def run_arms(
    config: str,
    out: Path,
    overrides: list[str],
    *,
    smoke: bool = False,
    arms: list[str] | None = None,
    num_cpus: int | None = None,
    address: str | None = None,
    verbose: int = 1,
) -> dict[str, dict[str, Any]]:
    """Run each arm's search (one Ray for all of them) and return ``{arm: {"summary", "wall_s", ...}}``."""
    from mtl_ray.config import load_config
    from mtl_ray.ray.session import ray_session, resolve_address
    from mtl_ray.ray.tune import run_tune
    from mtl_ray.tuning.experiment import experiment_paths

    runs: dict[str, dict[str, Any]] = {}
    cfgs = {arm: load_config(config, arm_overrides(config, out, arm, overrides, smoke)) for arm in arms or ARMS}
    t0 = time.time()
    first = next(iter(cfgs.values()))
    with ray_session(resolve_address(address, first.ray.address), num_cpus=num_cpus):
        import ray

        ray_init_s = time.time() - t0
        cpus = ray.cluster_resources().get("CPU")
        for arm, cfg in cfgs.items():
            print(f"\n=== arm {arm}: tune.scheduler={cfg.tune.scheduler} ({time.strftime('%H:%M:%S')})", flush=True)
            start, load0 = time.time(), os.getloadavg()[0]
            summary = run_tune(cfg, verbose=verbose)
            runs[arm] = {
                "experiment_dir": str(experiment_paths(cfg)[1]),
                "wall_s": time.time() - start,
                "fit_wall_s": summary.get("wall_seconds"),
                "load_avg_start": load0,
                "load_avg_end": os.getloadavg()[0],
            }
            print(f"=== arm {arm}: {runs[arm]['wall_s']:.0f} s", flush=True)
    for run in runs.values():
        run["ray_init_s"] = ray_init_s
        run["ray_cpus"] = cpus
    return runs


# ============================================================================ the comparison


def _describe(overrides: dict[str, Any]) -> str:
    """``k=0 weighting=dwa`` from a trial's overrides (last key component; tasks keep their name)."""
    parts = []
    for key, value in overrides.items():
        name = {"model.sharing_depth": "k"}.get(key, key.split(".")[-1])
        if key.startswith("tasks."):
            name = ".".join(key.split(".")[1:])
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts) or "(base config)"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def load_arm(experiment_dir: str | Path) -> dict[str, Any]:
    """One finished arm from its experiment directory: rows (summary.json), trial records (trials.json)
    and each trial's val/aggregate at every evaluation (Tune's ``<trial>/progress.csv``, when there)."""
    exp = Path(experiment_dir)
    summary = json.loads((exp / "summary.json").read_text(encoding="utf-8"))
    records = {r["trial"]["trial_id"]: r for r in json.loads((exp / "trials.json").read_text(encoding="utf-8"))}
    curves: dict[str, list[tuple[int, float]]] = {}
    for trial_id in records:
        progress = exp / trial_id / "progress.csv"
        if progress.is_file():
            with open(progress, newline="", encoding="utf-8") as f:
                curves[trial_id] = [
                    (int(float(r["step"])), float(r["val/aggregate"]))
                    for r in csv.DictReader(f)
                    if r.get("step") and r.get("val/aggregate")
                ]
    return {"summary": summary, "records": records, "curves": curves}


def arm_stats(arm: dict[str, Any], run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-arm figures: trials, trial-steps spent, early stops, trial-seconds, best aggregate and config."""
    rows = [r for r in arm["summary"]["rows"] if r["kind"] != "single"]  # the search (and the default)
    ranked = [r for r in rows if _finite(r["aggregate"])]  # rows come sorted by aggregate, best first
    best = ranked[0] if ranked else None
    records = arm["records"]
    seconds = [records[r["trial"]]["metrics"].get("time_total_s") for r in rows]
    return {
        "trials": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
        "trial_steps": sum(int(r["steps"]) for r in rows),
        "max_steps": max((records[r["trial"]]["max_steps"] for r in rows), default=0),
        "stopped_early": sum(1 for r in rows if r["stopped_early"]),
        "trial_seconds": sum(float(s) for s in seconds if _finite(s)),
        "best_trial": best["trial"] if best else None,
        "best_aggregate": best["aggregate"] if best else None,
        "best_config": _describe(records[best["trial"]]["trial"]["overrides"]) if best else None,
        "best_stopped_early": bool(best["stopped_early"]) if best else None,
        "wall_s": (run or {}).get("wall_s"),
        "fit_wall_s": (run or {}).get("fit_wall_s"),
        "experiment_dir": (run or {}).get("experiment_dir"),
    }


def compare(
    asha: dict[str, Any], grid: dict[str, Any], runs: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The side-by-side figures of two loaded arms (see :func:`load_arm`)."""
    runs = runs or {}
    a, g = arm_stats(asha, runs.get("asha")), arm_stats(grid, runs.get("grid"))
    grid_rows = [r for r in grid["summary"]["rows"] if r["kind"] != "single" and _finite(r["aggregate"])]
    grid_rank = {r["trial"]: i + 1 for i, r in enumerate(grid_rows)}
    grid_agg = {r["trial"]: r["aggregate"] for r in grid_rows}
    asha_rows = {r["trial"]: r for r in asha["summary"]["rows"] if r["kind"] != "single"}
    per_trial = []
    for trial_id, record in grid["records"].items():
        if record["trial"]["kind"] == "single":
            continue
        ar = asha_rows.get(trial_id)
        per_trial.append(
            {
                "trial": trial_id,
                "config": _describe(record["trial"]["overrides"]),
                "grid_aggregate": grid_agg.get(trial_id),
                "grid_curve": grid.get("curves", {}).get(trial_id, []),
                "grid_rank": grid_rank.get(trial_id),
                "asha_steps": ar["steps"] if ar else None,
                "asha_aggregate": ar["aggregate"] if ar else None,
                "asha_stopped_early": ar["stopped_early"] if ar else None,
            }
        )
    # the same trial at the same budget and seed should score the same in both arms (the comparison
    # is then only about what ASHA saw); the largest difference among trials both ran to the end
    full_both = [
        abs(t["asha_aggregate"] - t["grid_aggregate"])
        for t in per_trial
        if t["asha_stopped_early"] is False and _finite(t["asha_aggregate"]) and _finite(t["grid_aggregate"])
    ]
    pick = a["best_trial"]
    out = {
        "asha": a,
        "grid": g,
        "steps_saved": g["trial_steps"] - a["trial_steps"],
        "steps_saved_pct": 100.0 * (1 - a["trial_steps"] / g["trial_steps"]) if g["trial_steps"] else math.nan,
        "trial_seconds_saved_pct": (
            100.0 * (1 - a["trial_seconds"] / g["trial_seconds"]) if g["trial_seconds"] else math.nan
        ),
        "wall_saved_pct": (
            100.0 * (1 - a["wall_s"] / g["wall_s"]) if a["wall_s"] is not None and g["wall_s"] else math.nan
        ),
        "delta_best_aggregate": (
            a["best_aggregate"] - g["best_aggregate"]
            if _finite(a["best_aggregate"]) and _finite(g["best_aggregate"])
            else math.nan
        ),
        "same_best": pick is not None and pick == g["best_trial"],
        "asha_pick_rank_in_grid": grid_rank.get(pick),
        "asha_pick_grid_aggregate": grid_agg.get(pick),
        "asha_pick_regret": (
            g["best_aggregate"] - grid_agg[pick] if pick in grid_agg and _finite(g["best_aggregate"]) else math.nan
        ),
        "full_budget_trials_in_both": len(full_both),
        "max_abs_diff_full_budget": max(full_both) if full_both else math.nan,
        "per_trial": sorted(per_trial, key=lambda t: (t["grid_rank"] is None, t["grid_rank"] or 0)),
        "grid_size": len(grid_rows),
    }
    return out


# ============================================================================ the tables


def _f(value: Any, fmt: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, fmt)
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    a, g = result["asha"], result["grid"]
    lines = [
        "| | ASHA | full grid | ASHA / grid |",
        "|---|---|---|---|",
        f"| trials | {a['trials']} | {g['trials']} | |",
        f"| trial-steps spent | {a['trial_steps']} | {g['trial_steps']} | "
        f"{_f(1 - result['steps_saved_pct'] / 100, '.3f')} (**{_f(result['steps_saved_pct'], '.1f')} % saved**) |",
        f"| trials stopped early | {a['stopped_early']} | {g['stopped_early']} | |",
        f"| trial-seconds (sum of trial times) | {_f(a['trial_seconds'], '.0f')} | {_f(g['trial_seconds'], '.0f')} | "
        f"{_f(1 - result['trial_seconds_saved_pct'] / 100, '.3f')} |",
        f"| wall time, s | {_f(a['wall_s'], '.0f')} | {_f(g['wall_s'], '.0f')} | "
        f"{_f(1 - result['wall_saved_pct'] / 100, '.3f')} |",
        f"| best val/aggregate | {_f(a['best_aggregate'])} | {_f(g['best_aggregate'])} | "
        f"Δ {_f(result['delta_best_aggregate'], '+.4f')} |",
        f"| best trial | {a['best_trial']} ({a['best_config']}) | {g['best_trial']} ({g['best_config']}) | "
        f"same: {_f(result['same_best'])} |",
        "",
        f"ASHA's pick ranks **{_f(result['asha_pick_rank_in_grid'])} of {result['grid_size']}** in the full grid "
        f"(its full-budget aggregate there {_f(result['asha_pick_grid_aggregate'])}; "
        f"regret vs the grid's best {_f(result['asha_pick_regret'], '.4f')}). "
        f"Trials that ran the full budget in both arms: {result['full_budget_trials_in_both']}, "
        f"largest |aggregate difference| between the arms {_f(result['max_abs_diff_full_budget'], '.2g')}.",
        "",
        "| grid rank | trial | config | full-grid aggregate | ... at each evaluation (step: aggregate) "
        "| ASHA steps | ASHA aggregate (at its last step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in result["per_trial"]:
        stopped = " (stopped)" if t["asha_stopped_early"] else ""
        curve = ", ".join(f"{step}: {agg:.4f}" for step, agg in t.get("grid_curve") or []) or "-"
        lines.append(
            f"| {_f(t['grid_rank'])} | {t['trial']} | {t['config']} | {_f(t['grid_aggregate'])} | {curve} | "
            f"{_f(t['asha_steps'])}{stopped} | {_f(t['asha_aggregate'])} |"
        )
    return "\n".join(lines)


def write_report(result: dict[str, Any], json_path: Path, md_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result) + "\n", encoding="utf-8")


# ============================================================================ CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Results: <out>/asha_vs_grid.{json,md}; each arm's experiment in <out>/<arm>/<tune.name>.",
    )
    p.add_argument("--config", "-c", default="configs/tune_bench.yaml", help="tune config (default %(default)s)")
    p.add_argument("--out", default=None, help="output root (default runs/bench-tune, runs/bench-tune-smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny budget (8 steps, tiny eval sets): tests the script")
    p.add_argument("--arms", default="asha,grid", help="arms to run, in order (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="delete earlier results of these arms under --out")
    p.add_argument("--report-only", action="store_true", help="only compare the finished arms under --out")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the embedded local Ray (default all)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: ray.address, $RAY_ADDRESS, local)")
    p.add_argument("--json", default=None, help="JSON results path (default <out>/asha_vs_grid.json)")
    p.add_argument("--md", default=None, help="markdown table path (default <out>/asha_vs_grid.md)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress tables (verbose=0)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both arms")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or with --report-only, re-read) both arms; print and write the comparison; return it."""
    args = parse_args(argv)
    from mtl_ray.config import load_config
    from mtl_ray.tuning.experiment import experiment_paths

    out = Path(args.out or ("runs/bench-tune-smoke" if args.smoke else "runs/bench-tune")).expanduser().resolve()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if sorted(arms) != sorted(ARMS):
        raise SystemExit(f"--arms: give both of {', '.join(ARMS)} (in the order to run them), got {args.arms!r}")
    runs: dict[str, dict[str, Any]] = {}
    command = " ".join(["python", "bench/tune_asha_vs_grid.py", *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        saved = out / "asha_vs_grid.json"
        old = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        command = old.get("command", command)  # keep what was measured when the arms ran: wall times, load
        for arm in arms:
            cfg = load_config(args.config, arm_overrides(args.config, out, arm, args.overrides, args.smoke))
            runs[arm] = {**old.get("runs", {}).get(arm, {}), "experiment_dir": str(experiment_paths(cfg)[1])}
    else:
        existing = [out / arm for arm in arms if (out / arm).exists()]
        if existing and not args.overwrite:
            raise SystemExit(f"{', '.join(map(str, existing))} exist: pass --overwrite or another --out")
        for path in existing:
            shutil.rmtree(path)
        runs = run_arms(
            args.config,
            out,
            args.overrides,
            smoke=args.smoke,
            arms=arms,
            num_cpus=args.num_cpus,
            address=args.address,
            verbose=0 if args.quiet else 1,
        )
    loaded = {arm: load_arm(runs[arm]["experiment_dir"]) for arm in arms}
    result = compare(loaded["asha"], loaded["grid"], runs)
    result["command"] = command
    result["config"] = args.config
    result["overrides"] = args.overrides
    result["smoke"] = args.smoke
    result["runs"] = runs
    json_path = Path(args.json) if args.json else out / "asha_vs_grid.json"
    md_path = Path(args.md) if args.md else out / "asha_vs_grid.md"
    write_report(result, json_path, md_path)
    print("\n" + markdown(result))
    print(f"\nresults: {json_path}, {md_path}; experiments: {', '.join(r['experiment_dir'] for r in runs.values())}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
