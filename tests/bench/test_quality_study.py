"""bench/quality: the arms it trains, the budget rule and the tables' arithmetic (no training here;
tests/integration/test_quality_smoke.py runs the whole study on tiny slices)."""

import csv
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "quality"))

from study_arms import MLM, UNLABELED, Budget, build_runs, default_arm_names, study_arms, with_dependencies  # noqa: E402
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


def test_arms_cover_the_study_and_the_default_set_leaves_out_the_old_arms():
    names = [a.name for a in study_arms(6)]
    assert names[:20] == [
        "single_task",
        "hard_sharing",
        "hard_proportional",
        "hard_uniform",
        "hard_annealed",
        "hard_balanced",
        "hard_mixed",
        "hard_mixed_unscaled",
        "hard_kd",
        "hard_mlm",
        "hard_mixed_mlm",
        "mlm_stage0",
        "hard_mlm_stage0",
        "mlm_stage0_warm",
        "hard_mlm_stage0_warm",
        "single_es",
        "hard_es",
        "hard_kd_es",
        "hard_mlm_es",
        "hard_mixed_es",
    ]
    assert names[20:] == [
        "tops_k5",
        "tops_k4",
        "tops_k3",
        "tops_mixed_k5",
        "tops_mixed_k4",
        "tops_mlm_k5",
        "depth_k4",
        "depth_k2",
        "depth_k0",
        "uncertainty",
        "dwa",
        "unsupervised",
    ]
    default = default_arm_names(6)
    assert "dwa" not in default and "depth_k0" not in default and "tops_k3" in default
    assert [a.name for a in study_arms(2)][-3:] == ["uncertainty", "dwa", "unsupervised"]
    assert "tops_k3" not in [a.name for a in study_arms(2)]  # k must be < L


def test_dependencies_are_added_and_ordered_first():
    arms = study_arms(6)
    by_name = {a.name: a for a in arms}
    assert [a.name for a in with_dependencies(arms, [by_name["tops_k4"]])] == ["hard_es", "tops_k4"]
    assert [a.name for a in with_dependencies(arms, [by_name["hard_kd"], by_name["hard_uniform"]])] == [
        "single_task",
        "hard_uniform",
        "hard_kd",
    ]


def test_runs_share_the_training_compute_and_differ_only_where_the_arm_says():
    names = ["single_task", "hard_sharing", "depth_k2", "dwa", "unsupervised", "hard_mlm", "hard_mixed_mlm", "hard_kd"]
    arms = [a for a in study_arms(6) if a.name in names]
    runs = build_runs(_base(), arms, [0, 1], 100, "/out")
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
    assert by_id["hard_mlm/seed0"].config["tasks"][MLM]["type"] == "mlm"
    assert by_id["hard_mlm/seed0"].config["train"]["sampler"] == "balanced"
    mixed_mlm = by_id["hard_mixed_mlm/seed1"].config
    assert mixed_mlm["tasks"][MLM]["type"] == "mlm" and mixed_mlm["train"]["sampler"] == "balanced"
    assert mixed_mlm["train"]["mixed_batches"] is True and mixed_mlm["train"]["loss_scaling"] == "auto"
    assert by_id["hard_kd/seed1"].config["train"]["distill_from"] == "/out/single_task/seed1"
    assert UNLABELED not in by_id["hard_sharing/seed0"].config["tasks"]
    assert "early_stopping_patience" not in by_id["hard_sharing/seed0"].config["train"]
    assert by_id["single_task/seed0/b"].config["train"]["output_dir"] == "/out/single_task/seed0/b"
    assert len({r.config["train"]["output_dir"] for r in runs}) == len(runs)


def test_converged_runs_early_stop_under_a_cap_and_stage2_starts_from_the_best_stage1():
    arms = with_dependencies(study_arms(6), [a for a in study_arms(6) if a.name in ("single_es", "tops_k4")])
    budget = Budget(
        single_max_steps=300,
        single_eval_every=30,
        multi_max_steps=900,
        multi_eval_every=90,
        tops_max_steps=200,
        tops_eval_every=20,
        patience=3,
    )
    by_id = {r.run_id: r for r in build_runs(_base(), arms, [2], 100, "/out", budget)}
    single, hard, tops = by_id["single_es/seed2/a"], by_id["hard_es/seed2"], by_id["tops_k4/seed2"]
    assert (single.steps, single.config["train"]["eval_every"]) == (300, 30)
    assert (hard.steps, hard.config["train"]["eval_every"]) == (900, 90)
    assert (tops.steps, tops.config["train"]["eval_every"]) == (200, 20)
    assert {r.config["train"]["early_stopping_patience"] for r in (single, hard, tops)} == {3}
    assert tops.config["model"]["init_from"] == "@best:hard_es/seed2"
    assert tops.config["model"]["sharing_depth"] == 4 and tops.config["train"]["freeze_shared"] is True


