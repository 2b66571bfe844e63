"""Ray Tune on a real local Ray (tiny model, 1-worker trials through the plain loop): a 5-trial search
finishes, ASHA stops the hopeless trial early, the single-task baselines and Δm% are in the table and
equal a hand computation from the trial results, the exported best config trains, a request that does
not fit the cluster fails before any trial, and an interrupted experiment resumes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict, load_config
from mtl_ray.errors import ConfigError
from mtl_ray.ray.tune import run_tune
from mtl_ray.training.run import train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 20


def make_config(encoder: Path, files: dict, out: Path, **tune):
    d = tiny_config_dict(encoder, files, out, max_steps=STEPS, eval_every=5, log_every=10, lr=3e-3)
    del d["tasks"]["match"]
    d["tune"] = {
        "name": "exp",
        "search_alg": "grid",
        # lr 1e-7 cannot learn in 20 steps: ASHA must stop it at the first rung (step 5)
        "search_space": {"train.lr": {"choice": [3e-3, 1e-7]}, "model.sharing_depth": {"choice": [0]}},
        "grace_period": 5,
        "reduction_factor": 2,
        "max_concurrent_trials": 1,  # trials in list order: the ASHA decision is reproducible
        **tune,
    }
    return config_from_dict(d)


@pytest.fixture(scope="module")
def search(train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path_factory):
    cfg = make_config(tiny_encoder_dir, tiny_task_files, tmp_path_factory.mktemp("tune"))
    return cfg, run_tune(cfg, verbose=0)


def test_search_finishes_with_baselines_and_asha_stops(search):
    cfg, summary = search
    rows = {r["trial"]: r for r in summary["rows"]}
    assert set(rows) == {"single-sentiment", "single-score", "default", "search-000", "search-001"}
    assert not any(r["error"] for r in rows.values())
    assert rows["search-001"]["stopped_early"] and rows["search-001"]["steps"] == 5
    for name in ("single-sentiment", "single-score", "default"):  # baselines and the default: full budget
        assert rows[name]["steps"] == STEPS and not rows[name]["stopped_early"]
    assert rows["default"]["k"] == 4  # sharing_depth None -> k = L of the tiny encoder
    assert summary["num_stopped_early"] >= 1
    out = Path(summary["output_dir"])
    for name in (
        "results.csv",
        "results.md",
        "best_config.yaml",
        "score_vs_sharing_depth.png",
        "metric_vs_loss_weight.png",
    ):
        assert (out / name).is_file(), name
    assert summary["best_checkpoint"] and Path(summary["best_checkpoint"]).is_dir()


def test_delta_m_matches_a_hand_computation(search):
    _, summary = search
    trials = {
        r["trial"]["trial_id"]: r["metrics"]
        for r in json.loads((Path(summary["output_dir"]) / "trials.json").read_text())
    }
    single = {
        "sentiment": trials["single-sentiment"]["single/val/sentiment/accuracy"],
        "score": trials["single-score"]["single/val/score/pearson"],
    }
    for row in summary["rows"]:
        if row["kind"] == "single":
            continue
        m = trials[row["trial"]]
        want = (
            (m["val/sentiment/accuracy"] - single["sentiment"]) / single["sentiment"] * 100
            + (m["val/score/pearson"] - single["score"]) / abs(single["score"]) * 100
        ) / 2
        assert row["delta_m_pct"] == pytest.approx(want), row["trial"]
        assert row["aggregate"] == pytest.approx((m["val/sentiment/accuracy"] + m["val/score/pearson"]) / 2)
    aggs = [r["aggregate"] for r in summary["rows"] if r["kind"] != "single"]
    assert aggs == sorted(aggs, reverse=True) and not any(math.isnan(a) for a in aggs)


def test_exported_best_config_trains(search, tmp_path):
    _, summary = search
    cfg = load_config(
        summary["best_config"], [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.eval_every=2"]
    )
    best = next(r for r in summary["rows"] if r["trial"] == summary["best_trial"])
    assert cfg.train.lr == best["lr"] and (cfg.model.sharing_depth or 4) == best["k"]
    assert train(cfg, progress=False)["steps"] == 2


def test_too_many_concurrent_trials_fail_before_any_trial(train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, tiny_task_files, tmp_path, max_concurrent_trials=5)
    with pytest.raises(ConfigError, match="tune.max_concurrent_trials: 5 trials"):
        run_tune(cfg, verbose=0)
    assert not (tmp_path / "exp" / "trials").exists()
    bad = make_config(
        tiny_encoder_dir, tiny_task_files, tmp_path, search_space={"model.sharing_depth": {"choice": [9]}}
    )
    with pytest.raises(ConfigError, match=r"sharing_depth: 9 is outside \[0, 4\]"):
        run_tune(bad, verbose=0)


@pytest.mark.parametrize("alg", ["grid", "optuna"])
def test_interrupted_experiment_resumes(train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path, alg):
    """`mtl-ray tune` in its own process gets Ctrl-C (SIGINT) once the second trial has checkpointed;
    `run_tune(resume=...)` then finishes the same trials, the interrupted one from its checkpoint.
    optuna: the searcher's state (fixed trials handed out, the study) comes back with the experiment, so
    the resumed search neither repeats a fixed trial nor asks for more than num_samples suggestions."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from mtl_ray.config import config_to_dict

    if alg == "optuna":
        pytest.importorskip("optuna")
    extra = {"search_alg": "optuna", "num_samples": 1} if alg == "optuna" else {}
    cfg = make_config(
        tiny_encoder_dir, tiny_task_files, tmp_path, search_space={"train.lr": {"choice": [3e-3]}}, **extra
    )
    data = config_to_dict(cfg)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(data))
    exp = Path(cfg.train.output_dir) / "exp"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtl_ray.cli", "tune", "--config", str(tmp_path / "tune.yaml"), "--num-cpus", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not list((exp / "single-score").glob("checkpoint_*")):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ctrl-C mid-search: either Tune stopped gracefully (tables of the partial results written) or the
    # driver was interrupted outright; in both cases the experiment state is on disk and work is left
    assert "trial-steps spent: 80" not in out, out[-3000:]
    assert (exp / "mtl_tune_setup.json").is_file() and list(exp.glob("experiment_state*.json")), out[-3000:]

    summary = run_tune(None, resume=str(exp), verbose=0)
    rows = {r["trial"]: r for r in summary["rows"]}
    assert set(rows) == {"single-sentiment", "single-score", "default", "search-000"}
    assert all(r["steps"] == STEPS and not r["error"] for r in rows.values()), rows
    assert not math.isnan(rows["default"]["delta_m_pct"])


