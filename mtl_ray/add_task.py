"""``mtl-ray add-task``: train a new task's tower on a trained model's frozen trunk.

    mtl-ray add-task --checkpoint runs/builtin/best --config my_task.yaml -o runs/my_task [--replace] [--no-ray]

The YAML holds only the new task(s) (``tasks:``, any source) and training options (``train:``,
``data:``, ``ray:``, ``model.head_dropout``). The encoder, tokenizer, sharing depth k, pooling and the
contrastive temperature come from the base checkpoint; a YAML that sets one of them is refused. The
run is an ordinary ``mtl-ray train`` run (Ray Train, or this process with ``--no-ray``) of the new
tasks with ``model.init_from=BASE`` and ``train.freeze_shared=true`` (``mtl_ray/training/frozen.py``).
Its best checkpoint is exported to ``OUT/best`` (atomically: until the export finishes, ``OUT/best``
does not exist) after checking that its shared-weight fingerprint equals the base's, the check the
Serve head replicas make before they accept a head.

With Ray the training outputs are an ordinary run folder, ``<storage>/<run name>/`` (``--storage-path``,
else ``ray.storage_path``, else ``OUT/ray``; see ``mtl_ray/ray/storage.py``), whose ``summary.json``
gains ``added_tasks`` and ``head_checkpoint``. A storage outside OUT (a shared folder or a URI) also
gets a copy of the head, ``<run folder>/best``, so the run and its result outlive the node; ``OUT/best``
is written either way.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from mtl_ray.checkpoint import MANIFEST_FILE, load_checkpoint, load_meta, save_checkpoint, verify_checkpoint
from mtl_ray.config import Config, config_from_dict
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.overrides import apply_overrides, read_yaml_mapping

FROM_BASE = ("encoder", "sharing_depth", "pooling", "contrastive_temperature", "init_from")
SECTIONS = ("tasks", "train", "data", "ray", "model")
EXPORT_NAME = "best"


def read_base(path: str | Path) -> dict[str, Any]:
    """The base checkpoint's meta.json, after verifying every file against its manifest."""
    verify_checkpoint(Path(path).expanduser())
    return load_meta(Path(path).expanduser())


def add_task_config(
    base: str | Path,
    task_config: dict[str, Any],
    output_dir: str | Path,
    *,
    replace: bool = False,
    overrides: list[str] | None = None,
    where: str = "the add-task config",
) -> Config:
    """The training config of an add-task run: the YAML's tasks and options on the base's model."""
    base_path = Path(base).expanduser().absolute()
    meta = read_base(base_path)
    data = apply_overrides(task_config, overrides or [])
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not allowed in {where}; valid sections: {', '.join(SECTIONS)}")
    base_cfg = meta.get("config", {})
    base_model = base_cfg.get("model", {})
    for key in data.get("model") or {}:
        if key in FROM_BASE:
            raise ConfigError(
                f"model.{key}: comes from the base checkpoint ({base_model.get(key)!r} in {base_path}); add-task "
                f"cannot change it: remove it from {where}"
            )
    if (data.get("train") or {}).get("freeze_shared") is False:
        raise ConfigError("train.freeze_shared: add-task always trains on the frozen trunk; remove it")
    tasks = data.get("tasks") or {}
    if not tasks:
        raise ConfigError(f"tasks: {where} must name at least one new task")
    _check_names(tasks, meta.get("specs", {}), replace, base_path)
    model = {k: v for k, v in base_model.items() if k in FROM_BASE}
    model.update(data.get("model") or {}, init_from=str(base_path))
    train = {**(data.get("train") or {}), "freeze_shared": True, "output_dir": str(Path(output_dir).absolute())}
    merged = {
        "tasks": tasks,
        "model": model,
        "train": train,
        "data": {**base_cfg.get("data", {}), **(data.get("data") or {})},
        "ray": data.get("ray") or {},
    }
    return config_from_dict(merged)


def _check_names(tasks: dict[str, Any], base_specs: dict[str, Any], replace: bool, base: Path) -> None:
    for name, task in tasks.items():
        if name not in base_specs:
            if replace:
                raise ConfigError(f"tasks.{name}: --replace, but {base} has no task {name!r} to replace")
            continue
        if not replace:
            raise ConfigError(
                f"tasks.{name}: {base} already has a task {name!r}; pass --replace to train a new head for it, "
                "or choose another name"
            )
        old = base_specs[name]
        new = task if isinstance(task, dict) else {}
        for key, default in (("type", "classification"), ("max_length", 128)):
            if new.get(key, default) != old.get(key):
                raise ConfigError(
                    f"tasks.{name}.{key}: {new.get(key, default)!r}, the base's {name!r} has {old.get(key)!r}; a "
                    f"replacement head must keep the task's {key} (Serve routes and tokenizes by it)"
                )


