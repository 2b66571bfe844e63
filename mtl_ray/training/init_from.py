"""``model.init_from``: start a model from a trained checkpoint, possibly cut deeper (stage 2).

A checkpoint at sharing depth d and a model at depth k < d (same encoder, same pooling):

    model                         <- checkpoint
    embeddings, layers 1..k       <- shared.embeddings, shared.layers 0..k-1          (bit-identical)
    task t: layer j, k < j <= d   <- shared.layers j-1          (the stage-1 trained layers, cloned per task)
    task t: layer j, d < j <= L   <- task_layers.t.(j-d-1)      (t's own, so t must be in the checkpoint)
    task t: head                  <- heads.t                    (when t is in the checkpoint; same type
                                                                 and labels, else an error naming t)

That is for a checkpoint cut deeper than the model (d > k, stage 2). At d = L (a stage-1 hard-sharing
checkpoint) every task's layers k+1..L are the stage-1 layers: MT-DNN-style per-task fine-tuning on
top of a shared trunk that stays the stage-1 trunk (``train.freeze_shared``), so Serve's shared-weight
fingerprint of the result equals that of any model cut at k from the same stage 1; a task the
checkpoint does not have gets the stage-1 layers and a fresh head.

A checkpoint cut at the model's own depth (d = k) gives only its trunk: towers stay the pretrained
encoder's and heads are fresh. That is ``mtl-ray add-task``: a new head against a live trunk, and
``--replace`` may change an existing task's labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtl_ray.checkpoint import load_meta, read_tensors, verify_checkpoint
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError
from mtl_ray.model.multitask import HEADS_PREFIX, SHARED_PREFIX, TASK_LAYERS_PREFIX, MultiTaskModel

_DESCRIBE = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")


def describe_encoder(name: str | None, config: dict[str, Any] | None) -> str:
    """``'builtin:x' (bert, 6 layers, hidden 384, vocab 30522)``: how errors name an encoder."""
    c = config or {}
    return (
        f"{name!r} ({c.get('model_type')}, {c.get('num_hidden_layers')} layers, hidden {c.get('hidden_size')}, "
        f"vocab {c.get('vocab_size')})"
    )


def _check_encoder(where: str, meta: dict[str, Any], model: MultiTaskModel, encoder: str) -> None:
    saved = meta.get("encoder_config") or {}
    if saved == model.encoder_config:
        return
    saved_name = meta.get("config", {}).get("model", {}).get("encoder")
    differ = sorted(k for k in set(saved) | set(model.encoder_config) if saved.get(k) != model.encoder_config.get(k))
    raise CheckpointError(
        f"{where}: the checkpoint was trained with encoder {describe_encoder(saved_name, saved)}, this config has "
        f"model.encoder {describe_encoder(encoder, model.encoder_config)}; their configs differ in: "
        f"{', '.join(differ[:8])}"
    )


def _check_head(where: str, task: str, saved: dict[str, Any], model: MultiTaskModel) -> None:
    spec = model.specs[task]
    saved_labels = list(saved["label_names"]) if saved.get("label_names") else None
    labels = list(spec.label_names) if spec.label_names else None
    if saved.get("type") != spec.type or saved_labels != labels:
        raise CheckpointError(
            f"{where}: task {task!r} is a {saved.get('type')} task with labels {saved_labels} in the checkpoint, a "
            f"{spec.type} task with labels {labels} in this config; rename the task to train a fresh head"
        )


def init_from_checkpoint(
    model: MultiTaskModel, path: str | Path, encoder: str, pooling: str, keys: CheckpointKeys | None = None
) -> None:
    """Load ``model`` (depth k) from a verified checkpoint at depth d >= k, as the module doc says.
    ``encoder`` / ``pooling``: this config's ``model.encoder`` / ``model.pooling`` (for the checks)."""
    root = Path(path).expanduser()
    where = f"model.init_from: {path}"
    verify_checkpoint(root, keys, hash_encrypted=False)  # read_tensors hashes the ciphertext it decrypts
    meta = load_meta(root)
    _check_encoder(where, meta, model, encoder)
    k, depth, num_layers = model.sharing_depth, meta.get("sharing_depth"), model.num_layers
    if not isinstance(depth, int) or depth < k:
        raise CheckpointError(
            f"{where}: sharing_depth {depth} in the checkpoint, {k} in this config; a model can start only from a "
            f"checkpoint that shares at least its k layers (cut a checkpoint at depth >= {k})"
        )
    saved_pooling = meta.get("config", {}).get("model", {}).get("pooling", "mean")
    if saved_pooling != pooling:
        raise CheckpointError(f"{where}: pooling {saved_pooling!r} in the checkpoint, {pooling!r} in this config")
    state = read_tensors(root, "", keys=keys)
    saved_specs = meta.get("specs", {})
    target: dict[str, Tensor] = {}
    for key, value in state.items():  # embeddings (+ projection) and layers 1..k
        if key.startswith(SHARED_PREFIX) and _layer_index(key, SHARED_PREFIX + "layers.") < k:
            target[key] = value
    for task in model.task_names if depth > k else ():
        if task in saved_specs:
            _check_head(where, task, saved_specs[task], model)
            target.update(_with_prefix(state, f"{HEADS_PREFIX}{task}.", f"{HEADS_PREFIX}{task}."))
        for j in range(k, num_layers):  # 0-based layer j of the encoder = the tower's layer j - k
            dst = f"{TASK_LAYERS_PREFIX}{task}.{j - k}."
            if j < depth:
                target.update(_with_prefix(state, f"{SHARED_PREFIX}layers.{j}.", dst))
            elif task in saved_specs:
                target.update(_with_prefix(state, f"{TASK_LAYERS_PREFIX}{task}.{j - depth}.", dst))
            else:
                raise CheckpointError(
                    f"{where}: task {task!r} is not in the checkpoint (tasks: {', '.join(sorted(saved_specs))}), whose "
                    f"layers {depth + 1}..{num_layers} are per task; a new task needs a checkpoint at depth "
                    f"{num_layers} (stage 2) or {k} (add-task)"
                )
    own = model.state_dict()
    wrong = sorted(key for key, value in target.items() if key not in own or own[key].shape != value.shape)
    from_checkpoint = [SHARED_PREFIX]
    for task in model.task_names if depth > k else ():
        from_checkpoint.append(f"{TASK_LAYERS_PREFIX}{task}.")
        if task in saved_specs:
            from_checkpoint.append(f"{HEADS_PREFIX}{task}.")
    missing = sorted(key for key in own if key.startswith(tuple(from_checkpoint)) and key not in target)
    if wrong or missing:
        raise CheckpointError(
            f"{where}: weights do not match this model (unexpected: {wrong[:5]}, missing: {missing[:5]})"
        )
    with torch.no_grad():
        for key, value in target.items():
            own[key].copy_(value)


def _layer_index(key: str, prefix: str) -> int:
    """The layer number of ``shared.layers.<i>.*`` keys; -1 for the embeddings (always loaded)."""
    return int(key[len(prefix) :].split(".", 1)[0]) if key.startswith(prefix) else -1


def _with_prefix(state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    return {dst + key[len(src) :]: value for key, value in state.items() if key.startswith(src)}
