"""The frozen trunk's outputs, computed once per training example and read back on every later step.

With embeddings + layers 1..k frozen (``train.freeze_shared``) the trunk is a fixed function of the
tokens, so what it returns for an example never changes: the first time a batch holds an example the
trunk runs on it (eval mode, no grad) and the result is stored; from then on only the task's tower
runs. What is stored depends on the sharing depth:

    k = L:  the pooled vector, (H,) float32 per example      -> the head reads it directly
    k < L:  the hidden states, (T_i, H) float32 per example  -> the task's layers k+1..L run on them

Examples are identified by their tokens (``input_ids`` and ``token_type_ids`` without padding), so
the cache needs no row ids from the data path, and duplicates share one slot. Slots come from the
task's in-memory train split; an example that is not in it (a streamed task) is computed every time.
Hidden states are stored ragged (one row per token, ``offsets`` per example), in memory or in a numpy
memmap under a temporary directory when larger than ``memory_limit_bytes`` (``train.trunk_cache``).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MODES = ("auto", "memory", "disk")
DEFAULT_MEMORY_LIMIT = 1 << 30  # "auto": larger caches go to disk

TokenKey = tuple[tuple[int, ...], tuple[int, ...]]
# (input_ids, attention_mask, token_type_ids) of n examples padded to T -> (n, H) pooled or (n, T, H) hidden
TrunkFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def token_key(input_ids: Sequence[int], token_type_ids: Sequence[int] | None) -> TokenKey:
    ids = tuple(int(i) for i in input_ids)
    return ids, tuple(int(t) for t in token_type_ids) if token_type_ids is not None else (0,) * len(ids)


class TaskTrunkCache:
    """One task's cache: a slot per distinct training example, filled on first use."""

    def __init__(
        self,
        examples: Iterable[TokenKey],
        hidden_size: int,
        pooled: bool,
        mode: str = "auto",
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"trunk cache mode {mode!r}; valid: {', '.join(MODES)}")
        self.slots: dict[TokenKey, int] = {}
        lengths: list[int] = []
        for key in examples:
            if key not in self.slots:
                self.slots[key] = len(lengths)
                lengths.append(len(key[0]))
        self.pooled = pooled  # True: one (H,) vector per example; False: (T_i, H) per example
        self.hidden_size = hidden_size
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)  # ragged rows (k < L)
        rows = len(lengths) if pooled else int(self.offsets[-1])
        self.nbytes = rows * hidden_size * 4
        self.filled = np.zeros(len(lengths), dtype=bool)
        self.directory: Path | None = None
        on_disk = mode == "disk" or (mode == "auto" and self.nbytes > memory_limit_bytes)
        if on_disk:
            self.directory = Path(tempfile.mkdtemp(prefix="mtl-ray-trunk-cache-"))
            weakref.finalize(self, shutil.rmtree, self.directory, True)
            self.store: np.ndarray = np.lib.format.open_memmap(
                self.directory / "trunk.npy", mode="w+", dtype=np.float32, shape=(max(rows, 1), hidden_size)
            )
        else:
            self.store = np.zeros((max(rows, 1), hidden_size), dtype=np.float32)
        self.trunk_calls = 0  # trunk forwards run by this cache
        self.examples_computed = 0  # examples those forwards covered

    @property
    def on_disk(self) -> bool:
        return self.directory is not None

    def close(self) -> None:
        if self.directory is not None:
            del self.store
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def lookup(self, batch: dict[str, Tensor], trunk: TrunkFn) -> Tensor:
        """The trunk's output for ``batch`` (padded (B, T)): pooled (B, H) or hidden (B, T, H), float32,
        on the batch's device. Runs ``trunk`` only on examples seen for the first time (or not cached)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids")
        lengths = mask.sum(dim=1).tolist()
        ids_cpu = ids.cpu().tolist()
        types_cpu = types.cpu().tolist() if types is not None else None
        slots = []
        for i, n in enumerate(lengths):
            key = token_key(ids_cpu[i][:n], types_cpu[i][:n] if types_cpu is not None else None)
            slots.append(self.slots.get(key, -1))
        todo = [i for i, s in enumerate(slots) if s < 0 or not self.filled[s]]
        fresh: dict[int, np.ndarray] = {}
        if todo:
            fresh = self._compute(batch, todo, lengths, trunk)
            for i in todo:
                s = slots[i]
                if s >= 0 and not self.filled[s]:
                    self._write(s, fresh[i])
        return self._assemble(slots, fresh, lengths, ids.shape[1], ids.device)

    def _compute(
        self, batch: dict[str, Tensor], todo: list[int], lengths: list[int], trunk: TrunkFn
    ) -> dict[int, np.ndarray]:
        longest = max(lengths[i] for i in todo)
        rows = torch.tensor(todo, device=batch["input_ids"].device)
        sub = {k: batch[k][rows, :longest] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        with torch.no_grad():
            out = trunk(sub["input_ids"], sub["attention_mask"], sub.get("token_type_ids")).float().cpu().numpy()
        self.trunk_calls += 1
        self.examples_computed += len(todo)
        if self.pooled:
            return {i: out[j] for j, i in enumerate(todo)}  # (H,)
        return {i: out[j, : lengths[i]] for j, i in enumerate(todo)}  # (T_i, H)

    def _write(self, slot: int, value: np.ndarray) -> None:
        if self.pooled:
            self.store[slot] = value
        else:
            self.store[self.offsets[slot] : self.offsets[slot + 1]] = value
        self.filled[slot] = True

    def _read(self, slot: int) -> np.ndarray:
        if self.pooled:
            return self.store[slot]
        return self.store[self.offsets[slot] : self.offsets[slot + 1]]

    def _assemble(
        self, slots: list[int], fresh: dict[int, np.ndarray], lengths: list[int], width: int, device: torch.device
    ) -> Tensor:
        parts = [fresh[i] if i in fresh else self._read(s) for i, s in enumerate(slots)]
        if self.pooled:
            return torch.from_numpy(np.stack(parts)).to(device)  # (B, H)
        out = np.zeros((len(parts), width, self.hidden_size), dtype=np.float32)  # (B, T, H); 0 on padding
        for i, part in enumerate(parts):
            out[i, : lengths[i]] = part
        return torch.from_numpy(out).to(device)
