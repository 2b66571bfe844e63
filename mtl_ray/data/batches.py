"""Batch functions of the streaming pipeline (``ray.streaming``), in plain pandas / pyarrow.

Ray Data runs them as ``map_batches`` stages (:mod:`mtl_ray.ray.data` builds the pipeline); they apply
the in-memory loader's rules to one block at a time — the same required columns, label parsing, seeded
hash split and tokenization — so a streamed task has exactly the splits and inputs ``--no-ray`` gives
it. Nothing here imports Ray.
"""

from __future__ import annotations

import functools
from typing import Any

from mtl_ray.config import DataConfig, TaskConfig
from mtl_ray.errors import DataError
from mtl_ray.tasks.base import get_task_type


def _required(task: TaskConfig) -> list[str]:
    cols = [task.text_field]
    if task.text_pair_field:
        cols.append(task.text_pair_field)
    if get_task_type(task.type).supervised:
        cols.append(task.label_field)
    return cols


def _text(col: Any, source: str, field: str) -> Any:
    bad = col.isna() | col.astype(str).str.strip().eq("")
    if bad.any():
        raise DataError(f"{source}: field {field!r}: missing or empty text ({int(bad.sum())} rows in one block)")
    return col.astype(str)


def standardize_batch(
    batch: Any, *, task: TaskConfig, data: DataConfig, source: str, given: str | None, carve: tuple[float, float]
) -> Any:
    """A pandas batch → ``text`` [, ``text_pair``] [, ``label``], ``split``.

    ``given``: the split this file holds (None: a single table); ``carve``: the (validation, test)
    fractions still assigned by hash (the in-memory loader's rule: a given split is kept, a missing
    one is carved out of train)."""
    import numpy as np
    import pandas as pd

    from mtl_ray.data.splits import assign_split

    missing = [c for c in _required(task) if c not in batch.columns]
    if missing:
        raise DataError(
            f"{source}: missing column {missing[0]!r}; available columns: {', '.join(map(str, batch.columns))}"
        )
    out = pd.DataFrame({"text": _text(batch[task.text_field], source, task.text_field)})
    if task.text_pair_field:
        out["text_pair"] = _text(batch[task.text_pair_field], source, task.text_pair_field)
    label_kind = get_task_type(task.type).label_kind
    if label_kind == "value":
        values = pd.to_numeric(batch[task.label_field], errors="coerce").astype("float64")
        if not np.isfinite(values.to_numpy()).all():
            raise DataError(f"{source}: field {task.label_field!r}: regression target must be a finite number")
        out["label"] = values.astype("float32")
    elif label_kind == "class":
        col = batch[task.label_field]
        if col.isna().any():
            raise DataError(f"{source}: field {task.label_field!r}: missing (null) label")
        if pd.api.types.is_float_dtype(col) and (col % 1 == 0).all():
            col = col.astype("int64")  # JSON 1.0 is class 1
        out["label"] = col.astype(str).str.strip()
    if given is not None and given != "train":
        out["split"] = given
    elif carve == (0.0, 0.0):
        out["split"] = "train"
    else:
        keys = out["text"] if "text_pair" not in out else out["text"] + "\t" + out["text_pair"]
        out["split"] = [assign_split(k, data.split_seed, carve[0], carve[1]) for k in keys]
    return out


def keep_splits(batch: Any, *, splits: tuple[str, ...]) -> Any:
    return batch[batch["split"].isin(splits)]


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def tokenize_batch(
    batch: Any, *, tokenizer_path: str, max_length: int, is_pair: bool, label_names: list[str] | None, source: str
) -> Any:
    """Standardized pandas rows → a pyarrow table of unpadded ``input_ids``, ``attention_mask``,
    ``token_type_ids`` [, ``labels``]: what ``collate`` takes, as in-memory tokenization makes it."""
    import pyarrow as pa

    from mtl_ray.data.tokenize import _Tokenize  # the very function the in-memory path maps

    cols: dict[str, list[Any]] = {"text": batch["text"].tolist()}
    if is_pair:
        cols["text_pair"] = batch["text_pair"].tolist()
    if "label" in batch:
        cols["label"] = label_indices(batch["label"], label_names, source)
    enc = _Tokenize(_tokenizer(tokenizer_path), max_length, is_pair)(cols)
    return pa.table({k: v for k, v in enc.items()})


def label_indices(col: Any, label_names: list[str] | None, source: str) -> list[Any]:
    if label_names is None:  # regression
        return [float(v) for v in col]
    index = {n: i for i, n in enumerate(label_names)}
    out = []
    for key in col:
        if key in index:
            out.append(index[key])
        elif key.lstrip("+-").isdigit() and 0 <= int(key) < len(label_names):
            out.append(int(key))  # an integer class index into label_names
        else:
            raise DataError(f"{source}: label {key!r} is not one of {', '.join(label_names)}")
    return out


def label_counts(batch: Any, *, has_classes: bool) -> Any:
    """Per block: row count per label (classification) or the row count: tiny output for the driver."""
    import pandas as pd

    if has_classes:
        counts = batch["label"].value_counts()
        return pd.DataFrame({"label": counts.index.astype(str), "n": counts.to_numpy(dtype="int64")})
    return pd.DataFrame({"label": [""], "n": [len(batch)]})
