"""bench/tune_asha_vs_grid.py on a real local Ray (tiny encoder, tiny tasks, --smoke): both arms run,
and the comparison table agrees with what each experiment wrote (results.csv): total trial-steps are
the sum of the per-trial steps, the grid arm stops nothing, ASHA stops the hopeless trials and spends
fewer steps, the best aggregates, ranks and ratios follow from the rows.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import tiny_config_dict

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 20


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench_tune_asha_vs_grid", REPO / "bench" / "tune_asha_vs_grid.py")


@pytest.fixture(scope="module")
def config_path(tiny_encoder_dir, tiny_task_files, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-tune-config")
    d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, root / "unused", lr=3e-3)
    del d["tasks"]["match"]
    d["tune"] = {
        "name": "bench",
        "search_alg": "grid",
        "baselines": False,
        "include_default": False,
        # lr outermost: the two lr = 1e-7 trials (which cannot learn) come after two that do, so ASHA
        # has results at its first rung to compare them with and stops them at step 5
        "search_space": {"train.lr": {"choice": [3e-3, 1e-7]}, "model.sharing_depth": {"choice": [0, 4]}},
        "reduction_factor": 2,
        "max_concurrent_trials": 1,  # trials in list order: the ASHA decisions are reproducible
    }
    path = root / "tune.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")  # key order = grid order
    return path


@pytest.fixture(scope="module")
def ran(bench, config_path, train_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-tune") / "out"
    # --smoke caps the data (64 train / 16 validation examples, 32 tokens); the budget is set back to
    # 20 steps with evaluations / rungs every 5 so ASHA's cut is the one tests/integration/test_ray_tune.py checks
    argv = ["--config", str(config_path), "--smoke", "--quiet", "--out", str(out)]
    budget = [f"train.max_steps={STEPS}", "train.eval_every=5", "tune.grace_period=5"]
    return out, argv, budget, bench.main([*argv, *budget])


def _csv_rows(experiment_dir: str) -> list[dict]:
    with open(Path(experiment_dir) / "results.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_table_matches_the_experiments_results(ran):
    out, _, _, result = ran
    rows = {}
    for arm in ("asha", "grid"):
        stats = result[arm]
        assert Path(stats["experiment_dir"]) == out / arm / "bench"
        rows[arm] = _csv_rows(stats["experiment_dir"])
        assert stats["trials"] == len(rows[arm]) == 4
        assert stats["errors"] == 0 and not any(r["error"] for r in rows[arm])
        assert stats["trial_steps"] == sum(int(r["steps"]) for r in rows[arm])
        assert stats["stopped_early"] == sum(r["stopped_early"] == "True" for r in rows[arm])
        best = max(rows[arm], key=lambda r: float(r["aggregate"]))
        assert stats["best_trial"] == best["trial"]
        assert stats["best_aggregate"] == pytest.approx(float(best["aggregate"]))
        assert stats["wall_s"] > 0 and stats["trial_seconds"] > 0
    # the full grid runs every trial to the end; ASHA stops the lr = 1e-7 trials at the first rung
    assert result["grid"]["stopped_early"] == 0 and result["grid"]["trial_steps"] == 4 * STEPS
    assert all(int(r["steps"]) == STEPS for r in rows["grid"])
    steps = {r["trial"]: int(r["steps"]) for r in rows["asha"]}
    stopped = {r["trial"] for r in rows["asha"] if r["stopped_early"] == "True"}
    assert steps["search-000"] == STEPS  # the first trial has nothing to be compared with
    assert steps["search-002"] == steps["search-003"] == 5 and {"search-002", "search-003"} <= stopped
    spent = result["asha"]["trial_steps"]
    assert spent == sum(steps.values()) < result["grid"]["trial_steps"]
    assert result["steps_saved"] == 4 * STEPS - spent
    assert result["steps_saved_pct"] == pytest.approx(100 * (1 - spent / (4 * STEPS)))
    assert result["delta_best_aggregate"] == pytest.approx(
        result["asha"]["best_aggregate"] - result["grid"]["best_aggregate"]
    )
    grid_order = [r["trial"] for r in sorted(rows["grid"], key=lambda r: -float(r["aggregate"]))]
    pick = result["asha"]["best_trial"]
    assert result["asha_pick_rank_in_grid"] == grid_order.index(pick) + 1
    assert result["same_best"] == (pick == result["grid"]["best_trial"])
    # same trial, same seed, same budget: the arms agree on every trial both ran to the end, so the
    # comparison is only about what ASHA stopped
    assert result["full_budget_trials_in_both"] == 4 - len(stopped) >= 1
    assert result["max_abs_diff_full_budget"] <= 1e-6
    per_trial = {t["trial"]: t for t in result["per_trial"]}
    assert set(per_trial) == {f"search-00{i}" for i in range(4)}
    assert per_trial["search-002"]["config"] == "lr=1e-07 k=0"
    assert per_trial["search-002"]["asha_steps"] == 5 and per_trial["search-002"]["asha_stopped_early"]
    for t in per_trial.values():  # the grid arm's evaluations, from Tune's progress.csv
        assert [step for step, _ in t["grid_curve"]] == [5, 10, 15, 20]
        assert t["grid_curve"][-1][1] == pytest.approx(t["grid_aggregate"])


def test_results_are_written_and_report_only_rereads_them(bench, ran):
    out, argv, budget, result = ran
    saved = json.loads((out / "asha_vs_grid.json").read_text())
    assert saved["asha"]["trial_steps"] == result["asha"]["trial_steps"]
    assert saved["steps_saved_pct"] == pytest.approx(result["steps_saved_pct"])
    md = (out / "asha_vs_grid.md").read_text()
    spent = result["asha"]["trial_steps"]
    assert f"| trial-steps spent | {spent} | {4 * STEPS} |" in md
    assert f"{result['steps_saved_pct']:.1f} % saved" in md
    again = bench.main([*argv, "--report-only", *budget])  # no Ray, no training: the table only
    assert again["asha"]["trial_steps"] == spent and again["grid"]["best_trial"] == result["grid"]["best_trial"]
    assert again["grid"]["wall_s"] == pytest.approx(result["grid"]["wall_s"])
    assert not math.isnan(again["delta_best_aggregate"])
    with pytest.raises(SystemExit, match="--overwrite"):  # never mixes a new run into old results
        bench.main([*argv, *budget])


def test_help(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--help"])
    assert exc.value.code == 0
    assert "tune.scheduler=none" in capsys.readouterr().out
