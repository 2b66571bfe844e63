"""Deterministic train/validation/test assignment by a seeded hash of the text.

The split of a text depends only on ``(seed, normalized text, fractions)``: never on row order,
process, machine or Python's per-process ``hash`` salt. Identical texts therefore always land in
the same split, so duplicates cannot leak from train into validation/test.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")
_SCALE = float(2**64)


def normalize_text(text: str) -> str:
    """The dedupe / split key: Unicode NFC, whitespace runs collapsed to one space, stripped.

    Case and punctuation are kept: "GREAT" and "great" can carry different sentiment.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def split_uniform(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from blake2b(f"{seed}:{normalize_text(key)}")."""
    digest = hashlib.blake2b(f"{seed}:{normalize_text(key)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign_split(text: str, seed: int, validation_fraction: float, test_fraction: float) -> str:
    """``"train"``, ``"validation"`` or ``"test"`` for ``text``.

    u < test_fraction → test; u < test_fraction + validation_fraction → validation; else train.
    A fraction may be 0 (used to carve only one missing split out of a given train split).
    """
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"split fractions must be >= 0 and sum to < 1, got validation={validation_fraction}, test={test_fraction}"
        )
    u = split_uniform(text, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


@dataclass(frozen=True)
class SplitSpec:
    """A seed and fractions bound together: ``spec(text) -> split name``."""

    seed: int
    validation_fraction: float
    test_fraction: float

    def __call__(self, key: str) -> str:
        return assign_split(key, self.seed, self.validation_fraction, self.test_fraction)

    def assign_many(self, keys: Iterable[str]) -> list[str]:
        return [self(k) for k in keys]
