"""One entry point for training and evaluation: any task source → standardized splits.

:func:`load_task_splits` returns a ``DatasetDict`` with ``train`` / ``validation`` / ``test`` and the
standard columns: ``text`` (str), ``text_pair`` (str; only when the task sets ``text_pair_field``),
``label`` (int64 class index for classification and pair_classification, float32 for regression,
absent for contrastive). Validation is vectorized (pandas) and every problem is a
:class:`DataError` naming the file, the row and the field.
"""

from __future__ import annotations

from typing import Any

from mtl_ray.config import DataConfig, TaskConfig
from mtl_ray.data.readers import Table, read_source
from mtl_ray.data.splits import SPLITS, assign_split
from mtl_ray.errors import ConfigError, DataError
from mtl_ray.tasks.base import get_task_type, label_dtype

BUILTIN_PREFIX = "builtin:"
_INT_RE = r"[+-]?\d+"


def load_task_splits(task: TaskConfig, data_cfg: DataConfig) -> tuple[Any, list[str] | None]:
    """``(DatasetDict(train, validation, test), label_names)`` for ``task``.

    ``label_names`` is the class list in index order (from the config, the built-in's defaults, or
    the sorted unique labels of the train split), or None for regression / contrastive tasks.
    """
    import datasets

    ttype = get_task_type(task.type)
    is_pair = task.text_pair_field is not None
    has_label = ttype.label_kind is not None
    if task.label_names is not None and not ttype.has_classes:
        raise ConfigError(f"tasks.{task.name}.label_names: only classification tasks have label names")
    required = {task.text_field: f"tasks.{task.name}.text_field"}
    if is_pair:
        required[str(task.text_pair_field)] = f"tasks.{task.name}.text_pair_field"
    if has_label:
        required[task.label_field] = f"tasks.{task.name}.label_field"

    label_names = task.label_names
    if task.source.startswith(BUILTIN_PREFIX):
        source, default_names = _prepare_builtin_source(task, data_cfg)
        label_names = label_names if label_names is not None else default_names
    else:
        source = task.source
    tables = read_source(source, required)

    frames = [_standardize(t, task, is_pair, ttype.label_kind) for t in tables]
    splits = _assign_splits(tables, frames, data_cfg)
    if ttype.has_classes:
        label_names = _resolve_labels(tables, frames, splits, label_names, task)
    else:
        label_names = None

    features = {"text": datasets.Value("string")}
    if is_pair:
        features["text_pair"] = datasets.Value("string")
    if has_label:
        features["label"] = datasets.Value(label_dtype(task.type))
    out = {}
    for split in SPLITS:
        df = _concat([f[s == split] for f, s in zip(frames, splits)], list(features))
        if len(df) == 0:
            raise DataError(
                f"{source}: split {split!r} is empty ({sum(len(f) for f in frames)} rows in all, "
                f"validation_fraction={data_cfg.validation_fraction}, test_fraction={data_cfg.test_fraction}); "
                "provide more rows or explicit train/validation/test splits"
            )
        limit = task.max_train_examples if split == "train" else task.max_eval_examples
        df = subsample(df, limit, data_cfg.split_seed)
        out[split] = datasets.Dataset.from_pandas(df, features=datasets.Features(features), preserve_index=False)
    return datasets.DatasetDict(out), label_names


def _prepare_builtin_source(task: TaskConfig, data_cfg: DataConfig) -> tuple[str, list[str] | None]:
    from mtl_ray.data.prepare import BUILTIN_TASKS, prepare_builtin

    name = task.source[len(BUILTIN_PREFIX) :]
    if name not in BUILTIN_TASKS:
        raise DataError(
            f"tasks.{task.name}.source: unknown built-in dataset {name!r}; valid: "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_TASKS)
        )
    spec = BUILTIN_TASKS[name]
    # any corpus can feed an unsupervised task; otherwise the types must agree
    if task.type != spec["type"] and get_task_type(task.type).supervised:
        raise ConfigError(f"tasks.{task.name}.type: {task.source} is a {spec['type']} dataset, not {task.type}")
    path = prepare_builtin([name], data_cfg, progress=False)[name]
    return str(path), spec["label_names"]


# --------------------------------------------------------------------------- per-table checks


def _standardize(table: Table, task: TaskConfig, is_pair: bool, label_kind: str | None) -> Any:
    """A frame with ``text`` [, ``text_pair``] [, ``label``] (raw label keys or floats), same index."""
    import pandas as pd

    df = table.df
    out = pd.DataFrame(index=df.index)
    out["text"] = _text_column(df[task.text_field], table, task.text_field)
    if is_pair:
        out["text_pair"] = _text_column(df[task.text_pair_field], table, str(task.text_pair_field))
    if label_kind is not None:
        col = df[task.label_field]
        if label_kind == "value":
            out["label"] = _regression_column(col, table, task.label_field)
        else:
            out["label"] = _label_keys(col, table, task.label_field)
    return out


def _first(mask: Any) -> Any:
    """The index label of the first True in a boolean Series."""
    return mask.index[mask.to_numpy().argmax()]


