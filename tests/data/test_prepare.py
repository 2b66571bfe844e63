"""prepare_builtin on a fake built-in (fake asset seeded via $MTL_RAY_ASSET_DIR): fast, no network."""

import json
from pathlib import Path

import pytest

from mtl_ray.config import DataConfig
from mtl_ray.data import corpora, prepare
from mtl_ray.data.assets import read_member
from mtl_ray.data.sources import load_task_splits
from mtl_ray.errors import DataError

CALLS = []


def _build_fake(archives, spec):
    CALLS.append(spec)
    word = read_member(archives["fake"], "fake/data/a.txt").decode()
    records = [{"text": f"{word} text {i}", "label": "xy"[i % 2]} for i in range(200)]
    for r in records:
        r["split"] = spec(r["text"])
    return records, {"raw_rows": 200}


@pytest.fixture
def fake_builtin(fake_asset, monkeypatch):
    entry = dict(prepare.BUILTIN_TASKS["rt_sentiment"], assets=["fake"], label_names=["x", "y"])
    monkeypatch.setitem(prepare.BUILTIN_TASKS, "fake_topic", entry)
    monkeypatch.setitem(corpora.BUILDERS, "fake_topic", _build_fake)
    CALLS.clear()
    return "fake_topic"


def test_prepare_writes_marker_and_is_idempotent(fake_builtin, data_cfg):
    paths = prepare.prepare_builtin([fake_builtin], data_cfg, progress=False)
    folder = paths[fake_builtin]
    marker = json.loads((folder / "_COMPLETE").read_text())
    assert marker["split_seed"] == 1234 and marker["validation_fraction"] == 0.1
    assert marker["counts"]["total"] == 200
    assert sum(marker["counts"][s]["total"] for s in ("train", "validation", "test")) == 200
    mtime = (folder / "_COMPLETE").stat().st_mtime_ns
    prepare.prepare_builtin([fake_builtin], data_cfg, progress=False)
    assert len(CALLS) == 1 and (folder / "_COMPLETE").stat().st_mtime_ns == mtime
    summary = prepare.summarize(fake_builtin, data_cfg)
    assert summary["total"] == 200 and set(summary["splits"]["train"]["labels"]) == {"x", "y"}
    # the only things left in the cache: the final folder (and lock files)
    entries = [p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")]
    assert entries == [fake_builtin]


def test_changed_seed_rebuilds(fake_builtin, data_cfg):
    folder = prepare.prepare_builtin([fake_builtin], data_cfg, progress=False)[fake_builtin]
    before = {s: json.loads((folder / "_COMPLETE").read_text())["counts"][s]["total"] for s in ("train", "test")}
    other = DataConfig(cache_dir=data_cfg.cache_dir, split_seed=7)
    prepare.prepare_builtin([fake_builtin], other, progress=False)
    marker = json.loads((folder / "_COMPLETE").read_text())
    assert len(CALLS) == 2 and marker["split_seed"] == 7
    assert before != {s: marker["counts"][s]["total"] for s in ("train", "test")}


def test_failed_build_leaves_nothing(fake_builtin, data_cfg, monkeypatch):
    def boom(archives, spec):
        raise RuntimeError("disk full")

    monkeypatch.setitem(corpora.BUILDERS, fake_builtin, boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare.prepare_builtin([fake_builtin], data_cfg, progress=False)
    datasets_dir = Path(data_cfg.cache_dir) / "datasets"
    assert [p.name for p in datasets_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_incomplete_folder_is_rebuilt(fake_builtin, data_cfg):
    folder = prepare.dataset_dir(fake_builtin, Path(data_cfg.cache_dir))
    folder.mkdir(parents=True)
    (folder / "junk.arrow").write_text("half-written")
    prepare.prepare_builtin([fake_builtin], data_cfg, progress=False)
    assert not (folder / "junk.arrow").exists() and (folder / "_COMPLETE").exists()


def test_load_task_splits_from_builtin(fake_builtin, data_cfg):
    task = prepare.builtin_task_config(fake_builtin, name="mine", max_eval_examples=5)
    assert task.source == "builtin:fake_topic" and task.label_names == ["x", "y"]
    dd, names = load_task_splits(task, data_cfg)
    assert names == ["x", "y"] and len(dd["test"]) == 5
    assert all(int(t.split()[-1]) % 2 == y for t, y in zip(dd["train"]["text"], dd["train"]["label"]))


def test_unknown_and_unprepared(data_cfg):
    with pytest.raises(DataError, match="unknown built-in dataset 'nope'; valid: bbc_topic, rt_sentiment"):
        prepare.prepare_builtin(["nope"], data_cfg)
    with pytest.raises(DataError, match="not prepared"):
        prepare.summarize("bbc_topic", data_cfg)
