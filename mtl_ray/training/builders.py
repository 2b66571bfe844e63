"""Builders: the only code that turns a :class:`~mtl_ray.config.Config` into components — tokenized
task data, the model, and the trainer with its optimizer, scheduler, task sampler and loss weighting
(each built by its own module's builder and handed to :class:`~mtl_ray.training.loop.MultiTaskTrainer`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import torch

from mtl_ray.config import Config
from mtl_ray.data.sources import load_task_splits
from mtl_ray.data.task_texts import add_task_texts
from mtl_ray.data.tokenize import tokenize_split
from mtl_ray.device import resolve_device
from mtl_ray.model.encoder import load_encoder
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import TaskSpec, resolve_spec
from mtl_ray.training import distributed as dist_utils
from mtl_ray.training.distill import Distiller
from mtl_ray.training.early_stopping import ActiveTaskSampler, PerTaskEarlyStopping, build_early_stopping
from mtl_ray.training.frozen import FrozenTrunk
from mtl_ray.training.init_from import init_from_checkpoint
from mtl_ray.training.loop import MultiTaskTrainer, RowStream
from mtl_ray.training.loss_scaling import describe, loss_scales
from mtl_ray.training.optim import build_optimizer, build_scheduler
from mtl_ray.training.samplers import build_sampler
from mtl_ray.training.task_data import TaskData
from mtl_ray.training.weighting import build_weighting

__all__ = ["SPLITS", "TaskData", "build_model", "build_trainer", "load_specs_and_splits", "tokenize_tasks"]

SPLITS = ("train", "validation", "test")


def load_specs_and_splits(
    cfg: Config, preloaded: dict[str, tuple[datasets.DatasetDict, list[str] | None]] | None = None
) -> tuple[dict[str, TaskSpec], dict[str, datasets.DatasetDict]]:
    """Read every task's raw splits (built-in or user files) and resolve its spec. ``preloaded``:
    ``(splits, label_names)`` of tasks already read elsewhere (streamed tasks: eval splits only)."""
    specs: dict[str, TaskSpec] = {}
    raw: dict[str, datasets.DatasetDict] = {}
    for name in sorted(cfg.tasks):
        task = cfg.tasks[name]
        if preloaded is not None and name in preloaded:
            splits, label_names = preloaded[name]
        else:
            splits, label_names = load_task_splits(task, cfg.data)
        specs[name] = TaskSpec.from_config(task, label_names)
        raw[name] = splits
    return specs, add_task_texts(cfg.tasks, raw)  # include_task_texts: other tasks' train texts


def tokenize_tasks(
    specs: dict[str, TaskSpec], raw: dict[str, datasets.DatasetDict], tokenizer: Any
) -> dict[str, TaskData]:
    out = {}
    for name, spec in specs.items():
        splits = {
            split: tokenize_split(raw[name][split], tokenizer, spec.max_length, spec.is_pair)
            for split in SPLITS
            if split in raw[name] and len(raw[name][split]) > 0
        }
        out[name] = TaskData(spec=spec, splits=splits)
    return out


def build_model(cfg: Config, specs: dict[str, TaskSpec]) -> tuple[MultiTaskModel, Any]:
    """The pretrained encoder cut at ``model.sharing_depth``, with a head per task, and its tokenizer."""
    encoder, tokenizer = load_encoder(cfg.model.encoder, cfg.data.resolved_cache_dir())
    specs = {t: resolve_spec(s, cfg.tasks[t], tokenizer) for t, s in specs.items()}  # e.g. mlm: the [MASK] id
    model = MultiTaskModel(
        encoder,
        specs,
        sharing_depth=cfg.model.sharing_depth,
        pooling=cfg.model.pooling,
        head_dropout=cfg.model.head_dropout,
        contrastive_temperature=cfg.model.contrastive_temperature,
    )
    if cfg.model.init_from:  # trunk, towers and heads from a trained checkpoint (training/init_from.py)
        from mtl_ray.crypto import CheckpointKeys

        keys = CheckpointKeys.from_config(cfg.checkpoint)
        init_from_checkpoint(model, cfg.model.init_from, cfg.model.encoder, cfg.model.pooling, keys)
    return model, tokenizer


def train_sizes(data: Mapping[str, TaskData], streams: Mapping[str, RowStream]) -> dict[str, int]:
    """Training rows per task (all ranks together): what the task sampler draws by."""
    tasks = sorted({t for t, d in data.items() if d.size("train") > 0} | set(streams))
    if not tasks:
        raise ValueError("no task has training data")
    return {t: streams[t].num_examples if t in streams else data[t].size("train") for t in tasks}


def build_trainer(
    cfg: Config,
    model: MultiTaskModel,
    data: dict[str, TaskData],
    pad_token_id: int,
    *,
    device: torch.device | str | None = None,
    train_streams: Mapping[str, RowStream] | None = None,
    data_parallel_size: int | None = None,
) -> MultiTaskTrainer:
    """The trainer for ``cfg.train``, with its components built here: the loss weighting over the
    trained tasks' static weights, AdamW over the model (+ learnable weights), the warm-up/decay schedule
    and the task sampler over the tasks' training sizes. ``train_streams``: tasks whose training rows come
    from a stream (e.g. a Ray Data shard); their ``data`` entry holds only eval splits.
    ``data_parallel_size``: slices per global micro-batch (None: the world size; Ray Train passes
    ``ray.num_workers``' max so an elastic run keeps one global batch)."""
    tcfg = cfg.train
    streams = dict(train_streams or {})
    sizes = train_sizes(data, streams)
    device = torch.device(device) if device is not None else resolve_device(tcfg.device)
    model = model.to(device)
    weighting = build_weighting(tcfg.weighting, {t: data[t].spec.loss_weight for t in sizes}, tcfg).to(device)
    # train.freeze_shared: the trunk leaves the optimizer, its outputs are cached (training/frozen.py)
    frozen = (
        FrozenTrunk.for_training(cfg, model, {t: data[t] for t in sizes if t in data}) if tcfg.freeze_shared else None
    )
    optimizer = build_optimizer(model, weighting, tcfg)
    # train.distill_from: teachers checked against the tasks, their outputs read from (or put in) the cache
    distill = (
        Distiller.for_training(cfg, model, {t: data[t] for t in sizes if t in data}, pad_token_id, device)
        if tcfg.distill_from
        else None
    )
    early_stopping = build_early_stopping(cfg, model, {t: data[t] for t in sizes if t in data})
    sampler = build_sampler(tcfg.sampler, sizes, tcfg, tcfg.seed)
    if isinstance(early_stopping, PerTaskEarlyStopping):  # a stopped task is drawn no more
        sampler = ActiveTaskSampler(sampler, early_stopping.is_active)
    # train.loss_scaling: one factor per task, from the in-memory train labels (training/loss_scaling.py)
    scales = loss_scales(
        tcfg.loss_scaling,
        {t: data[t].spec for t in sizes},
        lambda t: None if t in streams else data[t].splits["train"]["labels"],
    )
    if tcfg.loss_scaling != "none" and dist_utils.rank_and_world()[0] == 0:
        print(describe(scales), flush=True)
    return MultiTaskTrainer(
        tcfg,
        model,
        data,
        pad_token_id,
        weighting=weighting,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, tcfg),
        sampler=sampler,
        frozen=frozen,
        early_stopping=early_stopping,
        device=device,
        train_streams=streams,
        distill=distill,
        loss_scales=scales,
        data_parallel_size=data_parallel_size,
    )
