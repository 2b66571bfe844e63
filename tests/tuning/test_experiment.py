"""Where a Tune experiment lives: one folder ``<storage>/<tune.name>``, the storage chosen by
``--storage-path`` > ``tune.storage_path`` > ``ray.storage_path`` > ``train.output_dir``."""

from __future__ import annotations

from pathlib import Path

from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict
from mtl_ray.tuning.experiment import experiment_location, experiment_paths, plan, tune_storage


def make(tiny_encoder_dir, tiny_task_files, out: Path, tune: dict | None = None, ray: dict | None = None):
    d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, out)
    d["tune"] = {"name": "exp", "search_space": {"train.lr": {"choice": [1e-3]}}, **(tune or {})}
    d["ray"] = ray or {}
    return config_from_dict(d)


def test_storage_precedence_and_the_experiment_folder(tiny_encoder_dir, tiny_task_files, tmp_path):
    out = tmp_path / "out"
    cfg = make(tiny_encoder_dir, tiny_task_files, out)
    assert tune_storage(cfg) == str(out) and experiment_paths(cfg) == (str(out), out / "exp")
    assert experiment_location(cfg) == str(out / "exp")
    cfg = make(tiny_encoder_dir, tiny_task_files, out, ray={"storage_path": str(tmp_path / "shared")})
    assert experiment_paths(cfg) == (str(tmp_path / "shared"), tmp_path / "shared" / "exp")
    both = {"storage_path": "s3://bucket/tune"}
    cfg = make(tiny_encoder_dir, tiny_task_files, out, tune=both, ray={"storage_path": str(tmp_path / "shared")})
    # a URI: the experiment is in the bucket; the driver writes its files in train.output_dir first
    assert experiment_paths(cfg) == ("s3://bucket/tune", out / "exp")
    assert experiment_location(cfg) == "s3://bucket/tune/exp"


def test_plan_writes_the_storage_into_the_base_config(tiny_encoder_dir, tiny_task_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make(tiny_encoder_dir, tiny_task_files, tmp_path / "out", tune={"storage_path": "rel/store"})
    base, _ = plan(cfg)
    assert base["tune"]["storage_path"] == str(tmp_path / "rel" / "store")  # absolute: --resume finds it
    base, _ = plan(cfg, storage_path="file:///mnt/runs")  # --storage-path wins
    assert base["tune"]["storage_path"] == "file:///mnt/runs"
    assert experiment_location(config_from_dict(base)) == "file:///mnt/runs/exp"


def test_resume_keeps_the_experiments_own_storage(capsys):
    from mtl_ray.cli import main

    assert main(["tune", "--resume", "runs/x/exp", "--storage-path", "s3://b/t"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: tune --resume: the experiment's own config and storage are used; "
        "drop --config, overrides and --storage-path"
    )
