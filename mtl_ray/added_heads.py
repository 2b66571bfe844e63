"""A base checkpoint plus task heads from other checkpoints (``--head TASK=PATH``), as one model.

A head checkpoint (``mtl-ray add-task`` output) holds the base's shared weights and one or more task
towers. Merging it takes those towers (``task_layers.<task>.*``, ``heads.<task>.*``) and the task's
spec and config, replacing the base's task of that name or adding a new one, after the same checks
the Serve head replicas make: same encoder config, sharing depth and pooling, and the same shared
weights (sha256 fingerprint). The result is a :class:`~mtl_ray.checkpoint.LoadedCheckpoint` that
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
from mtl_ray.model.multitask import HEADS_PREFIX, SHARED_PREFIX, TASK_LAYERS_PREFIX


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


def _fingerprint(state: Mapping) -> str:
    from mtl_ray.serving.checkpoint_info import numpy_fingerprint  # the function Serve's check uses

    shared = {k: v for k, v in state.items() if k.startswith(SHARED_PREFIX)}
    return numpy_fingerprint(
        {k: v.detach().float().cpu().numpy() if hasattr(v, "detach") else v for k, v in shared.items()}
    )


def _pooling(meta: Mapping) -> str:
    return meta.get("config", {}).get("model", {}).get("pooling", "mean")


def with_heads(
    base: LoadedCheckpoint, heads: Mapping[str, str | Path], keys: CheckpointKeys | None = None
) -> LoadedCheckpoint:
    """``base`` with each ``task``'s tower taken from ``heads[task]`` (replacing or adding the task)."""
    if not heads:
        return base
    state = dict(base.model_state)
    meta = copy.deepcopy(base.meta)
    base_fingerprint = _fingerprint(state)
    for task, path in heads.items():
        head = load_checkpoint(path, load_training_state=False, keys=keys)  # verified (and signature-checked)
        if task not in head.meta.get("specs", {}):
            have = ", ".join(sorted(head.meta.get("specs", {})))
            raise CheckpointError(f"--head {task}={path}: that checkpoint has no task {task!r}; it has: {have}")
        for key, a, b in (
            ("encoder_config", head.meta.get("encoder_config"), meta.get("encoder_config")),
            ("sharing_depth", head.meta.get("sharing_depth"), meta.get("sharing_depth")),
            ("pooling", _pooling(head.meta), _pooling(meta)),
        ):
            if a != b:
                raise CheckpointError(
                    f"--head {task}={path}: {key} differs from the base checkpoint {base.path}; a head must be trained "
                    "against the same encoder, cut at the same depth"
                )
        if _fingerprint(head.model_state) != base_fingerprint:
            raise CheckpointError(
                f"--head {task}={path}: was trained against different shared encoder weights than {base.path} "
                "(fingerprints differ); its head would read vectors it never saw"
            )
        mine = (f"{TASK_LAYERS_PREFIX}{task}.", f"{HEADS_PREFIX}{task}.")
        state = {k: v for k, v in state.items() if not k.startswith(mine)}
        state.update({k: v for k, v in head.model_state.items() if k.startswith(mine)})
        meta["specs"][task] = head.meta["specs"][task]
        meta["config"]["tasks"][task] = head.meta["config"]["tasks"][task]
    return LoadedCheckpoint(
        path=base.path, model_state=state, meta=meta, training_state=None, tokenizer_dir=base.tokenizer_dir
    )
