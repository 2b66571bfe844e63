"""Streaming user Parquet / JSONL training data through Ray Data (``ray.streaming: true``).

Without streaming every Ray Train worker reads every task's whole file into memory. With it, the
*train split* of each user task whose source is Parquet or JSONL (a file, a folder / URI prefix of
shards, or a folder with ``train`` / ``validation`` / ``test`` entries; local paths or ``s3://``,
``gs://`` ... URIs) never lands on one node:

    read_parquet / read_json ─▶ map_batches(standardize + hash split) ─▶ keep train ─▶
    map_batches(tokenize) ─▶ streaming_split(num_workers, equal=True) ─▶ ShardStream on each rank

Reading, splitting and tokenizing run as Ray Data tasks on the cluster (not on the driver, not on
the training workers). The same seeded text hash as the in-memory loader assigns rows to splits, so
a streamed task has exactly the splits ``--no-ray`` would give it. The validation and test splits
are collected on the driver (they must fit in memory: they are scored in full at every evaluation)
and shipped to the workers through the object store.

Semantics that differ from in-memory tasks (docs/training.md):
- order: each rank reads its shard in the order Ray Data produces blocks, mixed by a local shuffle
  buffer; blocks are assigned to ranks dynamically, so a run is not bit-reproducible;
- resume: a restored run continues in the same epoch and skips as many batches as were consumed,
  but which rows those were is not recorded: rows may be seen twice or skipped around a restart;
- ``max_train_examples`` keeps the first N streamed rows (not a seeded subsample);
- no majority-class baseline for streamed tasks (their train labels are never collected).
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mtl_ray.config import Config, DataConfig, TaskConfig
from mtl_ray.data.batches import keep_splits, label_counts, label_indices, standardize_batch, tokenize_batch
from mtl_ray.data.readers import SPLIT_ALIASES
from mtl_ray.errors import DataError
from mtl_ray.tasks.base import get_task_type, label_dtype

STREAM_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".jsonl.gz": "json"}
SPLIT_NAMES = SPLIT_ALIASES  # the same split-file names as the in-memory reader
SHUFFLE_BUFFER_ROWS = 256
DATASET_PREFIX = "stream:"


# =========================================================================== where the rows are


@dataclass
class StreamSource:
    """A task's files: ``fmt`` ("parquet" / "json"), the paths per given split (``None``: one table
    whose rows are all assigned by hash)."""

    fmt: str
    paths: dict[str | None, list[str]]


def _fmt_of(name: str) -> str | None:
    lower = name.lower()
    for ext, fmt in STREAM_FORMATS.items():
        if lower.endswith(ext):
            return fmt
    return None


def _join(source: str, name: str) -> str:
    return source.rstrip("/") + "/" + name


def _shards(fs: Any, path: str, source: str) -> list[str]:
    """Files of a folder / prefix, in name order (hidden and marker files skipped)."""
    names = sorted(posixpath.basename(str(n).rstrip("/")) for n in fs.ls(path, detail=False))
    return [_join(source, n) for n in names if _fmt_of(n) and not n.startswith(("_", "."))]


def stream_source(task: TaskConfig) -> StreamSource | None:
    """How to stream ``task``, or None when it is not a streamable source (built-in, CSV, HF folder)."""
    import fsspec

    source = task.source
    if source.startswith("builtin:"):
        return None
    try:
        fs, path = fsspec.core.url_to_fs(source)
        exists, is_dir = fs.exists(path), fs.isdir(path)
    except (ImportError, ValueError, OSError) as exc:
        raise DataError(f"{source}: cannot open ({type(exc).__name__}: {exc})") from None
    if not exists:
        raise DataError(f"{source}: no such file or folder")
    if not is_dir:
        fmt = _fmt_of(source)
        return StreamSource(fmt, {None: [source]}) if fmt else None
    if fs.exists(posixpath.join(path, "dataset_dict.json")) or fs.exists(posixpath.join(path, "state.json")):
        return None  # an HF save_to_disk folder: loaded in memory
    paths: dict[str | None, list[str]] = {}
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        base = posixpath.basename(str(entry["name"]).rstrip("/"))
        stem = base.split(".", 1)[0].lower()
        if stem not in SPLIT_NAMES:
            continue
        sub = _join(source, base)
        files = _shards(fs, entry["name"], sub) if entry["type"] == "directory" else ([sub] if _fmt_of(base) else [])
        if files:
            paths[SPLIT_NAMES[stem]] = files
    if paths and "train" not in paths:
        raise DataError(f"{source}: has {', '.join(sorted(p for p in paths if p))} files but no train split")
    if not paths:
        shards = _shards(fs, path, source)
        if not shards:
            return None
        paths = {None: shards}
    formats = {_fmt_of(p) for files in paths.values() for p in files}
    if len(formats) > 1:
        raise DataError(f"{source}: mixes Parquet and JSONL files; streaming reads one format per task")
    return StreamSource(formats.pop(), paths)


def streamed_tasks(cfg: Config) -> dict[str, StreamSource]:
    """The tasks ``ray.streaming`` streams (user Parquet / JSONL sources), with their files."""
    if not cfg.ray.streaming:
        return {}
    out = {}
    for name in sorted(cfg.tasks):
        src = stream_source(cfg.tasks[name])
        if src is not None:
            out[name] = src
    return out


# =========================================================================== Ray Data stages (run as tasks)


# =========================================================================== driver: plan the stream


@dataclass
class StreamedTask:
    """What the driver learned about one streamed task and ships to the workers."""

    name: str
    num_examples: int  # train rows (after max_train_examples)
    label_names: list[str] | None
    eval_ref: Any  # ObjectRef of a DatasetDict(validation, test) with standard columns
    dataset: Any  # the tokenized train ray.data.Dataset (TorchTrainer(datasets=...) splits it)

    @property
    def key(self) -> str:
        return DATASET_PREFIX + self.name


def _read(src: StreamSource, paths: list[str], cpus: float) -> Any:
    import ray.data

    if src.fmt == "parquet":
        return ray.data.read_parquet(paths, num_cpus=cpus)
    return ray.data.read_json(paths, lines=True, num_cpus=cpus)


def _standardized(task: TaskConfig, data: DataConfig, src: StreamSource, cpus: float) -> Any:
    """One Ray Data pipeline over all the task's files with a ``split`` column."""
    given = {s for s in src.paths if s is not None}
    carve = (
        0.0 if "validation" in given else data.validation_fraction,
        0.0 if "test" in given else data.test_fraction,
    )
    parts = []
    for split, paths in src.paths.items():
        ds = _read(src, paths, cpus).map_batches(
            standardize_batch,
            batch_format="pandas",
            num_cpus=cpus,
            fn_kwargs={"task": task, "data": data, "source": task.source, "given": split, "carve": carve},
        )
        parts.append(ds)
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _train_stats(task: TaskConfig, train: Any) -> tuple[int, list[str] | None]:
    """Train rows and class names (from the config, else the sorted distinct train labels, integers
    numerically), in one distributed pass whose output is a few rows per block."""
    has_classes = get_task_type(task.type).has_classes
    rows = train.map_batches(label_counts, batch_format="pandas", fn_kwargs={"has_classes": has_classes}).take_all()
    count = sum(int(r["n"]) for r in rows)
    if not has_classes:
        return count, None
    if task.label_names is not None:
        return count, [str(n) for n in task.label_names]
    keys = {str(r["label"]) for r in rows}
    if all(k.lstrip("+-").isdigit() for k in keys):
        names = [str(v) for v in sorted({int(k) for k in keys})]
    else:
        names = sorted(keys)
    if len(names) < 2:
        raise DataError(f"{task.source}: the train split has only the label(s) {names}; a classification task needs 2")
    return count, names


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """No per-operator progress bars or INFO plans from the driver-side passes and the datasets made
    here (a Dataset keeps a copy of the DataContext it was made under, so the training stream too)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    logger = logging.getLogger("ray.data")
    level = logger.level
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        logger.setLevel(level)


def _eval_splits(task: TaskConfig, data: DataConfig, std: Any, label_names: list[str] | None) -> Any:
    """validation + test as an in-memory DatasetDict (standard columns), collected in file order."""
    import datasets

    from mtl_ray.data.sources import subsample

    ds = std.map_batches(keep_splits, batch_format="pandas", fn_kwargs={"splits": ("validation", "test")})
    ds.context.execution_options.preserve_order = True  # deterministic max_eval_examples subsample
    df = ds.to_pandas()
    features = {"text": datasets.Value("string")}
    if task.text_pair_field:
        features["text_pair"] = datasets.Value("string")
    if get_task_type(task.type).supervised:
        features["label"] = datasets.Value(label_dtype(task.type))
    out = {}
    for split in ("validation", "test"):
        part = df[df["split"] == split].reset_index(drop=True)
        if len(part) == 0:
            raise DataError(f"{task.source}: split {split!r} is empty; provide more rows or a {split} file")
        part = subsample(part, task.max_eval_examples, data.split_seed)
        if "label" in part:
            part = part.assign(label=label_indices(part["label"], label_names, task.source))
        out[split] = datasets.Dataset.from_pandas(
            part[list(features)], features=datasets.Features(features), preserve_index=False
        )
    return datasets.DatasetDict(out)


def plan_streaming(cfg: Config, tokenizer_path: str) -> dict[str, StreamedTask]:
    """Build each streamed task's Ray Data pipeline and collect what workers need up front: the
    train row count (the sampler's task size), label names and the eval splits. Costs two
    distributed passes over each task's files before training (stats, eval rows)."""
    import ray

    cpus = min(1.0, cfg.ray.data_cpus)
    out = {}
    with _quiet_ray_data():
        for name, src in streamed_tasks(cfg).items():
            task = cfg.tasks[name]
            std = _standardized(task, cfg.data, src, cpus)
            train = std.map_batches(keep_splits, batch_format="pandas", fn_kwargs={"splits": ("train",)})
            count, label_names = _train_stats(task, train)
            if task.max_train_examples is not None and task.max_train_examples < count:
                train, count = train.limit(task.max_train_examples), task.max_train_examples
            per_step = cfg.train.batch_size * cfg.ray.max_workers
            if count < per_step:
                raise DataError(
                    f"{task.source}: {count} train rows, fewer than one global batch "
                    f"(train.batch_size {cfg.train.batch_size} × ray.num_workers {cfg.ray.num_workers})"
                )
            eval_splits = _eval_splits(task, cfg.data, std, label_names)
            tokenized = train.map_batches(
                tokenize_batch,
                batch_format="pandas",
                num_cpus=cpus,
                fn_kwargs={
                    "tokenizer_path": tokenizer_path,
                    "max_length": task.max_length,
                    "is_pair": task.text_pair_field is not None,
                    "label_names": label_names,
                    "source": task.source,
                },
            )
            out[name] = StreamedTask(name, count, label_names, ray.put(eval_splits), tokenized)
    return out


def data_config(cfg: Config) -> Any:
    """Train's ingest options: Ray Data may use at most ``ray.data_cpus`` CPUs for the streams."""
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig as TrainDataConfig

    options = ExecutionOptions(resource_limits=ExecutionResources(cpu=cfg.ray.data_cpus))
    return TrainDataConfig(datasets_to_split="all", execution_options=options)


# =========================================================================== worker side


class ShardStream:
    """One rank's endless stream of a streamed task's tokenized rows (the trainer's ``RowStream``).

    Every rank draws the same task at the same step and ``streaming_split(equal=True)`` gives all
    ranks equally many rows, so the ranks start each epoch together (which ``streaming_split``
    requires). State is (epoch, batches consumed in it)."""

    def __init__(self, task: str, shard: Any, num_examples: int, seed: int) -> None:
        self.task, self.shard, self.num_examples, self.seed = task, shard, num_examples, seed
        self._start_epoch(0)

    def _start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start reading ``epoch`` afresh, dropping its first ``skip`` batches (consumed before a restart)."""
        self.epoch, self.batches, self._skip = epoch, 0, skip
        self._it: Any = None

    def _open(self, per_rank: int) -> None:
        self._it = iter(
            self.shard.iter_batches(
                batch_size=per_rank,
                batch_format="pyarrow",
                drop_last=True,
                local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
                local_shuffle_seed=self.seed + self.epoch,
            )
        )

    def next_rows(self, per_rank: int) -> list[dict[str, Any]]:
        empty_epochs = 0
        while True:
            if self._it is None:
                self._open(per_rank)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                if self.batches == 0 and self._skip == 0:
                    empty_epochs += 1
                    if empty_epochs > 1:
                        raise DataError(f"task {self.task!r}: a rank's shard holds no full batch") from None
                self._start_epoch(self.epoch + 1)
                continue
            self.batches += 1
            if self._skip:  # resuming inside an epoch: drop what was consumed before the restart
                self._skip -= 1
                continue
            return batch.to_pylist()

    def state_dict(self) -> dict[str, int]:
        # batches still to skip after a restore count as consumed
        return {"epoch": self.epoch, "batches": self.batches + self._skip, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("num_examples", -1)) != self.num_examples:
            raise DataError(
                f"task {self.task!r}: checkpoint streamed {state.get('num_examples')} train rows per epoch, "
                f"the data now has {self.num_examples}"
            )
        self._start_epoch(int(state["epoch"]), skip=int(state.get("batches", 0)))


def worker_inputs(cfg: Config, streamed: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, ShardStream]]:
    """On a Train worker: ``preloaded`` eval splits for ``setup_run`` and a ``ShardStream`` per task."""
    import ray
    import ray.train

    preloaded = {}
    streams = {}
    for name, info in streamed.items():
        preloaded[name] = (ray.get(info["eval_ref"]), info["label_names"])
        shard = ray.train.get_dataset_shard(info["key"])
        streams[name] = ShardStream(name, shard, info["num_examples"], cfg.train.seed)
    return preloaded, streams
