"""The multi-task model: one encoder cut at the sharing depth k, per-task top layers and heads.

    input -> embeddings -> layers 1..k (shared, run once) -+-> task A: layers k+1..L -> pool -> head A
                                                           +-> task B: layers k+1..L -> pool -> head B

k = L is hard parameter sharing (one encoder pass, the pooled vector feeds every head); k = 0 gives
every task its own full encoder. The top L-k layers are deep copies of the pretrained ones, so at
initialisation every task computes exactly the uncut encoder's function.

Parameter names (checkpoint keys) are stable:
``shared.embeddings.*``, ``shared.layers.<i>.*`` (i < k), ``task_layers.<task>.<j>.*`` (layer k+1+j),
``heads.<task>.*``. For serving, the model splits into a :class:`SharedEncoder` (what an encoder
deployment holds) and one :class:`TaskTower` per task (what a head deployment holds); each piece can
be built alone from the saved encoder config and its slice of the state dict
(:func:`split_state_dict`), without building the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from mtl_ray.errors import ConfigError
from mtl_ray.model.encoder import (
    attention_mask_4d,
    embed,
    encoder_config_dict,
    encoder_from_config,
    encoder_layers,
    hf_config_from_dict,
    run_layers,
)
from mtl_ray.model.pooling import POOLERS
from mtl_ray.tasks.base import TaskSpec, get_task_type

SHARED_PREFIX = "shared."
TASK_LAYERS_PREFIX = "task_layers."
HEADS_PREFIX = "heads."
_TASK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _check_depth(sharing_depth: int | None, num_layers: int) -> int:
    k = num_layers if sharing_depth is None else sharing_depth
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_layers:
        raise ConfigError(
            f"model.sharing_depth: {sharing_depth!r} must be in [0, {num_layers}] (the encoder has {num_layers} "
            "layers; null means all shared)"
        )
    return k


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLERS:
        raise ConfigError(f"model.pooling: unknown pooling {pooling!r}; valid: {', '.join(POOLERS)}")


class SharedEncoder(nn.Module):
    """Embeddings + layers 1..k: ids (B, T) -> hidden states (B, T, H), computed once for all tasks."""

    def __init__(
        self,
        embeddings: nn.Module,
        layers: Iterable[nn.Module],
        hf_config: PretrainedConfig,
        embeddings_project: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.embeddings_project = embeddings_project  # ELECTRA-style embedding_size -> hidden_size
        self.layers = nn.ModuleList(layers)
        self.hf_config = hf_config  # builds the attention mask the way the encoder does

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        hidden = embed(self, input_ids, token_type_ids)  # (B, T, H)
        if len(self.layers) == 0:
            return hidden
        return run_layers(self.layers, hidden, attention_mask_4d(self.hf_config, hidden, attention_mask))

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel, sharing_depth: int | None) -> SharedEncoder:
        """Take (not copy) the encoder's embeddings and its first k layers."""
        layers = encoder_layers(encoder)
        k = _check_depth(sharing_depth, len(layers))
        return cls(encoder.embeddings, layers[:k], encoder.config, getattr(encoder, "embeddings_project", None))

    @classmethod
    def from_encoder_config(cls, encoder_config: dict[str, Any], sharing_depth: int | None) -> SharedEncoder:
        """Randomly initialised, for loading :func:`split_state_dict`'s shared part (a Serve encoder replica)."""
        return cls.from_encoder(encoder_from_config(encoder_config), sharing_depth)


class TaskTower(nn.Module):
    """One task's layers k+1..L, pooling and head: shared hidden states (B, T, H) -> head output."""

    def __init__(
        self, layers: Iterable[nn.Module], head: nn.Module, hf_config: PretrainedConfig, pooling: str = "mean"
    ) -> None:
        super().__init__()
        _check_pooling(pooling)
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.head = head
        self.hf_config = hf_config
        self.pooling = pooling

    def hidden(self, shared_hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, H) after this task's own layers (identity when k = L)."""
        if len(self.layers) == 0:
            return shared_hidden
        mask4d = attention_mask_4d(self.hf_config, shared_hidden, attention_mask)
        return run_layers(self.layers, shared_hidden, mask4d)

    def forward(self, shared_hidden: Tensor, attention_mask: Tensor) -> Tensor:
        pooled = POOLERS[self.pooling](self.hidden(shared_hidden, attention_mask), attention_mask)  # (B, H)
        return self.head(pooled)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        """Head only, on an already pooled (B, H) vector: the k = L serving path, where the encoder
        deployment pools once and sends H floats per text instead of T x H."""
        if len(self.layers):
            raise ValueError(f"this tower has {len(self.layers)} layers of its own; send hidden states, not pooled")
        return self.head(pooled)

    @classmethod
    def from_encoder_config(
        cls,
        encoder_config: dict[str, Any],
        spec: TaskSpec,
        sharing_depth: int | None,
        *,
        pooling: str = "mean",
        head_dropout: float = 0.1,
    ) -> TaskTower:
        """Randomly initialised, for loading one task's part of :func:`split_state_dict` (a Serve head replica)."""
        hf_config = hf_config_from_dict(encoder_config)
        k = _check_depth(sharing_depth, hf_config.num_hidden_layers)
        layers: Sequence[nn.Module] = []
        if k < hf_config.num_hidden_layers:  # only then is an encoder worth building
            encoder = encoder_from_config(encoder_config)
            layers, hf_config = encoder_layers(encoder)[k:], encoder.config
        head = get_task_type(spec.type).build_head(hf_config.hidden_size, spec, head_dropout)
        return cls(layers, head, hf_config, pooling)


