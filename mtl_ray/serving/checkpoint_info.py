"""Describing a checkpoint and reading slices of its weights, for serving; imports no torch.

Every serving replica reads its weights through :func:`read_tensors` (the one place weights are read),
as torch tensors (encoder, k < L heads) or numpy arrays (lean k = L heads).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mtl_ray import checkpoint
from mtl_ray.checkpoint import TOKENIZER_DIR, load_meta, verify_checkpoint
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError

if TYPE_CHECKING:
    from mtl_ray.tasks.base import TaskSpec

CHECKPOINT_FORMAT = "mtl-ray-checkpoint"
# State-dict key prefixes of MultiTaskModel (mtl_ray.model.multitask, which imports torch; a test keeps
# these equal to its constants).
SHARED_PREFIX, TASK_LAYERS_PREFIX, HEADS_PREFIX = "shared.", "task_layers.", "heads."


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's meta.json says about the model, read without loading weights."""

    path: Path
    spec_dicts: dict[str, dict[str, Any]]  # task -> TaskSpec.to_dict(), as saved
    encoder_config: dict[str, Any]
    sharing_depth: int
    num_layers: int
    pooling: str
    head_dropout: float
    keys: CheckpointKeys = field(default_factory=CheckpointKeys)  # key locations for reading its weights

    @cached_property
    def specs(self) -> dict[str, TaskSpec]:
        """The tasks as :class:`~mtl_ray.tasks.base.TaskSpec` (imports the task registry, hence torch)."""
        from mtl_ray.tasks.base import TaskSpec

        return {name: TaskSpec.from_dict(d) for name, d in self.spec_dicts.items()}

    @property
    def hard_shared(self) -> bool:
        """k = L: the encoder pools and heads read only the pooled vector."""
        return self.sharing_depth == self.num_layers

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR


def read_checkpoint_info(
    path: str | Path, *, verify: bool = True, keys: CheckpointKeys | None = None, hash_encrypted: bool = True
) -> CheckpointInfo:
    """Verify the whole checkpoint (unless ``verify=False``: meta.json only) and describe it. ``keys``:
    a trusted public key makes verification check the signature first; the key locations travel
    with the info to :func:`read_tensors`. ``hash_encrypted=False``: for a loader that reads the weights
    next (their ciphertext is hashed then, in memory, before decryption)."""
    root = Path(path).expanduser().absolute()
    keys = keys or CheckpointKeys()
    if verify:
        verify_checkpoint(root, keys, hash_encrypted=hash_encrypted)
    meta = load_meta(root)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{root}: not an mtl-ray checkpoint (meta.json format={meta.get('format')!r})")
    try:
        model_cfg = meta["config"]["model"]
        return CheckpointInfo(
            path=root,
            spec_dicts={name: dict(d) for name, d in meta["specs"].items()},
            encoder_config=meta["encoder_config"],
            sharing_depth=int(meta["sharing_depth"]),
            num_layers=int(meta["num_layers"]),
            pooling=str(model_cfg.get("pooling", "mean")),
            head_dropout=float(model_cfg.get("head_dropout", 0.1)),
            keys=keys,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{root}: meta.json lacks what serving needs ({type(exc).__name__}: {exc})") from None


def read_tensors(info: CheckpointInfo, prefix: str, framework: Literal["pt", "np"] = "pt") -> dict[str, Any]:
    """The tensors whose key starts with ``prefix`` (prefix removed), as torch tensors (``"pt"``) or
    numpy arrays (``"np"``, torch never imported); call after verification. Plaintext: only those
    tensors are read from the file; encrypted: decrypted in memory (:func:`mtl_ray.checkpoint.read_tensors`)."""
    return checkpoint.read_tensors(info.path, prefix, framework=framework, keys=info.keys)


def read_tensor_groups(
    info: CheckpointInfo, prefixes: list[str], framework: Literal["pt", "np"] = "pt"
) -> list[dict[str, Any]]:
    """:func:`read_tensors` for several prefixes with one read (and one decryption)."""
    return checkpoint.read_tensor_groups(info.path, prefixes, framework=framework, keys=info.keys)


def numpy_fingerprint(arrays: dict[str, Any]) -> str:
    """sha256 over keys, dtypes, shapes and bytes of numpy arrays: equal means identical weights."""
    import numpy as np

    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{tuple(a.shape)}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def shared_fingerprint(info: CheckpointInfo) -> str:
    """Fingerprint of the shared encoder weights (embeddings + layers 1..k), read as numpy."""
    return numpy_fingerprint(read_tensors(info, SHARED_PREFIX, "np"))