def test_stage2_on_the_mlm_trunk_starts_from_the_early_stopped_mlm_run_without_the_mlm_task():
    arms = with_dependencies(study_arms(6), [a for a in study_arms(6) if a.name == "tops_mlm_k5"])
    assert [a.name for a in arms] == ["hard_mlm_es", "tops_mlm_k5"]
    by_id = {r.run_id: r for r in build_runs(_base(), arms, [1], 100, "/out")}
    stage1, tops = by_id["hard_mlm_es/seed1"], by_id["tops_mlm_k5/seed1"]
    assert stage1.config["tasks"][MLM]["type"] == "mlm" and stage1.config["train"]["early_stopping_patience"] == 4
    assert stage1.arm.keep_checkpoints and stage1.steps == Budget().multi_max_steps
    assert MLM not in tops.config["tasks"] and tops.config["model"]["init_from"] == "@best:hard_mlm_es/seed1"
    assert tops.config["model"]["sharing_depth"] == 5 and tops.config["train"]["early_stopping_per_task"] is True
    assert "tops_mlm_k5" not in [a.name for a in study_arms(5)]  # k must be < L


def test_stage2_on_the_mixed_batch_trunk_starts_from_the_early_stopped_mixed_run():
    arms = with_dependencies(study_arms(6), [a for a in study_arms(6) if a.name == "tops_mixed_k4"])
    assert [a.name for a in arms] == ["hard_mixed_es", "tops_mixed_k4"]
    by_id = {r.run_id: r for r in build_runs(_base(), arms, [2], 100, "/out")}
    stage1, tops = by_id["hard_mixed_es/seed2"], by_id["tops_mixed_k4/seed2"]
    assert stage1.config["train"]["mixed_batches"] is True and stage1.config["train"]["loss_scaling"] == "auto"
    assert stage1.config["train"]["sampler"] == "uniform" and stage1.config["train"]["early_stopping_patience"] == 4
    assert stage1.arm.keep_checkpoints and stage1.steps == Budget().multi_max_steps
    assert tops.config["model"]["init_from"] == "@best:hard_mixed_es/seed2"
    assert tops.config["model"]["sharing_depth"] == 4 and tops.config["train"]["freeze_shared"] is True
    assert "mixed_batches" not in tops.config["train"]  # stage 2 trains each tower on its own task's batches


def test_mlm_stage0_takes_the_mlm_share_of_the_steps_and_the_supervised_run_the_rest():
    arms = with_dependencies(study_arms(6), [a for a in study_arms(6) if a.name == "hard_mlm_stage0"])
    assert [a.name for a in arms] == ["mlm_stage0", "hard_mlm_stage0"]
    base = _base()
    base["tasks"]["p"] = {"type": "pair_classification", "source": "p.csv"}
    by_id = {r.run_id: r for r in build_runs(base, arms, [1], 600, "/out")}
    stage0, after = by_id["mlm_stage0/seed1"], by_id["hard_mlm_stage0/seed1"]
    # 3 supervised tasks: hard_mlm's mlm task would get 1/4 of 600 steps; each supervised task 150 either way
    assert (stage0.steps, after.steps) == (150, 450)
    assert sorted(stage0.config["tasks"]) == ["mlm_a", "mlm_b", "mlm_unlabeled"]  # no pair task: one text field
    assert {t["type"] for t in stage0.config["tasks"].values()} == {"mlm"}
    assert stage0.config["tasks"]["mlm_a"]["source"] == "a.csv" and stage0.arm.keep_checkpoints
    assert after.config["model"]["init_from"] == "@best:mlm_stage0/seed1"
    assert sorted(after.config["tasks"]) == ["a", "b", "p"] and after.config["train"]["sampler"] == "balanced"


def test_the_warm_stage0_trains_the_mlm_heads_alone_for_its_first_half():
    arms = with_dependencies(study_arms(6), [a for a in study_arms(6) if a.name == "hard_mlm_stage0_warm"])
    assert [a.name for a in arms] == ["mlm_stage0_warm", "hard_mlm_stage0_warm"]
    by_id = {r.run_id: r for r in build_runs(_base(), arms, [0], 600, "/out")}
    stage0, after = by_id["mlm_stage0_warm/seed0"], by_id["hard_mlm_stage0_warm/seed0"]
    assert (stage0.steps, after.steps) == (200, 400)  # 2 supervised tasks: the same split as mlm_stage0
    assert {name: t["head_warmup_steps"] for name, t in stage0.config["tasks"].items()} == {
        "mlm_a": 100,
        "mlm_b": 100,
        "mlm_unlabeled": 100,
    }
    assert after.config["model"]["init_from"] == "@best:mlm_stage0_warm/seed0"
    assert all("head_warmup_steps" not in t for t in after.config["tasks"].values())


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
    assert hard["serve_replicas"] == 3 and single["serve_replicas"] == 4  # 1 encoder + 2 heads; 2 × (1 + 1)
    # without the derived task (bbc_headline_match is not among a, b): the same Δm%
    assert hard["delta_m_without_derived"][0] == pytest.approx(hard["delta_m"][0])

    text = markdown(list(rows.values()))
    assert (
        "| hard sharing k=6, temperature T=2 | equal | 2 | 10 | 0.0 M | 6 | 3 | 0.750 ± 0.212 | 0.525 ± 0.106 |" in text
    )
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


