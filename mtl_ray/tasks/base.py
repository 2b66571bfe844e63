"""What every task type provides, the resolved per-task spec, and the registry of task types.

A task type is the code side of a task (head, loss, post-processing, metrics); a :class:`TaskSpec`
is the data side (name, classes, metrics, weights), resolved once from config + data and then
passed to the model, the loop, the predictor and Serve. Adding a type is one file that calls
:func:`register_task_type` plus one import line in ``mtl_ray/tasks/__init__.py``.

Batches are ``dict[str, Tensor]`` as ``mtl_ray.data.tokenize.collate`` builds them:
``input_ids``, ``attention_mask``, optional ``token_type_ids``, and ``labels`` (:data:`LABELS`)
for supervised tasks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn

from mtl_ray.errors import ConfigError
from mtl_ray.tasks.metric_fns import MetricFn

if TYPE_CHECKING:
    from mtl_ray.config import TaskConfig

LABELS = "labels"  # batch key of the targets (int64 class ids / float32 values)
# What a type's labels are, and the column dtype the data layer stores them as:
#   "class": a class name in the data, stored as its int64 index into spec.label_names
#   "value": a number, stored as float32
#   None:    no label (an unsupervised type)
LABEL_DTYPES = {"class": "int64", "value": "float32"}


@dataclass(frozen=True)
class TaskSpec:
    """A resolved task: config plus the class names inferred from data. JSON-safe via ``to_dict``."""

    name: str
    type: str  # a registered task type: "classification" | "pair_classification" | "regression" | "contrastive"
    label_names: tuple[str, ...] | None  # class names in index order (classification types); None otherwise
    metrics: tuple[str, ...]  # resolved: the config's or the type's defaults; () for contrastive
    loss_weight: float = 1.0  # static weight of this task's loss
    max_length: int = 128  # tokens per example (pairs: both texts together)
    # InfoNCE softmax temperature, for types with ``uses_temperature`` (contrastive). MultiTaskModel
    # writes model.contrastive_temperature into ``model.specs``; None elsewhere.
    temperature: float | None = None
    # Settings only one type reads, JSON-safe, filled in by its optional ``resolve_options`` hook when the
    # model is built (the mlm type: masking rate and the tokenizer's [MASK] / special token ids); None elsewhere.
    options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Normalise sequences (lists from JSON / YAML) so equality and hashing work.
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "loss_weight", float(self.loss_weight))
        if self.temperature is not None:
            object.__setattr__(self, "temperature", float(self.temperature))
        if self.options is not None:  # the JSON form (tuples -> lists), so a trip through meta.json compares equal
            object.__setattr__(self, "options", json.loads(json.dumps(dict(self.options))))
        self._validate()

    def _validate(self) -> None:
        where = f"tasks.{self.name}"
        if not self.name:
            raise ConfigError("tasks: a task needs a non-empty name")
        try:
            ttype = get_task_type(self.type)
        except ConfigError as exc:
            raise ConfigError(f"{where}.type: {exc}") from None
        if ttype.has_classes:
            names = self.label_names or ()
            if len(names) < 2:
                raise ConfigError(
                    f"{where}.label_names: a {self.type} task needs at least 2 classes, got {list(names)} "
                    "(set label_names or check label_field)"
                )
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ConfigError(f"{where}.label_names: duplicate class names {dupes}")
        elif self.label_names is not None:
            raise ConfigError(
                f"{where}.label_names: a {self.type} task has no class names, got {list(self.label_names)}"
            )
        valid = ttype.valid_metrics
        bad = [m for m in self.metrics if m not in valid]
        if bad:
            raise ConfigError(
                f"{where}.metrics: {bad} not valid for a {self.type} task; valid: {', '.join(valid) or '(none)'}"
            )
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"{where}.metrics: duplicate metrics in {list(self.metrics)}")
        if ttype.supervised and not self.metrics:
            raise ConfigError(f"{where}.metrics: list at least one of {', '.join(valid)} (or omit for the defaults)")
        if ttype.primary_metric is not None and ttype.primary_metric not in self.metrics:
            raise ConfigError(
                f"{where}.metrics: must include {ttype.primary_metric!r}, the primary metric of a {self.type} task "
                f"(it enters the aggregate score that selects checkpoints), got {list(self.metrics)}"
            )
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"{where}: contrastive temperature must be > 0, got {self.temperature}")

    # ------------------------------------------------------------------ derived

    @property
    def is_pair(self) -> bool:
        """Inputs are (text, text_pair)."""
        return get_task_type(self.type).is_pair

    @property
    def supervised(self) -> bool:
        """Has labels (and metrics); False for the contrastive objective."""
        return get_task_type(self.type).supervised

    @property
    def served(self) -> bool:
        """Answers requests (Predictor, Serve); False for a training-only objective such as mlm."""
        return is_served(self.type)

    @property
    def num_outputs(self) -> int | None:
        """Head outputs per example: C logits, 1 value, or None (contrastive: the H-dim embedding)."""
        if not self.supervised:
            return None
        return len(self.label_names) if self.label_names is not None else 1

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "type": self.type,
            "label_names": list(self.label_names) if self.label_names is not None else None,
            "metrics": list(self.metrics),
            "loss_weight": self.loss_weight,
            "max_length": self.max_length,
            "temperature": self.temperature,
        }
        if self.options is not None:  # only types that have options write the key: other specs stay as they were
            d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        known = {"name", "type", "label_names", "metrics", "loss_weight", "max_length", "temperature", "options"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"task spec {d.get('name')!r}: unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def from_config(cls, task: TaskConfig, label_names: list[str] | None) -> TaskSpec:
        """Resolve a :class:`~mtl_ray.config.TaskConfig` with the class names found in the data
        (``label_names`` wins over ``task.label_names``; the data loader already honours the latter)."""
        ttype = get_task_type(task.type)
        names = label_names if label_names is not None else task.label_names
        if not ttype.has_classes:
            names = names or None  # [] from a loader means "no classes"
        metrics = tuple(task.metrics) if task.metrics is not None else ttype.default_metrics
        return cls(
            name=task.name,
            type=task.type,
            label_names=tuple(names) if names is not None else None,
            metrics=metrics,
            loss_weight=task.loss_weight,
            max_length=task.max_length,
        )


@runtime_checkable
class TaskType(Protocol):
    """The code side of a task. Implementations are stateless singletons registered by ``name``.

    Optional declarations (read through the helpers below, with these defaults, so a type without
    them needs nothing): ``served = True`` (False: a training-only objective that the Predictor and
    Serve refuse and never deploy), ``resolve_options(task_cfg, tokenizer) -> dict | None`` (fills
    ``TaskSpec.options`` when the model is built) and ``model_loss(model, task, batch) -> Tensor``
    (the type computes its training loss from the model's pieces itself, e.g. the mlm type masks the
    encoder's input; default: ``train_batch`` -> forward -> ``loss``).
    """

    name: str
    is_pair: bool  # inputs are (text, text_pair)
    supervised: bool  # has labels; unsupervised types are trained but not scored
    has_classes: bool  # the head predicts one of spec.label_names
    label_kind: str | None  # "class" | "value" | None: what the data layer reads and stores (LABEL_DTYPES)
    uses_temperature: bool  # the loss reads spec.temperature (MultiTaskModel fills in model.contrastive_temperature)
    default_metrics: tuple[str, ...]  # metrics when the config names none
    valid_metrics: tuple[str, ...]  # metrics a config may ask for: the keys of metric_fns
    metric_fns: Mapping[str, MetricFn]  # name -> fn(predictions (N,), labels (N,), num_labels) -> float
    primary_metric: str | None  # the one entering the aggregate score (higher is better); None: excluded

    def metric_arrays(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What ``metric_fns`` compare: head outputs or scores and labels, normalised to two (N,) arrays."""
        ...

    def baseline_prediction(self, train_labels: np.ndarray, n: int) -> np.ndarray:
        """The trivial predictor any trained model has to beat, for ``n`` examples (e.g. the majority class)."""
        ...

    def build_head(self, hidden_size: int, spec: TaskSpec, dropout: float) -> nn.Module:
        """A module mapping the pooled vector (B, H) to this type's output."""
        ...

    def train_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training-time batch rewrite (the contrastive type duplicates rows); others return it as is."""
        ...

    def loss(self, output: Tensor, batch: dict[str, Tensor], spec: TaskSpec) -> Tensor:
        """Scalar mean loss of the head ``output`` for the (train_batch-rewritten) ``batch``."""
        ...

    def postprocess(self, output: Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
        """User-facing predictions, one JSON-safe dict per example."""
        ...

    def metric_inputs(self, output: Tensor) -> Tensor:
        """What the metrics compare with the labels: class ids (B,) or values (B,)."""
        ...


TASK_TYPES: dict[str, TaskType] = {}


def register_task_type(task_type: TaskType) -> TaskType:
    """Add ``task_type`` to :data:`TASK_TYPES` under its ``name`` (idempotent for the same object).

    The type's own declarations must agree with each other (a type that says it is supervised but
    has no primary metric would silently drop out of the aggregate score and Δm%)."""
    _check_declarations(task_type)
    existing = TASK_TYPES.get(task_type.name)
    if existing is not None and existing is not task_type:
        raise ValueError(f"task type {task_type.name!r} is already registered ({existing!r})")
    TASK_TYPES[task_type.name] = task_type
    return task_type


def get_task_type(name: str) -> TaskType:
    """The registered type called ``name``; an unknown name is a ConfigError listing the valid ones."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown task type {name!r}; valid: {', '.join(sorted(TASK_TYPES))}") from None