def export_head(best: str | Path, base: str | Path, out: str | Path, keys: CheckpointKeys | None = None) -> Path:
    """Copy the run's best checkpoint to ``out`` without its training state (atomically), after
    checking its shared weights are the base's (the fingerprint Serve compares). ``keys``: the run's
    (``checkpoint.*``): the export is encrypted / signed as the run's checkpoints are."""
    from transformers import AutoTokenizer

    from mtl_ray.serving.checkpoint_info import read_checkpoint_info, shared_fingerprint

    ckpt = load_checkpoint(best, load_training_state=False, keys=keys)
    got = shared_fingerprint(read_checkpoint_info(ckpt.path, keys=keys))
    want = shared_fingerprint(read_checkpoint_info(base, verify=False, keys=keys))
    if got != want:
        raise CheckpointError(f"{best}: shared weights differ from {base}'s (fingerprints {got[:12]} != {want[:12]})")
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir)) if ckpt.tokenizer_dir else None
    meta = {**ckpt.meta, "added_to": {"base": str(Path(base).absolute()), "shared_fingerprint": want}}
    return save_checkpoint(out, model_state=ckpt.model_state, meta=meta, tokenizer=tokenizer, keys=keys)


def add_task(
    base: str | Path,
    config_path: str | Path,
    output_dir: str | Path,
    *,
    overrides: list[str] | None = None,
    replace: bool = False,
    use_ray: bool = True,
    address: str | None = None,
    storage_path: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the new task(s) and export ``OUTPUT_DIR/best``; returns the run summary with ``head_checkpoint``."""
    cfg = add_task_config(
        base, read_yaml_mapping(config_path), output_dir, replace=replace, overrides=overrides, where=str(config_path)
    )
    out = Path(cfg.train.output_dir)
    export = out / EXPORT_NAME
    if (export / MANIFEST_FILE).is_file():
        # a previous run's export: stale once this run starts, so an interrupted run leaves none behind
        shutil.rmtree(export)
    if use_ray:
        from mtl_ray.ray.train import run_ray_training

        # an unwritable or unreachable storage fails there, naming it, before Ray starts
        summary = run_ray_training(cfg, address=address, storage_path=storage_path)
    else:
        from mtl_ray.training.run import train

        summary = train(cfg, progress=progress)
    if not summary.get("best_checkpoint"):
        raise CheckpointError(f"{out}: the run reported no checkpoint")
    summary["added_tasks"] = sorted(cfg.tasks)
    keys = CheckpointKeys.from_config(cfg.checkpoint)
    summary["head_checkpoint"] = str(export_head(summary["best_checkpoint"], cfg.model.init_from, export, keys))
    if use_ray:
        _record_in_run_folder(summary, cfg, storage_path, export)
    return summary


def add_task_from_args(args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    """:func:`add_task` with what ``mtl-ray add-task`` and ``jobs/add_task.py`` both parse (``checkpoint``,
    ``config``, ``output``, ``overrides``, ``replace``, ``address``, ``storage_path``); ``options``: the rest."""
    return add_task(
        args.checkpoint,
        args.config,
        args.output,
        overrides=args.overrides,
        replace=args.replace,
        address=args.address,
        storage_path=args.storage_path,
        **options,
    )


def _record_in_run_folder(summary: dict[str, Any], cfg: Config, storage_path: str | None, export: Path) -> None:
    """The head and the add-task summary in the Ray run's folder: ``<run folder>/best`` (a copy of
    ``OUT/best``) when the storage is outside OUT, and ``summary.json`` with the added tasks and the head."""
    import json

    from mtl_ray.ray.storage import RunFolder
    from mtl_ray.training.driver import storage_location

    storage = storage_location(cfg, storage_path)
    run = RunFolder.create(storage, summary["output_dir"].rstrip("/").rsplit("/", 1)[-1])
    local = Path(run.local)
    if run.remote or not local.resolve().is_relative_to(Path(cfg.train.output_dir).resolve()):
        shutil.rmtree(local / EXPORT_NAME, ignore_errors=True)
        shutil.copytree(export, local / EXPORT_NAME)
        summary["run_head_checkpoint"] = f"{run.location}/{EXPORT_NAME}"
    (local / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    run.push()
