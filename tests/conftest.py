"""Shared fixtures: a tiny real HF encoder folder (and its dropout-free twin), tiny synthetic task files, a
config factory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import tiny_config_dict, write_tiny_tasks

from mtl_ray.config import Config, config_from_dict
from mtl_ray.testing import make_tiny_encoder


@pytest.fixture(autouse=True)
def _few_threads():
    # 2 shared cores: keep unit tests from oversubscribing
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def nodrop_encoder_dir(tmp_path_factory) -> Path:
    """The tiny encoder with dropout off: data-parallel and single-process runs are then the same
    function of the same batches (dropout masks are drawn per rank)."""
    path = make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder-nodrop"))
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_task_files(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_tasks(tmp_path_factory.mktemp("tiny-tasks"))


@pytest.fixture
def unwritable_storage(tmp_path, monkeypatch) -> Path:
    """A storage path that cannot be created (its parent is a plain file), with Ray's session patched to
    fail the test if it starts: the storage check must refuse it before Ray is touched."""
    import mtl_ray.ray.session

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the storage check")

    monkeypatch.setattr(mtl_ray.ray.session, "ray_session", no_ray)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker / "store"


@pytest.fixture
def tiny_config(tiny_encoder_dir, tiny_task_files, tmp_path):
    def make(model: dict | None = None, drop_tasks: tuple[str, ...] = (), run: str = "run", **train) -> Config:
        d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, tmp_path / run, **train)
        d["model"].update(model or {})
        for name in drop_tasks:
            del d["tasks"][name]
        return config_from_dict(d)

    return make


# The multi-process tier runs under pytest-xdist with one test file per worker (``--dist loadfile``,
# Makefile). xdist hands files out in collection order (``--no-loadscope-reorder``); the longest ones go
# first so that no long file starts last and the workers finish together. Roughly longest first (the
# serial minutes on 2 idle cores are in README.md, "Tests"); files not listed keep their order after them.
LONGEST_FIRST = (  # seconds per file at 2 workers, 2 idle cores (2026-12-07): 620, 432, 295, 282, 250, ...
    "tests/integration/test_ray_tune.py",
    "tests/integration/test_ray_train.py",
    "tests/integration/test_add_task_serve.py",
    "tests/integration/test_quiet_logs.py",
    "tests/integration/test_jobs.py",
    "tests/integration/test_serve_secure.py",
    "tests/bench/test_quality_smoke.py",
    "tests/integration/test_serve.py",
    "tests/integration/test_tune_bench.py",
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain pytest run keeps the file order
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = Path(str(config.rootpath))
    items.sort(key=lambda item: rank.get(Path(str(item.path)).relative_to(root).as_posix(), len(rank)))