# --------------------------------------------------------------------------- optuna (TPE) search

OPTUNA_SPACE = {
    "train.lr": {"loguniform": [1e-3, 1e-2]},
    "model.sharing_depth": {"choice": [0, 2, 4]},
    "tasks.*.loss_weight": {"simplex": True},
}


@pytest.fixture(scope="module")
def optuna_search_result(train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path_factory):
    pytest.importorskip("optuna")
    cfg = make_config(
        tiny_encoder_dir,
        tiny_task_files,
        tmp_path_factory.mktemp("tune-optuna"),
        search_alg="optuna",
        num_samples=3,
        seed=7,
        search_space=OPTUNA_SPACE,
        include_default=False,
        scheduler="none",
    )
    started = time.time()
    summary = run_tune(cfg, verbose=0)
    return cfg, summary, time.time() - started


def test_optuna_search_finishes_with_every_trial_and_delta_m(optuna_search_result):
    cfg, summary, seconds = optuna_search_result
    print(f"optuna search: {seconds:.1f} s")
    rows = {r["trial"]: r for r in summary["rows"]}
    assert set(rows) == {"single-sentiment", "single-score", "search-000", "search-001", "search-002"}
    assert not any(r["error"] for r in rows.values()), rows
    assert all(r["steps"] == STEPS for r in rows.values())
    records = {r["trial"]["trial_id"]: r for r in json.loads((Path(summary["output_dir"]) / "trials.json").read_text())}
    for name in ("search-000", "search-001", "search-002"):
        row, params = rows[name], records[name]["search_params"]
        assert not math.isnan(row["delta_m_pct"]) and not math.isnan(row["aggregate"])
        # the trial trained what Optuna suggested: lr and k as drawn, the weights -log(u) normalised to sum 2
        assert row["lr"] == pytest.approx(params["train.lr"]) and 1e-3 <= row["lr"] <= 1e-2
        assert row["k"] == params["model.sharing_depth"] and row["k"] in (0, 2, 4)
        e = {t: -math.log(params[f"simplex:tasks.{t}.loss_weight"]) for t in ("score", "sentiment")}
        weights = records[name]["config"]["tasks"]
        for t in e:
            assert weights[t]["loss_weight"] == pytest.approx(2 * e[t] / sum(e.values()))
        assert Path(row["checkpoint"]).is_dir()
    # Δm% of a search trial equals the hand computation from its and the baselines' raw metrics
    m, s1, s2 = (records[n]["metrics"] for n in ("search-000", "single-sentiment", "single-score"))
    want = (
        (m["val/sentiment/accuracy"] - s1["single/val/sentiment/accuracy"]) / s1["single/val/sentiment/accuracy"]
        + (m["val/score/pearson"] - s2["single/val/score/pearson"]) / abs(s2["single/val/score/pearson"])
    ) * 50
    assert rows["search-000"]["delta_m_pct"] == pytest.approx(want)
    out = Path(summary["output_dir"])
    assert (out / "results.md").is_file() and (out / "best_config.yaml").is_file()
    assert summary["best_trial"] in {"search-000", "search-001", "search-002"}


