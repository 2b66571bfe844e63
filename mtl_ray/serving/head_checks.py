"""Checks a head's checkpoint passes before a head replica serves it (torch-free; both head kinds use them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtl_ray.errors import CheckpointError
from mtl_ray.serving.checkpoint_info import CheckpointInfo, read_checkpoint_info, shared_fingerprint


def check_head_checkpoint(
    info: CheckpointInfo, task: str, *, reference: str | Path | None = None, expect: dict[str, Any] | None = None
) -> str:
    """Raise :class:`CheckpointError` unless ``info`` (verified) can serve ``task`` in place of the served
    head. ``reference``: the checkpoint the encoder serves; when ``info`` is another one, its encoder
    config, sharing depth, pooling and shared weights must be identical. ``expect`` ({"type",
    "max_length"}): what the ingress tokenizes for; a replacement must keep them. Returns the shared
    weights' fingerprint when it was compared, else ""."""
    if task not in info.spec_dicts:
        raise CheckpointError(f"{info.path}: has no task {task!r}; it has: {', '.join(sorted(info.spec_dicts))}")
    spec = info.spec_dicts[task]
    for key in ("type", "max_length"):
        if expect is not None and expect.get(key) is not None and spec.get(key) != expect[key]:
            raise CheckpointError(
                f"{info.path}: task {task!r} has {key}={spec.get(key)!r}, the served task has "
                f"{expect[key]!r}; a replacement head must keep the task's {key}"
            )
    if reference is None or Path(reference).absolute() == info.path:
        return ""
    ref = read_checkpoint_info(reference, verify=False, keys=info.keys)  # the encoder replicas verified it
    for key in ("encoder_config", "sharing_depth", "pooling"):
        if getattr(info, key) != getattr(ref, key):
            raise CheckpointError(
                f"{info.path}: {key} differs from the served checkpoint {ref.path}; a replacement head must be "
                "trained against the same encoder, cut at the same depth"
            )
    fingerprint = shared_fingerprint(info)
    if fingerprint != shared_fingerprint(ref):
        raise CheckpointError(
            f"{info.path}: task {task!r} was trained against different shared encoder weights than "
            f"{ref.path} serves (fingerprints differ); its head would read vectors it never saw"
        )
    return fingerprint
