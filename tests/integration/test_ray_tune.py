"""Ray Tune on a real local Ray (tiny model, 1-worker trials through the plain loop): a 5-trial search
finishes, ASHA stops the hopeless trial early, the single-task baselines and Δm% are in the table and
equal a hand computation from the trial results, the exported best config trains, a request that does
not fit the cluster fails before any trial, and an interrupted experiment resumes.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from mtl_ray.config import config_from_dict, load_config
from mtl_ray.errors import ConfigError
from mtl_ray.ray_tune import run_tune
from mtl_ray.training.run import train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 20


def tiny_config_dict(*args, **kwargs) -> dict:
    spec = importlib.util.spec_from_file_location("mtl_ray_tests_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_config_dict(*args, **kwargs)


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


def test_interrupted_experiment_resumes(train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path):
    """`mtl-ray tune` in its own process gets Ctrl-C (SIGINT) once the second trial has checkpointed;
    `run_tune(resume=...)` then finishes the same trials, the interrupted one from its checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from mtl_ray.config import config_to_dict

    cfg = make_config(tiny_encoder_dir, tiny_task_files, tmp_path, search_space={"train.lr": {"choice": [3e-3]}})
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
