"""Driver-side steps of a training run that need no Ray: absolute paths for workers that start
elsewhere, the storage location, a cheap resume pre-check, preparing assets and reading task data
once so bad input fails in seconds, fault injection for the failure tests, and the weight digest that
shows every rank ended bit-identical. :mod:`mtl_ray.ray.train` calls these before it starts workers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from mtl_ray.config import Config, config_from_dict, config_to_dict
from mtl_ray.errors import CheckpointError, ConfigError

FAULT_STEP_ENV = "MTL_RAY_FAULT_AT_STEP"  # kill one worker once, right after this optimizer step


FAULT_RANK_ENV = "MTL_RAY_FAULT_RANK"  # which rank (default: the last one)

# the elastic tests: every rank sleeps this long after each optimizer step (only while the file named by
# STEP_DELAY_WHILE_ENV exists, when set), so a run outlasts Ray's resize detection; the numbers are unchanged
STEP_DELAY_ENV = "MTL_RAY_STEP_DELAY_S"
STEP_DELAY_WHILE_ENV = "MTL_RAY_STEP_DELAY_WHILE"


def param_digest(model: Any) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fault_from_env(out: Path, num_workers: int) -> dict[str, Any] | None:
    """``MTL_RAY_FAULT_AT_STEP=s`` [``MTL_RAY_FAULT_RANK=r``]: kill rank r once after step s; the marker
    file in ``out`` makes the restarted attempt run through."""
    raw = os.environ.get(FAULT_STEP_ENV, "").strip()
    if not raw:
        return None
    try:
        step = int(raw)
        rank = int(os.environ.get(FAULT_RANK_ENV, str(num_workers - 1)))
    except ValueError:
        raise ConfigError(f"{FAULT_STEP_ENV} / {FAULT_RANK_ENV}: expected integers, got {raw!r}") from None
    if step < 1 or not 0 <= rank < num_workers:
        raise ConfigError(f"{FAULT_STEP_ENV}={step} / {FAULT_RANK_ENV}={rank}: need step >= 1 and 0 <= rank < workers")
    return {"step": step, "rank": rank, "marker": str(out / f".fault-injected-step-{step}-rank-{rank}")}


def step_delay_from_env() -> dict[str, Any] | None:
    """``MTL_RAY_STEP_DELAY_S=s`` [``MTL_RAY_STEP_DELAY_WHILE=file``]: ``{"seconds", "while"}`` or None."""
    raw = os.environ.get(STEP_DELAY_ENV, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{STEP_DELAY_ENV}: expected seconds, got {raw!r}") from None
    return {"seconds": seconds, "while": os.environ.get(STEP_DELAY_WHILE_ENV) or None}


def is_uri(path: str) -> bool:
    return "://" in path


def absolute_paths(cfg: Config) -> Config:
    """The config with local paths made absolute (workers may start in another directory)."""
    d = config_to_dict(cfg)
    d["train"]["output_dir"] = str(Path(cfg.train.output_dir).expanduser().resolve())
    d["data"]["cache_dir"] = str(cfg.data.resolved_cache_dir())
    for task in d["tasks"].values():
        src = task["source"]
        if not src.startswith("builtin:") and not is_uri(src) and Path(src).expanduser().exists():
            task["source"] = str(Path(src).expanduser().resolve())
    if d["model"].get("init_from") and not is_uri(d["model"]["init_from"]):
        d["model"]["init_from"] = str(Path(d["model"]["init_from"]).expanduser().resolve())
    distill_from = d["train"]["distill_from"]  # teacher checkpoints, read on the workers
    if distill_from:
        entries = [distill_from] if isinstance(distill_from, str) else distill_from
        resolved = [str(Path(e).expanduser().resolve()) for e in entries]
        d["train"]["distill_from"] = resolved[0] if isinstance(distill_from, str) else resolved
    enc = d["model"]["encoder"]
    if not enc.startswith("builtin:") and Path(enc).expanduser().exists():
        d["model"]["encoder"] = str(Path(enc).expanduser().resolve())
    for section, key in (
        ("encryption", "key_file"),
        ("signing", "private_key_file"),
        ("signing", "trusted_public_key_file"),
    ):
        value = d["checkpoint"][section][key]  # key files: resolved here, read on the workers
        if value:
            d["checkpoint"][section][key] = str(Path(value).expanduser().resolve())
    return config_from_dict(d)


def storage_location(cfg: Config, storage_path: str | None) -> str:
    """Ray Train storage: a URI as given, a local path made absolute (Ray needs that)."""
    path = storage_path or cfg.ray.storage_path or str(Path(cfg.train.output_dir) / "ray")
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def precheck_resume(path: str, cfg: Config) -> None:
    """Cheap driver-side check of a ``--resume`` checkpoint (task names, encoder, sharing depth) so a
    mismatch fails before any worker starts; workers repeat the full check."""
    if is_uri(path):
        return
    from mtl_ray.checkpoint import load_meta

    meta = load_meta(path)
    saved_tasks = sorted(meta.get("specs", {}))
    if saved_tasks != sorted(cfg.tasks):
        raise CheckpointError(f"{path}: trained tasks {saved_tasks}, this config has {sorted(cfg.tasks)}")
    saved_model = meta.get("config", {}).get("model", {})
    for key in ("encoder", "sharing_depth"):
        if saved_model.get(key) != getattr(cfg.model, key):
            raise CheckpointError(
                f"{path}: model.{key} is {saved_model.get(key)!r} in the checkpoint, {getattr(cfg.model, key)!r} here"
            )


def prepare_assets(cfg: Config) -> None:
    """Fetch / build the built-in corpora and encoder once on the driver (idempotent), so workers on
    this node find them ready instead of racing to build them."""
    builtin = sorted({t.source.split(":", 1)[1] for t in cfg.tasks.values() if t.source.startswith("builtin:")})
    if builtin:
        from mtl_ray.data.prepare import prepare_builtin

        prepare_builtin(builtin, cfg.data, progress=False)
    if cfg.model.encoder.startswith("builtin:"):
        from mtl_ray.data.assets import encoder_dir

        encoder_dir(cfg.data.resolved_cache_dir(), progress=False)


def check_task_data(cfg: Config, skip: set[str]) -> None:
    """Read every in-memory task once on the driver, so a missing file or column fails here in
    seconds (a worker would fail the same way ``ray.max_failures`` + 1 times). Every worker holds
    these tasks in memory anyway; streamed tasks (``skip``) are checked by their own planning."""
    from mtl_ray.data.sources import load_task_splits

    for name in sorted(set(cfg.tasks) - skip):
        load_task_splits(cfg.tasks[name], cfg.data)


def tokenizer_location(cfg: Config) -> str:
    """Where Ray Data tasks load the tokenizer from: the extracted built-in, a folder, or a hub name."""
    if cfg.model.encoder.startswith("builtin:"):
        from mtl_ray.data.assets import encoder_dir

        return str(encoder_dir(cfg.data.resolved_cache_dir(), progress=False))
    return cfg.model.encoder
