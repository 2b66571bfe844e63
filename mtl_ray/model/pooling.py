"""Pooling token states (B, T, H) into one vector per text (B, H)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over non-padding tokens (what all-MiniLM-L6-v2 / sentence-transformers use)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, H)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1); an all-padding row pools to zeros
    return summed / counts


def cls_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The first token's state ([CLS] / <s>)."""
    return hidden[:, 0]


Pooler = Callable[[Tensor, Tensor], Tensor]
POOLERS: dict[str, Pooler] = {"mean": mean_pool, "cls": cls_pool}
