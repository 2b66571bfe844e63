"""The run folder in ``storage_path`` (local path or a pyarrow URI) and the write check before training,
without Ray: ``file://`` URIs go through pyarrow's filesystem layer exactly as ``s3://`` would."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from mtl_ray.errors import MtlRayError, StorageError
from mtl_ray.ray.storage import RunFolder, check_writable


@pytest.fixture(autouse=True)
def _staging_in_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))


def test_local_storage_is_written_in_place(tmp_path):
    run = RunFolder.create(str(tmp_path / "store"), "smoke-20261201-120000-abcdef")
    assert run.location == run.local == str(tmp_path / "store" / "smoke-20261201-120000-abcdef")
    assert not run.remote
    assert RunFolder.from_dict(run.to_dict()) == run
    run.push()  # nothing to do
    run.pull("metrics.jsonl")


def test_uri_storage_stages_locally_and_pushes_all_but_checkpoints(tmp_path):
    store = tmp_path / "bucket"
    run = RunFolder.create(f"file://{store}", "smoke-1")
    assert run.remote and run.location == f"file://{store}/smoke-1"
    assert run.local == str(tmp_path / "node-tmp" / "mtl-ray-runs" / "smoke-1")
    local = tmp_path / "node-tmp" / "mtl-ray-runs" / "smoke-1"
    (local / "tensorboard").mkdir(parents=True)
    (local / "tensorboard" / "events.out").write_bytes(b"\x00\x01")
    (local / "metrics.jsonl").write_text(json.dumps({"step": 2}) + "\n")
    (local / "step-0000002").mkdir()
    (local / "step-0000002" / "model.safetensors").write_bytes(b"w")
    run.push()
    remote = store / "smoke-1"
    assert sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()) == [
        "metrics.jsonl",
        "tensorboard/events.out",
    ]
    assert (remote / "tensorboard" / "events.out").read_bytes() == b"\x00\x01"
    # a restart on a node without the staging folder gets the run's metrics log back
    (local / "metrics.jsonl").unlink()
    run.pull("metrics.jsonl", "absent.json")
    assert json.loads((local / "metrics.jsonl").read_text()) == {"step": 2}
    assert not (local / "absent.json").exists()


def test_writable_storage_passes_and_leaves_no_probe(tmp_path):
    check_writable(str(tmp_path / "new" / "store"))
    assert list((tmp_path / "new" / "store").iterdir()) == []
    check_writable(f"file://{tmp_path / 'uri-store'}")
    assert list((tmp_path / "uri-store").iterdir()) == []


def test_unwritable_storage_fails_naming_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=rf"storage_path '{blocker}/store' is not writable \(Not a directory\)"):
        check_writable(str(blocker / "store"))
    with pytest.raises(StorageError, match=rf"storage_path 'file://{blocker}/store' is not reachable or not writable"):
        check_writable(f"file://{blocker}/store")


def test_unknown_uri_scheme_fails_naming_it():
    with pytest.raises(
        StorageError,
        match=r"storage_path 'nosuch://bucket/runs' is not reachable: pyarrow's filesystems cannot open it \(Unrecognized filesystem type",
    ):
        check_writable("nosuch://bucket/runs")


def test_a_child_folder_lives_inside_its_parent(tmp_path):
    """A Tune trial's folder: ``<experiment>/trials/<id>``; for a URI staged on the trial's own node,
    under a name that two experiments of the same name in different storages do not share."""
    local = RunFolder.create(str(tmp_path / "store"), "exp").child("trials", "default")
    assert local.location == local.local == str(tmp_path / "store" / "exp" / "trials" / "default")
    a = RunFolder(f"file://{tmp_path}/a/exp", str(tmp_path / "driver" / "exp")).child("trials", "default")
    b = RunFolder(f"file://{tmp_path}/b/exp", str(tmp_path / "driver" / "exp")).child("trials", "default")
    assert a.location == f"file://{tmp_path}/a/exp/trials/default"
    staging = tmp_path / "node-tmp" / "mtl-ray-runs"
    assert Path(a.local).parent.parent.parent == staging and Path(a.local).parts[-2:] == ("trials", "default")
    assert Path(a.local).parts[-3].startswith("exp-") and a.local != b.local


def test_push_can_leave_a_subfolder_to_its_own_writer(tmp_path):
    store = tmp_path / "bucket"
    run = RunFolder(f"file://{store}/exp", str(tmp_path / "driver" / "exp"))
    (Path(run.local) / "trials" / "default").mkdir(parents=True)
    (Path(run.local) / "trials" / "default" / "metrics.jsonl").write_text("stale\n")
    (Path(run.local) / "summary.json").write_text("{}")
    run.push(skip=("trials",))
    assert [p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()] == ["exp/summary.json"]


def test_tune_refuses_an_unwritable_storage_before_ray_starts(
    tiny_encoder_dir, tiny_task_files, tmp_path, unwritable_storage
):
    from helpers import tiny_config_dict

    from mtl_ray.config import config_from_dict
    from mtl_ray.ray.tune import run_tune

    d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "out")
    d["tune"] = {"name": "exp", "search_space": {"train.lr": {"choice": [1e-3]}}}
    with pytest.raises(StorageError, match=rf"storage_path '{unwritable_storage}' is not writable \(Not a directory\)"):
        run_tune(config_from_dict(d), storage_path=str(unwritable_storage))
    d["ray"] = {"storage_path": f"file://{unwritable_storage}"}  # ray.storage_path serves tune too
    with pytest.raises(
        StorageError, match=rf"storage_path 'file://{unwritable_storage}' is not reachable or not writable"
    ):
        run_tune(config_from_dict(d))


def test_a_path_in_the_storage_filesystem_becomes_a_location(tmp_path):
    """Ray's ``Checkpoint.path`` has no scheme (``bucket/...`` for s3); the summary names a URI."""
    run = RunFolder(f"file://{tmp_path}/bucket/exp", str(tmp_path / "driver" / "exp"))
    ckpt = f"{tmp_path}/bucket/exp/default/checkpoint_000001"
    assert run.address(ckpt) == f"file://{tmp_path}/bucket/exp/default/checkpoint_000001"
    assert run.address(f"file://{ckpt}") == f"file://{ckpt}"  # already a URI
    assert run.address("/elsewhere/checkpoint_000001") == "/elsewhere/checkpoint_000001"
    local = RunFolder.create(str(tmp_path), "exp")
    assert local.address(f"{tmp_path}/exp/default/checkpoint_000001") == f"{tmp_path}/exp/default/checkpoint_000001"


def test_resume_fetches_the_setup_file_from_a_uri(tmp_path):
    from mtl_ray.ray.tune import _read_resume_setup

    (tmp_path / "bucket" / "exp").mkdir(parents=True)
    setup = {"base": {"tune": {}}, "trials": [], "storage": f"file://{tmp_path}/bucket", "num_layers": 4}
    (tmp_path / "bucket" / "exp" / "mtl_tune_setup.json").write_text(json.dumps(setup))
    assert _read_resume_setup(f"file://{tmp_path}/bucket/exp/") == setup
    with pytest.raises(MtlRayError, match=rf"--resume file://{tmp_path}/bucket/none: not a tune experiment directory"):
        _read_resume_setup(f"file://{tmp_path}/bucket/none")
