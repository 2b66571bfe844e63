"""Plain-torch serving pieces, each loading only its own slice of a checkpoint (no Ray here).

    ingress: tokenize -> TokenBatch ──> EncoderPart: embeddings + layers 1..k (+ pooling when k = L) -> Encoded
                                        └─> HeadPart (one per task): layers k+1..L, pooling, head -> predictions

With k = L the encoder pools and only (n, H) vectors leave it; with k < L it sends the hidden states
(n, T, H) and the attention mask, trimmed to the request's own longest input.

Precision applies to the transformer layers (encoder and task layers): fp32, bf16, or int8 (dynamic
quantization of their Linear layers). Pooling and heads always run in fp32: they cost nothing and keep
the probabilities stable. Every loader verifies the checkpoint manifest (sizes and sha256) before it
reads a weight (the signature first when a trusted public key is configured), and reads weights
only through :func:`mtl_ray.checkpoint.read_tensors`, which decrypts encrypted checkpoints in memory.

A k = L head replica does not use :class:`HeadPart` when its task type has a numpy form
(:mod:`~mtl_ray.serving.lean_head`): it then never imports torch. What crosses deployments
(:mod:`~mtl_ray.serving.wire`) and checkpoint reading (:mod:`~mtl_ray.serving.checkpoint_info`) are
torch-free modules, re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtl_ray.crypto import CheckpointKeys
from mtl_ray.data.tokenize import collate
from mtl_ray.device import resolve_device
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.model.multitask import HEADS_PREFIX, SHARED_PREFIX, TASK_LAYERS_PREFIX, SharedEncoder, TaskTower
from mtl_ray.model.pooling import POOLERS
from mtl_ray.serving.checkpoint_info import (
    CheckpointInfo,
    read_checkpoint_info,
    read_tensor_groups,
    read_tensors,
    shared_fingerprint,
)
from mtl_ray.serving.head_checks import check_head_checkpoint
from mtl_ray.serving.wire import Encoded, TokenBatch, count_inputs
from mtl_ray.tasks.base import TaskSpec, get_task_type

PRECISIONS = ("fp32", "bf16", "int8")

__all__ = [  # the torch-free pieces live in their own modules; re-exported for callers of this one
    "CheckpointInfo",
    "Encoded",
    "EncoderPart",
    "HeadPart",
    "TokenBatch",
    "count_inputs",
    "load_tensors",
    "read_checkpoint_info",
    "shared_fingerprint",
    "tokenize",
]


def load_tensors(info: CheckpointInfo, prefix: str) -> dict[str, Tensor]:
    """Only the tensors whose key starts with ``prefix`` (prefix removed), as torch; call after verification."""
    return read_tensors(info, prefix, "pt")


# --------------------------------------------------------------------------- precision, device


def apply_precision(module: nn.Module, precision: str) -> nn.Module:
    """fp32 as is; bf16 cast; int8 = torch dynamic quantization of every nn.Linear (qint8 weights with
    per-output-channel scales, activations quantized on the fly; CPU only)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return module.to(torch.bfloat16)
    if precision == "int8":
        if not any(isinstance(m, nn.Linear) for m in module.modules()):
            return module
        import warnings

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weight scales: on MiniLM, per-tensor scales moved pooled vectors twice as far
        # (min cosine to fp32 0.86 vs 0.95 on real text). Activations are quantized per batch, at run time.
        with warnings.catch_warnings():  # torch marks the quantized tensor API deprecated; it still works
            warnings.simplefilter("ignore")
            return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return module


def module_nbytes(module: nn.Module) -> int:
    """Bytes of a module's saved state (counts int8 packed weights correctly)."""
    import io

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


# --------------------------------------------------------------------------- tokenization (ingress side)


def tokenize(
    tokenizer: Any, inputs: Sequence[str] | Sequence[Sequence[str]], is_pair: bool, max_length: int
) -> tuple[TokenBatch, list[bool]]:
    """Exactly what :meth:`mtl_ray.predictor.Predictor.tokenize` does, unpadded; also which inputs lost
    tokens to ``max_length``."""
    if is_pair:
        enc = tokenizer([p[0] for p in inputs], [p[1] for p in inputs], truncation=True, max_length=max_length)
    else:
        enc = tokenizer(list(inputs), truncation=True, max_length=max_length)
    ids = [list(x) for x in enc["input_ids"]]
    types = enc.get("token_type_ids")
    token_types = [list(x) for x in types] if types is not None else [[0] * len(x) for x in ids]
    truncated = [bool(e.overflowing) for e in enc.encodings] if enc.encodings else [False] * len(ids)
    return TokenBatch(ids, token_types, int(tokenizer.pad_token_id)), truncated


# --------------------------------------------------------------------------- encoder