def test_delta_m_without_the_derived_pair_task(tmp_path):
    types = {"a": "classification", "bbc_headline_match": "pair_classification"}

    def rec(arm, test, task=None):
        return {"arm": arm, "seed": 0, "task": task, "steps": 5, "params": 1, "task_types": types, "test": test}

    records = [
        rec("single_task", {"a": {"accuracy": 0.80}}, "a"),
        rec("single_task", {"bbc_headline_match": {"accuracy": 0.50}}, "bbc_headline_match"),
        rec("hard_sharing", {"a": {"accuracy": 0.88}, "bbc_headline_match": {"accuracy": 0.40}}),
    ]
    hard = {r["arm"]: r for r in summarize(records, study_arms(6), 6)}["hard_sharing"]
    assert hard["delta_m"][0] == pytest.approx((10.0 - 20.0) / 2)
    assert hard["delta_m_without_derived"][0] == pytest.approx(10.0)


def test_stage2_config_resolves_to_the_stage1_best_checkpoint(tmp_path):
    import json

    import study

    runs = tmp_path / "runs"
    cfg = {"model": {"init_from": "@best:hard_es/seed0"}, "train": {}}
    with pytest.raises(study.DependencyMissing, match="hard_es/seed0"):
        study.resolve(cfg, runs)
    (runs / "hard_es" / "seed0").mkdir(parents=True)
    (runs / "hard_es" / "seed0" / "result.json").write_text(json.dumps({"best_checkpoint": "checkpoints/step_40"}))
    with pytest.raises(study.DependencyMissing, match="hard_es/seed0"):
        study.resolve(cfg, runs)  # its checkpoints were not kept (e.g. results copied without them)
    (runs / "hard_es" / "seed0" / "checkpoints").mkdir()
    resolved = study.resolve(cfg, runs)
    assert resolved["model"]["init_from"] == str(runs / "hard_es" / "seed0" / "checkpoints" / "step_40")
    assert cfg["model"]["init_from"] == "@best:hard_es/seed0"  # the run's own config is not changed
    kd = {
        "tasks": {"a": {"type": "classification"}, "b": {"type": "regression"}},
        "train": {"distill_from": str(runs / "single_task" / "seed0")},
    }
    (runs / "single_task" / "seed0" / "a").mkdir(parents=True)
    (runs / "single_task" / "seed0" / "a" / "result.json").write_text("{}")
    (runs / "single_task" / "seed0" / "a" / "checkpoints").mkdir()
    with pytest.raises(study.DependencyMissing, match="single_task/seed0"):
        study.resolve(kd, runs)  # task b's teacher has not finished
    (runs / "single_task" / "seed0" / "b").mkdir(parents=True)
    (runs / "single_task" / "seed0" / "b" / "result.json").write_text("{}")
    (runs / "single_task" / "seed0" / "b" / "checkpoints").mkdir()
    assert study.resolve(kd, runs)["train"]["distill_from"] == str(runs / "single_task" / "seed0")


def test_a_teacher_run_without_its_checkpoints_is_not_finished(tmp_path):
    import study

    arms = {a.name: a for a in study_arms(6)}
    (teacher,) = [r for r in build_runs(_base(), [arms["single_task"]], [0], 100, str(tmp_path)) if r.task == "a"]
    (hard,) = build_runs(_base(), [arms["hard_sharing"]], [0], 100, str(tmp_path))
    for run in (teacher, hard):
        Path(run.config["train"]["output_dir"]).mkdir(parents=True)
        (Path(run.config["train"]["output_dir"]) / "result.json").write_text("{}")
    assert study.finished(hard) is True  # nobody reads hard_sharing's checkpoints
    assert study.finished(teacher) is False  # distillation reads them: retrained
    (Path(teacher.config["train"]["output_dir"]) / "checkpoints").mkdir()
    assert study.finished(teacher) is True


def test_an_interrupted_run_resumes_from_its_latest_readable_checkpoint_of_the_same_config(tmp_path):
    import study
    import torch

    from mtl_ray.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert study.resume_point(out, "a: 1\n") is None  # never started
    out.mkdir()
    (out / "config.yaml").write_text("a: 1\n")
    assert study.resume_point(out, "a: 1\n") is None  # started, no checkpoint kept yet: start over
    for step in (100, 200, 300):
        save_checkpoint(out / "checkpoints" / f"step-{step:07d}", model_state={"w": torch.zeros(2)}, meta={"s": step})
    (out / "checkpoints" / "step-0000300" / "meta.json").write_text("{}")  # torn: fails its sha256
    assert study.resume_point(out, "a: 1\n") == out / "checkpoints" / "step-0000200"
    assert study.resume_point(out, "a: 2\n") is None  # another config: its checkpoints are not this run's