class MultiTaskModel(nn.Module):
    """Embeddings + k shared layers, then per task: layers k+1..L (cloned), pooling and a head.

    ``forward`` runs the shared part once for all requested tasks and returns ``{task: output}``
    (logits (B, C), values (B,) or embeddings (B, H), by task type).
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        specs: Mapping[str, TaskSpec],
        sharing_depth: int | None = None,
        pooling: str = "mean",
        head_dropout: float = 0.1,
        contrastive_temperature: float = 0.05,
    ) -> None:
        super().__init__()
        if not specs:
            raise ConfigError("tasks: at least one task is required")
        _check_pooling(pooling)
        if contrastive_temperature <= 0:
            raise ConfigError(f"model.contrastive_temperature: must be > 0, got {contrastive_temperature}")
        for name, spec in specs.items():
            if spec.name != name:
                raise ConfigError(f"tasks.{name}: spec is named {spec.name!r}")
            if not _TASK_NAME.match(name):
                raise ConfigError(f"tasks.{name}: task names may hold only letters, digits, '_' and '-'")
        layers = encoder_layers(encoder)
        self.num_layers = len(layers)
        self.sharing_depth = _check_depth(sharing_depth, self.num_layers)
        self.hidden_size = int(encoder.config.hidden_size)
        self.pooling = pooling
        self.head_dropout = head_dropout
        self.contrastive_temperature = float(contrastive_temperature)
        self.encoder_config = encoder_config_dict(encoder.config)  # JSON-safe; rebuilds the architecture
        self.hf_config = encoder.config
        # The model's temperature is the one the loss uses: it is written into the specs that need it.
        self.specs: dict[str, TaskSpec] = {
            name: dataclasses.replace(spec, temperature=self.contrastive_temperature)
            if get_task_type(spec.type).uses_temperature
            else spec
            for name, spec in specs.items()
        }
        self.task_names = list(self.specs)

        k = self.sharing_depth
        self.shared = SharedEncoder.from_encoder(encoder, k)  # the encoder's own modules; its pooler is dropped
        try:
            self.task_layers = nn.ModuleDict(
                {t: nn.ModuleList(copy.deepcopy(layer) for layer in layers[k:]) for t in self.task_names}
            )
            self.heads = nn.ModuleDict(
                {t: get_task_type(s.type).build_head(self.hidden_size, s, head_dropout) for t, s in self.specs.items()}
            )
        except KeyError as exc:  # a task name that clashes with a ModuleDict attribute ("keys", "items", ...)
            raise ConfigError(f"tasks: invalid task name: {exc}") from None
        for head in self.heads.values():  # weight tying (the mlm head's decoder IS the input word embeddings)
            tie = getattr(head, "tie_input_embeddings", None)
            if tie is not None:
                tie(self.shared.embeddings.word_embeddings, self.hf_config)
        self.train()  # from_pretrained returns eval-mode modules; make the whole model consistent

    @classmethod
    def from_encoder_config(
        cls, encoder_config: dict[str, Any], specs: Mapping[str, TaskSpec], **kwargs: Any
    ) -> MultiTaskModel:
        """Random init of the same architecture (then ``load_state_dict`` a checkpoint)."""
        return cls(encoder_from_config(encoder_config), specs, **kwargs)

    # ------------------------------------------------------------------ forward pieces

    def encode_shared(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Embeddings + shared layers: (B, T) -> (B, T, H)."""
        return self.shared(input_ids, attention_mask, token_type_ids)

    def task_hidden(self, task: str, shared_hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, H) after ``task``'s own layers k+1..L (identity when k = L)."""
        layers = self.task_layers[task]
        if len(layers) == 0:
            return shared_hidden
        return run_layers(layers, shared_hidden, attention_mask_4d(self.hf_config, shared_hidden, attention_mask))

    def pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, H) -> (B, H) by ``self.pooling``."""
        return POOLERS[self.pooling](hidden, attention_mask)

    def head(self, task: str, pooled: Tensor) -> Tensor:
        return self.heads[task](pooled)

    def forward_from_shared(
        self, shared_hidden: Tensor, attention_mask: Tensor, tasks: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Per-task outputs from the shared hidden states (B, T, H)."""
        names = self._resolve_tasks(tasks)
        if self.sharing_depth == self.num_layers:  # hard sharing: pool once, every head reads it
            pooled = self.pool(shared_hidden, attention_mask)
            return {t: self.heads[t](pooled) for t in names}
        mask4d = attention_mask_4d(self.hf_config, shared_hidden, attention_mask)  # one mask for all towers
        out = {}
        for t in names:
            hidden = run_layers(self.task_layers[t], shared_hidden, mask4d)
            out[t] = self.heads[t](self.pool(hidden, attention_mask))
        return out

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """``{task: output}`` for ``tasks`` (default: all); the shared part runs once."""
        names = self._resolve_tasks(tasks)
        shared_hidden = self.encode_shared(input_ids, attention_mask, token_type_ids)
        return self.forward_from_shared(shared_hidden, attention_mask, names)

    def loss(self, task: str, batch: dict[str, Tensor]) -> Tensor:
        """Scalar training loss of one task's batch: the type's batch hook, forward, the type's loss."""
        spec = self.specs[task]
        ttype = get_task_type(spec.type)
        model_loss = getattr(ttype, "model_loss", None)  # a type that runs the model itself (mlm masks the input)
        if model_loss is not None:
            return model_loss(self, task, batch)
        batch = ttype.train_batch(batch)
        output = self.forward(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), [task])
        return ttype.loss(output[task], batch, spec)

    def _resolve_tasks(self, tasks: Sequence[str] | None) -> list[str]:
        if tasks is None:
            return list(self.task_names)
        names = list(tasks)
        unknown = [t for t in names if t not in self.specs]
        if unknown or not names:
            raise ValueError(f"unknown tasks {unknown}; this model has: {', '.join(self.task_names)}")
        return names

    # ------------------------------------------------------------------ pieces for serving

    def tower(self, task: str) -> TaskTower:
        """``task``'s layers + head as one module (shares the parameters, no copy)."""
        return TaskTower(self.task_layers[task], self.heads[task], self.hf_config, self.pooling)

    def shared_state_dict(self) -> dict[str, Tensor]:
        """State of :class:`SharedEncoder` (keys without the ``shared.`` prefix)."""
        return self.shared.state_dict()

    def task_state_dict(self, task: str) -> dict[str, Tensor]:
        """State of ``task``'s :class:`TaskTower` (keys ``layers.<j>.*``, ``head.*``)."""
        return self.tower(task).state_dict()

    # ------------------------------------------------------------------ reporting

    def parameter_counts(self) -> dict[str, Any]:
        """``{"shared", "task_layers": {task: n}, "heads": {task: n}, "total"}`` (numbers of parameters)."""

        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        return {
            "shared": count(self.shared),
            "task_layers": {t: count(self.task_layers[t]) for t in self.task_names},
            "heads": {t: count(self.heads[t]) for t in self.task_names},
            "total": count(self),
        }


def split_state_dict(
    state_dict: Mapping[str, Tensor], task_names: Iterable[str] = ()
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Split a :class:`MultiTaskModel` state dict (e.g. a checkpoint's) into the shared part and one
    part per task, keyed as :class:`SharedEncoder` / :class:`TaskTower` expect. ``task_names`` get an
    entry even when they hold no weights (a contrastive task at k = L)."""
    shared: dict[str, Tensor] = {}
    towers: dict[str, dict[str, Tensor]] = {t: {} for t in task_names}
    for key, value in state_dict.items():
        if key.startswith(SHARED_PREFIX):
            shared[key[len(SHARED_PREFIX) :]] = value
        elif key.startswith(TASK_LAYERS_PREFIX):
            task, rest = key[len(TASK_LAYERS_PREFIX) :].split(".", 1)
            towers.setdefault(task, {})["layers." + rest] = value
        elif key.startswith(HEADS_PREFIX):
            task, rest = key[len(HEADS_PREFIX) :].split(".", 1)
            towers.setdefault(task, {})["head." + rest] = value
        else:
            raise ValueError(f"state dict key {key!r} is not part of a MultiTaskModel")
    return shared, towers
