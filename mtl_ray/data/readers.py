"""Read a user source (file, folder of split files, HF ``save_to_disk`` folder) into raw tables.

A :class:`Table` is a pandas frame whose index is the row number users see in error messages:
1-based data rows for CSV/TSV/Parquet/JSON arrays (header excluded), 1-based line numbers for
JSONL, 0-based indices for HF datasets. Paths may be local or any fsspec URI (``s3://``, ``gs://``,
``memory://`` ...). Every failure is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import json
import posixpath
import warnings
from dataclasses import dataclass
from typing import Any

from mtl_ray.errors import DataError

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


@dataclass
class Table:
    """Raw rows of one file or one split of a dataset folder."""

    df: Any  # pandas.DataFrame; index = row numbers as shown to users
    origin: str  # what error messages call it: a path, or "folder [split train]"
    split: str | None  # canonical split name, or None for a table to split by hash
    row_word: str = "row"  # "row" (1-based data row), "line" (JSONL) or "index" (0-based)

    def where(self, row: Any, field: str) -> str:
        return f"{self.origin}: {self.row_word} {row}, field {field!r}"


def check_columns(available: list[str], required: dict[str, str], origin: str) -> None:
    """``required`` maps a column to the config key that names it (``tasks.x.text_field``)."""
    for column, key in required.items():
        if column not in available:
            raise DataError(
                f"{origin}: missing column {column!r} (set by {key}); available columns: "
                f"{', '.join(map(str, available)) or 'none'}"
            )


def read_source(source: str, required: dict[str, str]) -> list[Table]:
    """All tables of ``source``, each checked to hold the ``required`` columns (column → config key)."""
    tables = _read_tables(source, required)
    for t in tables:
        check_columns(list(t.df.columns), required, t.origin)
    return tables


def _read_tables(source: str, required: dict[str, str]) -> list[Table]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(source)
        exists = fs.exists(path)
    except (ImportError, ValueError, OSError) as exc:
        raise DataError(f"{source}: cannot open ({type(exc).__name__}: {exc})") from None
    if not exists:
        raise DataError(f"{source}: no such file or folder")
    if not fs.isdir(path):
        return [read_file(source, split=None)]
    if fs.exists(posixpath.join(path, "dataset_dict.json")) or fs.exists(posixpath.join(path, "state.json")):
        return read_hf_folder(source, required)
    tables = []
    for name in sorted(fs.ls(path, detail=False)):
        base = posixpath.basename(str(name).rstrip("/"))
        stem, ext = _split_ext(base)
        if ext in EXTENSIONS and stem.lower() in SPLIT_ALIASES:
            tables.append(read_file(_join(source, base), split=SPLIT_ALIASES[stem.lower()]))
    if not tables:
        found = sorted(posixpath.basename(str(n).rstrip("/")) for n in fs.ls(path, detail=False))[:12]
        raise DataError(
            f"{source}: a folder source must be an HF save_to_disk dataset or hold train/validation/test "
            f"files ({', '.join(EXTENSIONS)}); found: {', '.join(found) or 'nothing'}"
        )
    seen: dict[str, str] = {}
    for t in tables:
        if t.split in seen:
            raise DataError(f"{source}: two files for split {t.split!r}: {seen[t.split]} and {t.origin}")
        seen[str(t.split)] = t.origin
    return tables


def _join(source: str, name: str) -> str:
    return source.rstrip("/") + "/" + name


def _split_ext(name: str) -> tuple[str, str]:
    """``("train", ".csv")`` for ``train.csv`` / ``train.csv.gz``."""
    lower = name.lower()
    for comp in _COMPRESSIONS:
        if lower.endswith(comp):
            lower, name = lower[: -len(comp)], name[: -len(comp)]
            break
    stem, ext = posixpath.splitext(lower)
    return name[: len(stem)], ext


def read_file(source: str, split: str | None) -> Table:
    """One CSV / TSV / JSONL / JSON / Parquet file (optionally .gz/.bz2/.xz/.zst compressed)."""
    import fsspec

    _, ext = _split_ext(posixpath.basename(source.rstrip("/")))
    if ext not in EXTENSIONS:
        raise DataError(f"{source}: unsupported file type {ext or '(none)'!r}; use one of {', '.join(EXTENSIONS)}")
    try:
        with fsspec.open(source, "rb", compression="infer") as f:
            data = f.read()
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{source}: cannot read ({type(exc).__name__}: {exc})") from None
    if not data.strip():
        raise DataError(f"{source}: empty file")
    if ext in (".csv", ".tsv"):
        df, word = _read_csv(source, data, sep="\t" if ext == ".tsv" else ","), "row"
    elif ext == ".parquet":
        df, word = _read_parquet(source, data), "row"
    elif ext == ".json" and data.lstrip()[:1] == b"[":
        df, word = _read_json_array(source, data), "row"
    else:
        df, word = _read_jsonl(source, data), "line"
    if len(df) == 0:
        raise DataError(f"{source}: no data rows")
    return Table(df, source, split, word)


def _read_csv(source: str, data: bytes, sep: str) -> Any:
    import io

    import pandas as pd

    try:
        with warnings.catch_warnings():
            # a row with more fields than the header would silently become an index / lose data
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # every cell as a string, empty cells as "" (not NaN): "NA" or "null" can be real text
            df = pd.read_csv(
                io.BytesIO(data), sep=sep, dtype=str, keep_default_na=False, na_filter=False, index_col=False
            )
    except pd.errors.ParserWarning:
        raise DataError(f"{source}: a row has more fields than the header; quote fields that contain {sep!r}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not valid UTF-8 ({exc}); re-save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{source}: cannot parse as CSV: {str(exc).strip()}") from None
    df.index = range(1, len(df) + 1)
    return df


def _read_parquet(source: str, data: bytes) -> Any:
    import io

    import pandas as pd

    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{source}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    df.index = range(1, len(df) + 1)
    return df


def _read_json_array(source: str, data: bytes) -> Any:
    import pandas as pd

    try:
        rows = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{source}: not valid JSON ({exc})") from None
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{source}: row {bad}: expected a JSON object, got {type(rows[bad - 1]).__name__}")
    return pd.DataFrame.from_records(rows, index=range(1, len(rows) + 1))


def _read_jsonl(source: str, data: bytes) -> Any:
    import pandas as pd

    rows, lines = [], []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{source}: line {lineno}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}: line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        lines.append(lineno)
    return pd.DataFrame.from_records(rows, index=lines)


def read_hf_folder(source: str, required: dict[str, str]) -> list[Table]:
    """A ``save_to_disk`` Dataset (one table, split by hash) or DatasetDict (known splits kept)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(source)
    except Exception as exc:  # corrupt arrow files, bad JSON, missing shards ...
        raise DataError(f"{source}: not a readable HF dataset folder ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, datasets.Dataset):
        return [_hf_table(loaded, source, None, required)]
    known = {name: SPLIT_ALIASES[name.lower()] for name in loaded if name.lower() in SPLIT_ALIASES}
    if "train" not in known.values():
        raise DataError(f"{source}: no train split; splits found: {', '.join(loaded) or 'none'}")
    return [_hf_table(loaded[name], f"{source} [split {name}]", split, required) for name, split in known.items()]


def _hf_table(ds: Any, origin: str, split: str | None, required: dict[str, str]) -> Table:
    if len(ds) == 0:
        raise DataError(f"{origin}: no rows")
    check_columns(ds.column_names, required, origin)  # before converting: only needed columns
    return Table(ds.select_columns(list(required)).to_pandas(), origin, split, "index")
