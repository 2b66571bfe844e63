"""A teacher's outputs over a task's whole train split, computed once and kept beside the prepared data.

Distillation (``train.distill_from``, :mod:`mtl_ray.training.distill`) needs the teacher's output for
every training example. The teacher is a fixed function of the tokens (eval mode, no dropout), so it
runs once over the train split, in split order, and the result is stored:

    <data cache>/teachers/<key>/<task>.npy    (N, C) float32 logits (class types) or (N,) predictions
    <data cache>/teachers/<key>/<task>.json   what <key> stands for (teacher, fingerprint, split digest, ...)

``key`` digests (teacher fingerprint, task, train-split digest, max_length): the fingerprint is the
sha256 of the teacher's manifest (which lists every file's sha256), the split digest covers the token
ids the teacher reads, in order. Later runs, seeds and Ray Train workers with the same key read the
file and run no teacher. Files are written to a temporary name and renamed, so a reader never sees a
partial file and two writers (two workers on one node) leave one whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl_ray.checkpoint import MANIFEST_FILE
from mtl_ray.data.tokenize import collate
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.training.evaluation import rows

CACHE_FORMAT = 1  # bump when what is stored changes: older entries are then never read


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 of the checkpoint's manifest: it lists the sha256 of every file, so it names the content."""
    return hashlib.sha256((Path(path) / MANIFEST_FILE).read_bytes()).hexdigest()


def split_digest(split: Any) -> str:
    """sha256 of a tokenized split's ``input_ids`` and ``token_type_ids``, row by row, in order."""
    h = hashlib.sha256()
    types = split["token_type_ids"] if "token_type_ids" in split.column_names else None
    for i, ids in enumerate(split["input_ids"]):
        h.update(len(ids).to_bytes(4, "little"))
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        if types is not None:
            h.update(np.asarray(types[i], dtype=np.int64).tobytes())
    return h.hexdigest()


def entry_meta(teacher_path: str | Path, fingerprint: str, task: str, digest: str, max_length: int, n: int) -> dict:
    return {
        "format": CACHE_FORMAT,
        "teacher": str(teacher_path),
        "teacher_fingerprint": fingerprint,
        "task": task,
        "train_split_digest": digest,
        "max_length": int(max_length),
        "num_examples": int(n),
    }


def entry_path(cache_dir: Path, meta: dict[str, Any]) -> Path:
    """``<cache_dir>/teachers/<key>/<task>.npy`` for an entry's meta (key: everything the outputs depend on)."""
    fields = [str(meta[k]) for k in ("format", "teacher_fingerprint", "task", "train_split_digest", "max_length")]
    key = hashlib.sha256("\n".join(fields).encode()).hexdigest()[:24]
    return cache_dir / "teachers" / key / f"{meta['task']}.npy"


def read_entry(path: Path, num_examples: int) -> np.ndarray | None:
    """The cached outputs, or None when absent or unreadable / of the wrong length (then recomputed)."""
    if not path.is_file():
        return None
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return values if values.shape[:1] == (num_examples,) and values.dtype == np.float32 else None


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on one filesystem: readers see the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_entry(path: Path, values: np.ndarray, meta: dict[str, Any]) -> None:
    """``<task>.json`` then ``<task>.npy`` (the .npy's presence marks a complete entry), each atomically."""
    doc = json.dumps({**meta, "shape": list(values.shape)}, indent=2).encode()
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(doc))
    _atomic_write(path, lambda f: np.save(f, values.astype(np.float32), allow_pickle=False))


@torch.no_grad()
def run_teacher(
    model: MultiTaskModel, task: str, split: Any, *, pad_token_id: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """The teacher's ``task`` outputs for every row of ``split``, in order: (N, C) logits or (N,) values,
    float32, in eval mode (no dropout) and full precision."""
    model.eval()
    parts = []
    for start in range(0, len(split), batch_size):
        batch = collate(rows(split, list(range(start, min(start + batch_size, len(split))))), pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), tasks=[task])[task]
        parts.append(out.float().cpu().numpy())
    return np.concatenate(parts).astype(np.float32)