def _check_declarations(t: TaskType) -> None:
    problems = []
    if t.label_kind not in (*LABEL_DTYPES, None):
        problems.append(f"label_kind {t.label_kind!r} is not one of {[*LABEL_DTYPES, None]}")
    if t.supervised != (t.label_kind is not None):
        problems.append(f"supervised={t.supervised} but label_kind={t.label_kind!r}")
    if t.has_classes != (t.label_kind == "class"):
        problems.append(f"has_classes={t.has_classes} but label_kind={t.label_kind!r}")
    if tuple(t.valid_metrics) != tuple(t.metric_fns):
        problems.append(f"valid_metrics {tuple(t.valid_metrics)} differ from metric_fns {tuple(t.metric_fns)}")
    if any(m not in t.metric_fns for m in t.default_metrics):
        problems.append(f"default_metrics {t.default_metrics} not all in metric_fns")
    if t.supervised and t.primary_metric not in t.default_metrics:
        problems.append(f"a supervised type needs a primary_metric among its default_metrics, got {t.primary_metric!r}")
    if not t.supervised and t.primary_metric is not None:
        problems.append("an unsupervised type has no primary_metric")
    if problems:
        raise ValueError(f"task type {t.name!r}: " + "; ".join(problems))


def is_served(task_type: str) -> bool:
    """The optional ``served`` declaration (default True)."""
    return bool(getattr(get_task_type(task_type), "served", True))


def resolve_spec(spec: TaskSpec, task_cfg: TaskConfig, tokenizer: Any) -> TaskSpec:
    """``spec`` with the options its type resolves from the config and the encoder's tokenizer (the
    optional ``resolve_options`` hook); unchanged for types without one."""
    resolve = getattr(get_task_type(spec.type), "resolve_options", None)
    if resolve is None:
        return spec
    return dataclasses.replace(spec, options=resolve(task_cfg, tokenizer))


def label_dtype(task_type: str) -> str | None:
    """The dtype of a task's ``label`` column (``"int64"``, ``"float32"``) or None (no labels)."""
    kind = get_task_type(task_type).label_kind
    return LABEL_DTYPES[kind] if kind is not None else None
