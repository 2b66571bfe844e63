"""What crosses deployments, torch-free so that every replica can unpickle it without importing torch.

    ingress --TokenBatch--> encoder --Encoded (numpy)--> heads

Numpy arrays travel through Ray's object store as out-of-band pickle-5 buffers: a head reads them as
read-only views of the shared memory, without a copy and without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
