"""A base checkpoint plus task heads from other checkpoints (``--head TASK=PATH``), as one model.

A head checkpoint (``mtl-ray add-task`` output) holds the base's shared weights and one or more task
towers. Merging it takes those towers (``task_layers.<task>.*``, ``heads.<task>.*``) and the task's
spec and config, replacing the base's task of that name or adding a new one, after the checks the
Serve head replicas make (``serving/head_checks.py``): same encoder config, sharing depth and
pooling, and the same shared weights (sha256 fingerprint). The result is a :class:`~mtl_ray.checkpoint.LoadedCheckpoint` that
``model_from_checkpoint`` builds like any other, so the Predictor and ``mtl-ray eval`` answer for the
merged model exactly what Serve answers for the same base + heads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtl_ray.checkpoint import LoadedCheckpoint, load_checkpoint
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.model.multitask import HEADS_PREFIX, TASK_LAYERS_PREFIX
from mtl_ray.serving.checkpoint_info import read_checkpoint_info
from mtl_ray.serving.head_checks import check_head_checkpoint


def parse_head_args(values: Sequence[str] | None) -> dict[str, str]:
    """``["task=path", ...]`` -> ``{task: path}``; a malformed or repeated entry is an error."""
    heads: dict[str, str] = {}
    for value in values or []:
        task, sep, path = value.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise ConfigError(f"--head {value!r}: expected TASK=PATH (e.g. --head my_task=runs/my_task/best)")
        if task.strip() in heads:
            raise ConfigError(f"--head {task.strip()}: given twice")
        heads[task.strip()] = path.strip()
    return heads


def with_heads(
    base: LoadedCheckpoint, heads: Mapping[str, str | Path], keys: CheckpointKeys | None = None
) -> LoadedCheckpoint:
    """``base`` with each ``task``'s tower taken from ``heads[task]`` (replacing or adding the task)."""
    if not heads:
        return base
    state = dict(base.model_state)
    meta = copy.deepcopy(base.meta)
    for task, path in heads.items():
        info = read_checkpoint_info(path, keys=keys)  # verified against its manifest (and signature)
        try:  # the checks a Serve head replica makes before it takes a head
            check_head_checkpoint(info, task, reference=base.path)
        except CheckpointError as exc:
            raise CheckpointError(f"--head {task}={path}: {exc}") from None
        head = load_checkpoint(path, verify=False, load_training_state=False, keys=keys)
        mine = (f"{TASK_LAYERS_PREFIX}{task}.", f"{HEADS_PREFIX}{task}.")
        state = {k: v for k, v in state.items() if not k.startswith(mine)}
        state.update({k: v for k, v in head.model_state.items() if k.startswith(mine)})
        meta["specs"][task] = head.meta["specs"][task]
        meta["config"]["tasks"][task] = head.meta["config"]["tasks"][task]
    return LoadedCheckpoint(
        path=base.path, model_state=state, meta=meta, training_state=None, tokenizer_dir=base.tokenizer_dir
    )
