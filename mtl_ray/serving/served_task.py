"""What the ingress and a head replica need to know about a task, without importing torch.

:class:`~mtl_ray.tasks.base.TaskSpec` resolves ``is_pair`` and ``supervised`` through the task-type
registry, which imports torch. The app builder (which has torch) resolves them once with
:meth:`ServedTask.from_spec`; the replicas receive the plain dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtl_ray.errors import ConfigError

_FIELDS = ("name", "type", "label_names", "max_length", "is_pair", "supervised")


@dataclass(frozen=True)
class ServedTask:
    """One served task as the ingress tokenizes for it and a lean head post-processes for it."""

    name: str
    type: str  # a registered task type name, e.g. "classification"
    label_names: tuple[str, ...] | None  # class names in index order; None for value / embedding types
    max_length: int  # tokens per input (pairs: both texts together)
    is_pair: bool  # inputs are [text, text_pair]
    supervised: bool  # returned by default (False: only when asked for by name, e.g. contrastive)

    @classmethod
    def from_spec(cls, spec: Any) -> ServedTask:
        """From a :class:`~mtl_ray.tasks.base.TaskSpec` (duck-typed, so this module needs no torch)."""
        labels = tuple(spec.label_names) if spec.label_names is not None else None
        return cls(spec.name, spec.type, labels, int(spec.max_length), bool(spec.is_pair), bool(spec.supervised))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _FIELDS}
        d["label_names"] = list(self.label_names) if self.label_names is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServedTask:
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise ConfigError(f"served task {d.get('name')!r}: missing keys {missing}")
        labels = d["label_names"]
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            label_names=tuple(str(n) for n in labels) if labels is not None else None,
            max_length=int(d["max_length"]),
            is_pair=bool(d["is_pair"]),
            supervised=bool(d["supervised"]),
        )