class EncoderPart:
    """Embeddings + shared layers of one checkpoint; pools when k = L."""

    def __init__(
        self,
        shared: SharedEncoder,
        pooling: str | None,
        precision: str = "fp32",
        device: str = "cpu",
        checkpoint: str = "",
    ):
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.precision = precision
        self.shared = apply_precision(shared.eval().to(self.device), precision)
        self.pooling = pooling  # None: send hidden states (k < L)
        self.loaded_at = time.time()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, precision: str = "fp32", device: str = "cpu", keys: CheckpointKeys | None = None
    ) -> EncoderPart:
        info = read_checkpoint_info(path, keys=keys, hash_encrypted=False)  # verifies (signature first)
        shared = SharedEncoder.from_encoder_config(info.encoder_config, info.sharing_depth)
        _load_strict(shared, load_tensors(info, SHARED_PREFIX), f"{info.path}: shared encoder")
        return cls(shared, info.pooling if info.hard_shared else None, precision, device, str(info.path))

    @torch.inference_mode()
    def encode(self, batches: Sequence[TokenBatch]) -> list[Encoded]:
        """One forward over all ``batches`` padded together; one :class:`Encoded` per batch."""
        if not batches:
            return []
        features = [f for b in batches for f in b.features()]
        batch = {k: v.to(self.device) for k, v in collate(features, batches[0].pad_token_id).items()}
        mask = batch["attention_mask"]  # (B, T)
        hidden = self.shared(batch["input_ids"], mask, batch["token_type_ids"])  # (B, T, H)
        out, start = [], 0
        if self.pooling is not None:
            pooled = POOLERS[self.pooling](hidden.float(), mask).cpu().numpy()  # (B, H) float32
            for b in batches:
                out.append(Encoded(pooled=pooled[start : start + len(b)]))
                start += len(b)
            return out
        for b in batches:
            longest = max(len(ids) for ids in b.input_ids)  # trim the padding other requests added
            rows = slice(start, start + len(b))
            out.append(
                Encoded(
                    hidden=hidden[rows, :longest].float().cpu().numpy(),  # (n, T_b, H)
                    attention_mask=mask[rows, :longest].cpu().numpy(),  # (n, T_b)
                )
            )
            start += len(b)
        return out


# --------------------------------------------------------------------------- heads


@dataclass
class HeadPart:
    """One task's tower (its layers k+1..L, pooling, head) and its spec."""

    tower: TaskTower
    spec: TaskSpec
    precision: str = "fp32"
    device: str = "cpu"
    checkpoint: str = ""
    fingerprint: str = ""  # of the shared encoder weights this head was trained against (when checked)
    loaded_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._device = resolve_device(self.device)
        self.tower = self.tower.eval().to(self._device)
        if len(self.tower.layers):
            self.tower.layers = apply_precision(self.tower.layers, self.precision)
        self._dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        task: str,
        precision: str = "fp32",
        device: str = "cpu",
        *,
        reference: str | Path | None = None,
        expect: dict[str, Any] | None = None,
        keys: CheckpointKeys | None = None,
    ) -> HeadPart:
        """Load ``task``'s tower from ``path``. ``reference`` (the checkpoint the encoder serves): when
        ``path`` differs, its encoder config, sharing depth, pooling and shared weights must be identical.
        ``expect`` ({"type", "max_length"}): what the ingress tokenizes for; a replacement must keep them."""
        info = read_checkpoint_info(path, keys=keys, hash_encrypted=False)  # another signer's head fails here
        fingerprint = check_head_checkpoint(info, task, reference=reference, expect=expect)
        spec = info.specs[task]
        if not spec.served:
            raise CheckpointError(f"{info.path}: task {task!r} is a {spec.type} training objective, not a served task")
        tower = TaskTower.from_encoder_config(
            info.encoder_config, spec, info.sharing_depth, pooling=info.pooling, head_dropout=info.head_dropout
        )
        layers, head = read_tensor_groups(
            info, [f"{TASK_LAYERS_PREFIX}{task}.", f"{HEADS_PREFIX}{task}."], "pt"
        )  # one read (and one decryption) for both
        state = {"layers." + k: v for k, v in layers.items()}
        state.update({"head." + k: v for k, v in head.items()})
        _load_strict(tower, state, f"{info.path}: task {task!r}")
        return cls(tower, spec, precision, device, checkpoint=str(info.path), fingerprint=fingerprint)

    @torch.inference_mode()
    def predict(self, encoded: Encoded) -> list[dict[str, Any]]:
        """The task type's JSON-safe predictions, one dict per input."""
        if encoded.pooled is not None:
            if len(self.tower.layers):
                raise ValueError(f"task {self.spec.name!r} has its own layers: it needs hidden states, not pooled")
            pooled = _tensor(encoded.pooled).to(self._device)  # (n, H)
        else:
            if encoded.hidden is None or encoded.attention_mask is None:
                raise ValueError("Encoded carries neither pooled vectors nor hidden states")
            mask = _tensor(encoded.attention_mask).to(self._device)  # (n, T)
            hidden = self.tower.hidden(_tensor(encoded.hidden).to(self._device, self._dtype), mask)
            pooled = POOLERS[self.tower.pooling](hidden.float(), mask)  # (n, H)
        output = self.tower.head(pooled)
        return get_task_type(self.spec.type).postprocess(output.float(), self.spec)


def _tensor(array: np.ndarray) -> Tensor:
    # Arrays arriving from Ray's object store are read-only views; torch wants writable memory.
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _load_strict(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match meta.json (missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
        )