def test_optuna_suggestions_are_seeded(optuna_search_result):
    """TPE's start-up trials are drawn by its seeded sampler: a fresh searcher with tune.seed suggests
    exactly the parameters the search trained (the fixed trials come first, in list order)."""
    from mtl_ray.ray.searcher import optuna_search
    from mtl_ray.tuning.experiment import plan

    cfg, summary, _ = optuna_search_result
    base, fixed = plan(cfg)
    searcher = optuna_search(cfg.tune, base, fixed, concurrency=len(fixed) + 3)
    got = [searcher.suggest(f"t{i}") for i in range(len(fixed) + 3)]
    assert [g["trial"]["trial_id"] for g in got] == ["single-score", "single-sentiment", *rows_of(3)]
    records = {r["trial"]["trial_id"]: r for r in json.loads((Path(summary["output_dir"]) / "trials.json").read_text())}
    for g in got[len(fixed) :]:
        assert g["search"] == pytest.approx(records[g["trial"]["trial_id"]]["search_params"])


def rows_of(n: int) -> list[str]:
    return [f"search-{i:03d}" for i in range(n)]


def test_resuming_a_finished_optuna_search_runs_nothing_new(optuna_search_result):
    """Tuner.restore brings back the searcher (numbering and Optuna study): a finished search resumes to
    the same rows instead of asking Optuna for more trials."""
    _, summary, _ = optuna_search_result
    again = run_tune(None, resume=summary["output_dir"], verbose=0)
    assert {r["trial"]: r["aggregate"] for r in again["rows"]} == pytest.approx(
        {r["trial"]: r["aggregate"] for r in summary["rows"]}
    )


# --------------------------------------------------------------------------- multi-worker trials

MW_STEPS = 10


def test_multi_worker_trials_run_a_torchtrainer_each(train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path):
    """tune.workers_per_trial=2: each trial drives its own 2-worker TorchTrainer (0.5 CPU a worker);
    the reports reach Tune, the rows and the checkpoints (kept in the trial's Train run) are written,
    and every CPU is free again afterwards. ASHA is on (rung at step 5): the search trial trains the
    default's config, so it ties at the rung and both run their budget and end by themselves (no
    decision at the last step), releasing their Train runs' workers."""
    import ray

    d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, tmp_path, max_steps=MW_STEPS, eval_every=5, log_every=5)
    del d["tasks"]["match"]
    d["train"]["lr"] = 3e-3
    d["tune"] = {
        "name": "mw",
        "search_alg": "grid",
        "search_space": {"train.lr": {"choice": [3e-3]}},
        "baselines": False,
        "grace_period": 5,
        "workers_per_trial": 2,
        "cpus_per_trial": 0.5,
        "max_concurrent_trials": 1,
    }
    cfg = config_from_dict(d)
    started = time.time()
    summary = run_tune(cfg, verbose=0)
    print(f"multi-worker search: {time.time() - started:.1f} s")
    rows = {r["trial"]: r for r in summary["rows"]}
    assert set(rows) == {"default", "search-000"}
    records = {r["trial"]["trial_id"]: r for r in json.loads((Path(summary["output_dir"]) / "trials.json").read_text())}
    for name in rows:
        row, metrics = rows[name], records[name]["metrics"]
        assert not row["error"] and row["steps"] == MW_STEPS and not row["stopped_early"] and row["k"] == 4
        assert metrics["val/aggregate"] == pytest.approx(
            (metrics["val/sentiment/accuracy"] + metrics["val/score/pearson"]) / 2
        )
        ckpt = Path(row["checkpoint"])
        assert ckpt.is_dir() and ckpt == Path(metrics["checkpoint_path"])
        meta = json.loads((ckpt / "meta.json").read_text())
        # the checkpoint is the last evaluation of a 2-worker run of this trial's config
        assert meta["config"]["ray"]["num_workers"] == 2 and meta["config"]["train"]["lr"] == 3e-3
        assert meta["metrics"]["aggregate"] == pytest.approx(row["aggregate"])
    out = Path(summary["output_dir"])
    assert (out / "results.csv").read_text().count("\n") == 3  # header + 2 rows
    # both Train runs ended by themselves and gave back their workers' placement groups
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0.0) < train_cluster["CPU"] and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0.0) == train_cluster["CPU"]
