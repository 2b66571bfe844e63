"""bench/quality: the arms it trains, the budget rule and the tables' arithmetic (no training here;
tests/integration/test_quality_smoke.py runs the whole study on tiny slices)."""

import csv
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "quality"))

from study_arms import UNLABELED, build_runs, study_arms  # noqa: E402
from study_report import layers_per_request, markdown, summarize, write_csv  # noqa: E402

TYPES = {"a": "classification", "b": "regression"}


def _base():
    return {
        "tasks": {
            "a": {"type": "classification", "source": "a.csv"},
            "b": {"type": "regression", "source": "b.csv"},
        },
        "model": {"encoder": "x", "sharing_depth": 6},
        "train": {"batch_size": 16, "log_every": 20},
    }


def test_arms_cover_the_study():
    names = [a.name for a in study_arms(6)]
    assert names == [
        "single_task",
        "hard_sharing",
        "depth_k4",
        "depth_k2",
        "depth_k0",
        "uncertainty",
        "dwa",
        "unsupervised",
    ]
    assert [a.name for a in study_arms(2)] == [
        "single_task",
        "hard_sharing",
        "depth_k0",
        "uncertainty",
        "dwa",
        "unsupervised",
    ]


def test_runs_share_the_training_compute_and_differ_only_where_the_arm_says():
    runs = build_runs(_base(), study_arms(6), [0, 1], 100, "/out")
    assert len(runs) == 2 * (2 + 7)  # per seed: one single-task run per task + 7 multi-task arms
    single = [r for r in runs if r.arm.kind == "single"]
    multi = [r for r in runs if r.arm.kind == "multi"]
    assert {r.steps for r in single} == {50} and {r.steps for r in multi} == {100}
    assert sum(r.steps for r in single if r.seed == 0) == 100  # same examples seen by the two systems
    assert [list(r.config["tasks"]) for r in single if r.seed == 0] == [["a"], ["b"]]
    by_id = {r.run_id: r for r in runs}
    assert by_id["depth_k2/seed1"].config["model"]["sharing_depth"] == 2
    assert by_id["depth_k2/seed1"].config["train"]["seed"] == 1
    assert by_id["dwa/seed0"].config["train"]["weighting"] == "dwa"
    assert by_id["unsupervised/seed0"].config["tasks"][UNLABELED]["type"] == "contrastive"
    assert UNLABELED not in by_id["hard_sharing/seed0"].config["tasks"]
    assert by_id["single_task/seed0/b"].config["train"]["output_dir"] == "/out/single_task/seed0/b"
    assert len({r.config["train"]["output_dir"] for r in runs}) == len(runs)


def test_too_few_steps_for_the_tasks_is_an_error():
    with pytest.raises(ValueError, match="less than one step per task"):
        build_runs(_base(), study_arms(6), [0], 1, "/out")


def test_layers_per_request():
    arms = {a.name: a for a in study_arms(6)}
    assert layers_per_request(arms["single_task"], 6, 5) == 30
    assert layers_per_request(arms["hard_sharing"], 6, 5) == 6
    assert layers_per_request(arms["depth_k2"], 6, 5) == 2 + 5 * 4
    assert layers_per_request(arms["depth_k0"], 6, 5) == 30


def _rec(arm, seed, test, params, task=None):
    return {
        "arm": arm,
        "seed": seed,
        "task": task,
        "steps": 10,
        "params": params,
        "train_seconds": 1.0,
        "task_types": {t: TYPES[t] for t in test},
        "test": test,
    }


def test_summary_matches_a_hand_computation(tmp_path):
    records = [
        _rec("single_task", 0, {"a": {"accuracy": 0.80, "macro_f1": 0.7}}, 100, "a"),
        _rec("single_task", 0, {"b": {"pearson": 0.50, "mse": 1.0}}, 110, "b"),
        _rec("single_task", 1, {"a": {"accuracy": 0.70, "macro_f1": 0.6}}, 100, "a"),
        _rec("single_task", 1, {"b": {"pearson": 0.70, "mse": 0.9}}, 110, "b"),
        _rec("hard_sharing", 0, {"a": {"accuracy": 0.90}, "b": {"pearson": 0.60}}, 120),
        _rec("hard_sharing", 1, {"a": {"accuracy": 0.60}, "b": {"pearson": 0.45}}, 120),
    ]
    rows = {r["arm"]: r for r in summarize(records, study_arms(6), 6)}
    assert set(rows) == {"single_task", "hard_sharing"}  # arms without results are left out
    single, hard = rows["single_task"], rows["hard_sharing"]
    assert single["params"] == 210 and hard["params"] == 120  # single-task: the five models summed
    assert single["per_task"]["a"] == pytest.approx((0.75, statistics.stdev([0.8, 0.7])))
    # baselines: a = 0.75, b = 0.60 (means over seeds)
    d0 = ((0.90 - 0.75) / 0.75 * 100 + (0.60 - 0.60) / 0.60 * 100) / 2
    d1 = ((0.60 - 0.75) / 0.75 * 100 + (0.45 - 0.60) / 0.60 * 100) / 2
    assert hard["delta_m"][0] == pytest.approx(statistics.fmean([d0, d1]))
    assert hard["delta_m"][1] == pytest.approx(statistics.stdev([d0, d1]))
    assert hard["task_delta_pct"]["b"][0] == pytest.approx(statistics.fmean([0.0, -25.0]))
    assert single["delta_m"][0] == pytest.approx(0.0, abs=1e-9)
    assert hard["layers_per_request"] == 6 and single["layers_per_request"] == 12

    text = markdown(list(rows.values()))
    assert "| hard sharing k=6, static equal | 2 | 0.0 M | 6 | 0.750 ± 0.212 | 0.525 ± 0.106 |" in text
    write_csv(records, tmp_path / "r.csv")
    lines = list(csv.DictReader(open(tmp_path / "r.csv", encoding="utf-8")))
    assert len(lines) == 2 + 2 + 2 + 2 + 2 + 2  # one row per (run, task, metric)
    assert not math.isnan(float(lines[0]["value"]))


def test_run_locks_let_study_processes_share_a_folder(tmp_path):
    import os
    import subprocess

    import study

    run = tmp_path / "runs" / "dwa" / "seed0"
    assert study.claim(run) is True
    assert (tmp_path / "runs" / "dwa" / "seed0.lock").read_text() == str(os.getpid())
    assert study.claim(run) is False  # held by a live process (this one)
    study.release(run)
    assert not (tmp_path / "runs" / "dwa" / "seed0.lock").exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "runs" / "dwa" / "seed0.lock").write_text(str(dead.pid))
    assert study.claim(run) is True  # stale lock of a finished process: taken over
