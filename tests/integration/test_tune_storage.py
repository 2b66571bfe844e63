"""A Tune experiment on a storage URI (``file://``, through pyarrow's filesystems as ``s3://`` would
be): every trial's files and the experiment's outputs land in ``<storage>/<tune.name>``, the folder
the driver prints. Tiny model, 2 trials (the default config + one searched lr) of 4 steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict
from mtl_ray.ray.tune import run_tune

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_tune_experiment_lives_in_one_folder_of_a_storage_uri(
    train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path, capsys
):
    d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "out", max_steps=4, eval_every=2, log_every=2)
    del d["tasks"]["match"]
    d["tune"] = {
        "name": "exp",
        "search_alg": "grid",
        "search_space": {"train.lr": {"choice": [3e-3]}},
        "baselines": False,
        "scheduler": "none",
        "max_concurrent_trials": 2,
    }
    bucket = tmp_path / "bucket"
    summary = run_tune(config_from_dict(d), storage_path=f"file://{bucket}", verbose=0)
    folder = f"file://{bucket}/exp"
    assert f"run folder: {folder}\n" in capsys.readouterr().out
    assert summary["output_dir"] == folder and summary["best_config"] == f"{folder}/best_config.yaml"
    exp = bucket / "exp"
    for name in ("summary.json", "results.md", "results.csv", "trials.json", "best_config.yaml", "mtl_tune_setup.json"):
        assert (exp / name).is_file(), name
    assert json.loads((exp / "summary.json").read_text())["output_dir"] == folder
    assert sorted(r["trial"] for r in summary["rows"]) == ["default", "search-000"]
    for trial, lr in (("default", 1e-3), ("search-000", 3e-3)):
        own = exp / "trials" / trial
        assert yaml.safe_load((own / "config.yaml").read_text())["train"]["lr"] == lr
        records = [json.loads(line) for line in (own / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "val/aggregate" in r] == [2, 4]
        assert (own / "training_curves.png").stat().st_size > 0
        assert any((own / "tensorboard").glob("events.out.tfevents.*"))
        assert sorted(p.name for p in (exp / trial).glob("checkpoint_*"))  # Tune's checkpoints, same folder
    best = summary["best_checkpoint"]  # Ray's path in the filesystem, given back as a URI of the folder
    assert best.startswith(f"{folder}/") and Path(best[len("file://") :]).is_dir()
    assert not (exp / "trials" / "default" / "step-0000002").exists()  # checkpoints are Tune's, not copied
