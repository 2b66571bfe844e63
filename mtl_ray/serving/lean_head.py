"""A k = L head replica's computation in numpy: pooled vectors (n, H) -> predictions. No torch.

With hard sharing (k = L) the encoder pools, and a head is one linear map (or none) plus a softmax or a
normalisation: a full torch + transformers process per task would spend ~550 MiB to hold a few KiB of
weights. The weights are read from the verified checkpoint as numpy arrays
(:func:`~mtl_ray.serving.checkpoint_info.read_tensors`).

Each task type with a lean form is one entry of :data:`LEAN_OUTPUTS`; a type without one is served by
the torch :class:`~mtl_ray.serving.parts.HeadPart`. ``tests/serving/test_lean_head.py`` checks every
entry against the type's own torch head + ``postprocess`` on the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError
from mtl_ray.serving.checkpoint_info import HEADS_PREFIX, read_checkpoint_info, read_tensors
from mtl_ray.serving.head_checks import check_head_checkpoint
from mtl_ray.serving.served_task import ServedTask
from mtl_ray.serving.wire import Encoded

Weights = dict[str, np.ndarray]
_LINEAR = ("proj.bias", "proj.weight")  # mtl_ray.tasks.heads.LinearHead's parameters


def _linear(w: Weights, pooled: np.ndarray) -> np.ndarray:
    return pooled @ w["proj.weight"].T + w["proj.bias"]  # (n, H) @ (H, C) + (C,) -> (n, C); dropout is off


def _classes(w: Weights, pooled: np.ndarray, task: ServedTask) -> list[dict[str, Any]]:
    logits = _linear(w, pooled)  # (n, C)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    assert task.label_names is not None
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append(
            {"label": task.label_names[best], "score": row[best], "probabilities": dict(zip(task.label_names, row))}
        )
    return out


def _value(w: Weights, pooled: np.ndarray, task: ServedTask) -> list[dict[str, Any]]:
    return [{"value": v} for v in _linear(w, pooled).reshape(-1).tolist()]  # (n, 1) -> n values


def _embedding(w: Weights, pooled: np.ndarray, task: ServedTask) -> list[dict[str, Any]]:
    norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)  # as torch F.normalize
    return [{"embedding": row} for row in (pooled / norms).tolist()]


@dataclass(frozen=True)
class LeanOutput:
    """A task type's head in numpy: the parameter names it reads and the function applying them."""

    weights: tuple[str, ...]  # keys under heads.<task>. in the checkpoint (sorted)
    apply: Callable[[Weights, np.ndarray, ServedTask], list[dict[str, Any]]]


LEAN_OUTPUTS: dict[str, LeanOutput] = {
    "classification": LeanOutput(_LINEAR, _classes),
    "pair_classification": LeanOutput(_LINEAR, _classes),
    "regression": LeanOutput(_LINEAR, _value),
    "contrastive": LeanOutput((), _embedding),  # the pooled vector is the embedding (nn.Identity head)
}


def has_lean_head(task_type: str) -> bool:
    return task_type in LEAN_OUTPUTS


@dataclass
class LeanHead:
    """One task's k = L head, in numpy. ``predict`` takes the encoder's pooled output."""

    task: ServedTask
    weights: Weights
    checkpoint: str = ""
    fingerprint: str = ""  # of the shared encoder weights this head was trained against (when checked)
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        task: str,
        *,
        reference: str | Path | None = None,
        expect: dict[str, Any] | None = None,
        keys: CheckpointKeys | None = None,
    ) -> LeanHead:
        """Load ``task``'s head from ``path`` (verified first). ``reference`` / ``expect``: as
        :func:`~mtl_ray.serving.head_checks.check_head_checkpoint`; ``expect`` also carries the task's
        ``is_pair`` / ``supervised`` as the app builder resolved them. ``keys``: key locations (an
        encrypted or signed checkpoint); the weights are then decrypted in memory, still without torch."""
        info = read_checkpoint_info(path, keys=keys, hash_encrypted=False)  # another signer's head fails here
        fingerprint = check_head_checkpoint(info, task, reference=reference, expect=expect)
        if not info.hard_shared:
            raise CheckpointError(
                f"{info.path}: sharing depth {info.sharing_depth} < {info.num_layers} layers; task {task!r} owns "
                "transformer layers, which the lean head does not run (serve it with the torch head)"
            )
        spec = info.spec_dicts[task]
        lean = LEAN_OUTPUTS.get(spec["type"])
        if lean is None:
            raise CheckpointError(f"{info.path}: task {task!r} has type {spec['type']!r}, which has no lean head")
        weights = read_tensors(info, f"{HEADS_PREFIX}{task}.", "np")
        if tuple(sorted(weights)) != lean.weights:
            raise CheckpointError(
                f"{info.path}: task {task!r}: head weights do not match its type {spec['type']!r} "
                f"(expected {list(lean.weights)}, found {sorted(weights)})"
            )
        served = _served_task(spec, expect)
        return cls(served, {k: v.astype(np.float32) for k, v in weights.items()}, str(info.path), fingerprint)

    def predict(self, encoded: Encoded) -> list[dict[str, Any]]:
        if encoded.pooled is None:
            raise ValueError(f"task {self.task.name!r}: a lean head needs pooled vectors (k = L), got hidden states")
        pooled = np.asarray(encoded.pooled, dtype=np.float32)  # (n, H); read-only object-store view: no copy
        return LEAN_OUTPUTS[self.task.type].apply(self.weights, pooled, self.task)


def _served_task(spec: dict[str, Any], expect: dict[str, Any] | None) -> ServedTask:
    given = expect or {}
    if "is_pair" in given and "supervised" in given:
        return ServedTask.from_dict({**spec, "is_pair": given["is_pair"], "supervised": given["supervised"]})
    from mtl_ray.tasks.base import TaskSpec  # not told by the app builder: ask the registry (imports torch)

    return ServedTask.from_spec(TaskSpec.from_dict(spec))
