"""Plain-torch serving pieces, each loading only its own slice of a checkpoint (no Ray here).

    ingress: tokenize -> TokenBatch ──> EncoderPart: embeddings + layers 1..k (+ pooling when k = L) -> Encoded
                                        └─> HeadPart (one per task): layers k+1..L, pooling, head -> predictions

With k = L the encoder pools and only (n, H) vectors leave it; with k < L it sends the hidden states
(n, T, H) and the attention mask, trimmed to the request's own longest input.

Precision applies to the transformer layers (encoder and task layers): fp32, bf16, or int8 (dynamic
quantization of their Linear layers). Pooling and heads always run in fp32: they cost nothing and keep
the probabilities stable. Every loader verifies the checkpoint manifest (sizes and sha256) before it
reads a weight.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn

from mtl_ray.checkpoint import MODEL_FILE, TOKENIZER_DIR, load_meta, verify_checkpoint
from mtl_ray.data.tokenize import collate
from mtl_ray.device import resolve_device
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.model.multitask import HEADS_PREFIX, SHARED_PREFIX, TASK_LAYERS_PREFIX, SharedEncoder, TaskTower
from mtl_ray.model.pooling import POOLERS
from mtl_ray.tasks.base import TaskSpec, get_task_type

CHECKPOINT_FORMAT = "mtl-ray-checkpoint"
PRECISIONS = ("fp32", "bf16", "int8")


# --------------------------------------------------------------------------- what crosses deployments


@dataclass
class TokenBatch:
    """Unpadded token ids of n inputs (ingress -> encoder). Lists, so it pickles small and padding
    happens once, in the encoder, over everything batched together."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def features(self) -> list[dict[str, list[int]]]:
        return [
            {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": tt}
            for ids, tt in zip(self.input_ids, self.token_type_ids)
        ]


@dataclass
class Encoded:
    """Encoder output for one TokenBatch (encoder -> heads): pooled (n, H) float32 when k = L, else
    hidden (n, T, H) float32 with attention_mask (n, T) int64."""

    pooled: np.ndarray | None = None
    hidden: np.ndarray | None = None
    attention_mask: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.pooled, self.hidden, self.attention_mask) if a is not None)


def count_inputs(batches: Sequence[TokenBatch]) -> int:
    """``@serve.batch`` size function: batch sizes count texts, not requests."""
    return sum(len(b) for b in batches)


# --------------------------------------------------------------------------- checkpoint reading


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's meta.json says about the model, read without loading weights."""

    path: Path
    specs: dict[str, TaskSpec]
    encoder_config: dict[str, Any]
    sharing_depth: int
    num_layers: int
    pooling: str
    head_dropout: float

    @property
    def hard_shared(self) -> bool:
        """k = L: the encoder pools and heads read only the pooled vector."""
        return self.sharing_depth == self.num_layers

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR


def read_checkpoint_info(path: str | Path, *, verify: bool = True) -> CheckpointInfo:
    """Verify the whole checkpoint (unless ``verify=False``: meta.json only) and describe it."""
    root = Path(path).expanduser().absolute()
    if verify:
        verify_checkpoint(root)
    meta = load_meta(root)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{root}: not an mtl-ray checkpoint (meta.json format={meta.get('format')!r})")
    try:
        model_cfg = meta["config"]["model"]
        return CheckpointInfo(
            path=root,
            specs={name: TaskSpec.from_dict(d) for name, d in meta["specs"].items()},
            encoder_config=meta["encoder_config"],
            sharing_depth=int(meta["sharing_depth"]),
            num_layers=int(meta["num_layers"]),
            pooling=str(model_cfg.get("pooling", "mean")),
            head_dropout=float(model_cfg.get("head_dropout", 0.1)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{root}: meta.json lacks what serving needs ({type(exc).__name__}: {exc})") from None


def load_tensors(info: CheckpointInfo, prefix: str) -> dict[str, Tensor]:
    """Only the tensors whose key starts with ``prefix`` (prefix removed); call after verification."""
    out = {}
    with safe_open(str(info.path / MODEL_FILE), framework="pt", device="cpu") as f:
        for key in f.keys():
            if key.startswith(prefix):
                out[key[len(prefix) :]] = f.get_tensor(key)
    return out


def state_fingerprint(state: dict[str, Tensor]) -> str:
    """sha256 over keys, dtypes, shapes and bytes: equal fingerprints mean identical weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def shared_fingerprint(info: CheckpointInfo) -> str:
    """Fingerprint of the shared encoder weights (embeddings + layers 1..k)."""
    return state_fingerprint(load_tensors(info, SHARED_PREFIX))


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
    def from_checkpoint(cls, path: str | Path, precision: str = "fp32", device: str = "cpu") -> EncoderPart:
        info = read_checkpoint_info(path)  # verifies the manifest first
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
    ) -> HeadPart:
        """Load ``task``'s tower from ``path``. ``reference`` (the checkpoint the encoder serves): when
        ``path`` differs, its encoder config, sharing depth, pooling and shared weights must be identical.
        ``expect`` ({"type", "max_length"}): what the ingress tokenizes for; a replacement must keep them."""
        info = read_checkpoint_info(path)
        if task not in info.specs:
            raise CheckpointError(f"{info.path}: has no task {task!r}; it has: {', '.join(sorted(info.specs))}")
        spec = info.specs[task]
        if expect is not None:
            for key in ("type", "max_length"):
                if expect.get(key) is not None and getattr(spec, key) != expect[key]:
                    raise CheckpointError(
                        f"{info.path}: task {task!r} has {key}={getattr(spec, key)!r}, the served task has "
                        f"{expect[key]!r}; a replacement head must keep the task's {key}"
                    )
        fingerprint = ""
        if reference is not None and Path(reference).absolute() != info.path:
            ref = read_checkpoint_info(reference, verify=False)  # the encoder replicas verified it
            _check_same_encoder(info, ref)
            fingerprint = shared_fingerprint(info)
            if fingerprint != shared_fingerprint(ref):
                raise CheckpointError(
                    f"{info.path}: task {task!r} was trained against different shared encoder weights than "
                    f"{ref.path} serves (fingerprints differ); its head would read vectors it never saw"
                )
        tower = TaskTower.from_encoder_config(
            info.encoder_config, spec, info.sharing_depth, pooling=info.pooling, head_dropout=info.head_dropout
        )
        state = {"layers." + k: v for k, v in load_tensors(info, f"{TASK_LAYERS_PREFIX}{task}.").items()}
        state.update({"head." + k: v for k, v in load_tensors(info, f"{HEADS_PREFIX}{task}.").items()})
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


def _check_same_encoder(info: CheckpointInfo, ref: CheckpointInfo) -> None:
    for key in ("encoder_config", "sharing_depth", "pooling"):
        if getattr(info, key) != getattr(ref, key):
            raise CheckpointError(
                f"{info.path}: {key} differs from the served checkpoint {ref.path}; a replacement head must be "
                "trained against the same encoder, cut at the same depth"
            )


def _load_strict(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match meta.json (missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
        )
