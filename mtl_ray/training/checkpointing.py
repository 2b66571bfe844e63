"""Bridge between the trainer / model and the checkpoint directory format (``mtl_ray.checkpoint``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

import mtl_ray
from mtl_ray.checkpoint import LoadedCheckpoint, load_checkpoint, load_meta, save_checkpoint
from mtl_ray.config import Config, config_from_dict, config_to_dict
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import TaskSpec

FORMAT = "mtl-ray-checkpoint"
FORMAT_VERSION = 1
STEP_PREFIX = "step-"  # a run's checkpoints: <checkpoint_dir>/step-0000120, ...


def step_checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint saved at ``step`` (both the in-process and the Ray Train path)."""
    return f"{STEP_PREFIX}{step:07d}"


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """A run's ``step-*`` checkpoint folders in ``folder`` as (step, path), oldest first."""
    found = []
    for path in folder.glob(STEP_PREFIX + "*") if folder.is_dir() else ():
        step = path.name.removeprefix(STEP_PREFIX)
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def saved_aggregate(path: Path) -> float:
    """The validation aggregate a checkpoint was saved with (-inf: saved without one); a checkpoint
    whose ``meta.json`` fails its manifest raises :class:`CheckpointError`."""
    value = (load_meta(path).get("metrics") or {}).get("aggregate")
    return float(value) if isinstance(value, (int, float)) else float("-inf")


def model_meta(cfg: Config, model: MultiTaskModel) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` without the pretrained weights (JSON-safe)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(cfg),
        "specs": {name: spec.to_dict() for name, spec in model.specs.items()},
        "encoder_config": model.encoder_config,
        "sharing_depth": model.sharing_depth,
        "num_layers": model.num_layers,
        "versions": {
            "mtl_ray": mtl_ray.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def save_training_checkpoint(
    path: str | Path,
    cfg: Config,
    model: MultiTaskModel,
    tokenizer: Any,
    training_state: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    meta = model_meta(cfg, model)
    meta["metrics"] = metrics or {}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    keys = CheckpointKeys.from_config(cfg.checkpoint)  # encrypted and / or signed as the config says
    return save_checkpoint(
        path, model_state=state, meta=meta, training_state=training_state, tokenizer=tokenizer, keys=keys
    )


def _check_format(ckpt: LoadedCheckpoint) -> None:
    meta = ckpt.meta
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt.path}: not an mtl-ray checkpoint (meta.json format={meta.get('format')!r})")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt.path}: checkpoint format {meta.get('format_version')} is newer than this mtl-ray "
            f"({FORMAT_VERSION}); upgrade mtl-ray"
        )


def model_from_checkpoint(ckpt: LoadedCheckpoint) -> tuple[MultiTaskModel, Config]:
    """Rebuild the model from a verified checkpoint (random init, then the saved weights, strict)."""
    _check_format(ckpt)
    meta = ckpt.meta
    cfg = config_from_dict(meta["config"])
    specs = {name: TaskSpec.from_dict(d) for name, d in meta["specs"].items()}
    model = MultiTaskModel.from_encoder_config(
        meta["encoder_config"],
        specs,
        sharing_depth=meta["sharing_depth"],
        pooling=cfg.model.pooling,
        head_dropout=cfg.model.head_dropout,
        contrastive_temperature=cfg.model.contrastive_temperature,
    )
    missing, unexpected = model.load_state_dict(ckpt.model_state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt.path}: weights do not match the model described in meta.json "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    return model, cfg


def load_for_resume(path: str | Path, keys: CheckpointKeys | None = None) -> LoadedCheckpoint:
    ckpt = load_checkpoint(path, verify=True, load_training_state=True, keys=keys)
    _check_format(ckpt)
    if ckpt.training_state is None:
        raise CheckpointError(f"{path}: has no training state (an export, not a resumable checkpoint)")
    return ckpt


def check_resume_compatible(ckpt: LoadedCheckpoint, cfg: Config, model: MultiTaskModel) -> None:
    """Refuse to resume a run whose tasks, encoder or sharing depth differ from the checkpoint's."""
    meta = ckpt.meta
    saved_tasks = sorted(meta["specs"])
    if saved_tasks != sorted(model.specs):
        raise CheckpointError(f"{ckpt.path}: trained tasks {saved_tasks}, this config has {sorted(model.specs)}")
    for name, d in meta["specs"].items():
        if TaskSpec.from_dict(d) != model.specs[name]:
            raise CheckpointError(f"{ckpt.path}: task {name!r} differs from the checkpoint's (labels, type or metrics)")
    if meta["sharing_depth"] != model.sharing_depth:
        raise CheckpointError(
            f"{ckpt.path}: sharing_depth {meta['sharing_depth']} in the checkpoint, {model.sharing_depth} in this config"
        )
    if meta["encoder_config"] != model.encoder_config:
        raise CheckpointError(f"{ckpt.path}: the checkpoint was trained with a different encoder")