def _text_column(col: Any, table: Table, field: str) -> Any:
    import pandas as pd

    na = col.isna()
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind not in ("string", "empty", "integer", "floating", "mixed-integer-float", "decimal", "boolean"):
        # mixed: strings and numbers are fine (numbers become text); lists, dicts, bytes are not
        bad = ~na & col.map(lambda v: not isinstance(v, (str, int, float)))
        if bad.any():
            row = _first(bad)
            raise DataError(f"{table.where(row, field)}: expected text, got {type(col[row]).__name__}")
    text = col.astype(object).where(na, col.astype(str))
    empty = na | text.fillna("").str.strip().eq("")
    if empty.any():
        row = _first(empty)
        what = "missing (null) text" if na[row] else "empty text"
        raise DataError(f"{table.where(row, field)}: {what}")
    return text.astype(str)


def _regression_column(col: Any, table: Table, field: str) -> Any:
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(col, errors="coerce").astype("float64")
    bad = ~np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
    if bad.any():
        row = col.index[bad.argmax()]
        raise DataError(f"{table.where(row, field)}: regression target must be a finite number, got {_show(col[row])}")
    return values.astype("float32")


def _show(value: Any) -> str:
    """A cell as users wrote it: null for missing, python (not numpy) reprs otherwise."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "null"
    return repr(value.item() if hasattr(value, "item") else value)


def _label_keys(col: Any, table: Table, field: str) -> Any:
    """Class labels as strings (integers as their decimal form), after checking none is missing."""
    import pandas as pd

    na = col.isna()
    if na.any():
        raise DataError(f"{table.where(_first(na), field)}: missing (null) label")
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_integer_dtype(col):
        keys = col.astype(str)
    elif pd.api.types.is_float_dtype(col) and (col % 1 == 0).all():
        keys = col.astype("int64").astype(str)  # JSON "1.0" is class 1
    else:
        keys = col.astype(str).str.strip()
    empty = keys.eq("")
    if empty.any():
        raise DataError(f"{table.where(_first(empty), field)}: empty label")
    return keys


# --------------------------------------------------------------------------- splits and labels


def _assign_splits(tables: list[Table], frames: list[Any], data_cfg: DataConfig) -> list[Any]:
    """A split-name Series per table: given splits kept; missing ones carved out of train by hash."""
    import pandas as pd

    given = {t.split for t in tables if t.split is not None}
    if tables[0].split is None:  # one table: split all of it
        fractions = (data_cfg.validation_fraction, data_cfg.test_fraction)
    else:
        fractions = (
            0.0 if "validation" in given else data_cfg.validation_fraction,
            0.0 if "test" in given else data_cfg.test_fraction,
        )
    out = []
    for t, f in zip(tables, frames):
        if t.split is not None and t.split != "train":
            out.append(pd.Series(t.split, index=f.index))
            continue
        keys = f["text"] if "text_pair" not in f else f["text"] + "\t" + f["text_pair"]
        names = [assign_split(k, data_cfg.split_seed, *fractions) for k in keys]
        out.append(pd.Series(names, index=f.index))
    return out


def _is_int_like(keys: Any) -> bool:
    return bool(keys.str.fullmatch(_INT_RE).all())


def _resolve_labels(
    tables: list[Table], frames: list[Any], splits: list[Any], names: list[str] | None, task: TaskConfig
) -> list[str]:
    """Map each frame's label keys to int64 indices in place; return the label names."""
    import pandas as pd

    if names is None:
        train_keys = pd.concat([f["label"][s == "train"] for f, s in zip(frames, splits)])
        uniq = train_keys.unique().tolist()
        if _is_int_like(pd.Series(uniq, dtype=object)):
            names = [str(v) for v in sorted({int(v) for v in uniq})]
        else:
            names = sorted(uniq)
        if len(names) < 2:
            raise DataError(
                f"{tables[0].origin}: the train split has only the label(s) {names} in field "
                f"{task.label_field!r}; a classification task needs at least 2"
            )
        declared = "the train split's labels"
    else:
        names = [str(n) for n in names]
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"tasks.{task.name}.label_names: must be non-empty and unique, got {names}")
        declared = "label_names"
    index = {n: i for i, n in enumerate(names)}
    for t, f in zip(tables, frames):
        keys = f["label"]
        mapped = keys.map(index)
        if mapped.isna().any():
            # labels may also be integer class indices into label_names
            if declared == "label_names" and _is_int_like(keys):
                mapped = keys.astype("int64")
                out_of_range = (mapped < 0) | (mapped >= len(names))
                if out_of_range.any():
                    row = _first(out_of_range)
                    raise DataError(
                        f"{t.where(row, task.label_field)}: label index {keys[row]} is outside 0..{len(names) - 1} "
                        f"(label_names: {', '.join(names)})"
                    )
            else:
                row = _first(mapped.isna())
                raise DataError(
                    f"{t.where(row, task.label_field)}: label {keys[row]!r} is not in {declared} "
                    f"({', '.join(names)})" + ("" if declared == "label_names" else "; set label_names to declare it")
                )
        f["label"] = mapped.astype("int64")
    return names


def _concat(parts: list[Any], columns: list[str]) -> Any:
    import pandas as pd

    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return df[columns]


def subsample(df: Any, limit: int | None, seed: int) -> Any:
    """The first ``limit`` rows of a seeded shuffle, kept in their original order (deterministic;
    a smaller limit gives a subset of a larger one)."""
    import numpy as np

    if limit is None or limit >= len(df):
        return df
    if limit < 1:
        raise ConfigError(f"max_train_examples / max_eval_examples: must be >= 1, got {limit}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(df))[:limit])
    return df.iloc[keep].reset_index(drop=True)
