"""Which tasks answer a request: the one rule of the Predictor, ``mtl-ray predict`` and the Serve gateway.

``tasks=None`` means every supervised task that takes this input kind (texts or pairs); an
unsupervised task (its output is an embedding) answers only when asked for by name. Named tasks must
exist and take this input kind; duplicates are dropped, order kept. Errors are raised through
``error(message)`` so each caller keeps its own error type (``PredictError``, HTTP 422).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol


class Selectable(Protocol):
    """What selection reads of a task: a ``TaskSpec`` (Predictor) or a ``ServedTask`` (the torch-free
    Serve ingress); this module imports neither, so the ingress stays free of torch."""

    @property
    def is_pair(self) -> bool: ...

    @property
    def supervised(self) -> bool: ...


def input_kind(is_pair: bool) -> str:
    return "pairs" if is_pair else "texts"


def select_tasks(
    specs: Mapping[str, Selectable],
    is_pair: bool,
    tasks: Sequence[str] | None,
    error: Callable[[str], Exception],
) -> list[str]:
    kind = input_kind(is_pair)
    valid = ", ".join(sorted(specs))
    if tasks is None:
        names = [t for t, s in sorted(specs.items()) if s.is_pair == is_pair and s.supervised]
        if not names:
            raise error(f"no task takes {kind} by default; tasks: {valid}")
        return names
    if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
        raise error("tasks: expected a list of task names")
    if not tasks:
        raise error("tasks: empty list")
    for t in tasks:
        if t not in specs:
            raise error(f"unknown task {t!r}; valid tasks: {valid}")
        if specs[t].is_pair != is_pair:
            raise error(f"task {t!r} takes {input_kind(specs[t].is_pair)}, not {kind}")
    return list(dict.fromkeys(tasks))
