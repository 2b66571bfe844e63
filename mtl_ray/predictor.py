"""In-process inference from a checkpoint: the shared layers run once for all requested tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from mtl_ray.added_heads import with_heads
from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.data.tokenize import collate
from mtl_ray.device import resolve_device
from mtl_ray.errors import MtlRayError
from mtl_ray.inference.selection import select_tasks
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import TaskSpec, get_task_type
from mtl_ray.training.checkpointing import model_from_checkpoint


class PredictError(MtlRayError, ValueError):
    """A prediction request is malformed (unknown task, wrong input kind, empty input)."""


class Predictor:
    """``Predictor.from_checkpoint(path).predict(texts or pairs, tasks=None)``."""

    def __init__(self, model: MultiTaskModel, tokenizer: Any, device: torch.device | str = "cpu", batch_size: int = 32):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        batch_size: int = 32,
        heads: dict[str, str | Path] | None = None,
        keys: CheckpointKeys | None = None,
    ) -> Predictor:
        """``heads``: ``{task: head checkpoint}`` replacing or adding tasks (``mtl_ray/added_heads.py``);
        ``keys``: where the decryption key / trusted public key are, for encrypted / signed checkpoints."""
        ckpt = load_checkpoint(path, verify=True, load_training_state=False, keys=keys)
        ckpt = with_heads(ckpt, heads or {}, keys=keys)
        model, _ = model_from_checkpoint(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir), trust_remote_code=False)
        return cls(model, tokenizer, resolve_device(device), batch_size)

    @property
    def specs(self) -> dict[str, TaskSpec]:
        """The served tasks (a training-only objective such as mlm is not one)."""
        return {t: s for t, s in self.model.specs.items() if s.served}

    def tasks_for(self, is_pair: bool, tasks: Sequence[str] | None = None) -> list[str]:
        """Validate ``tasks`` against the input kind (:func:`mtl_ray.inference.selection.select_tasks`)."""
        for t in tasks if tasks is not None and not isinstance(tasks, str) else ():
            spec = self.model.specs.get(t) if isinstance(t, str) else None
            if spec is not None and not spec.served:
                raise PredictError(
                    f"task {t!r} is a {spec.type} training objective, not a served task; "
                    f"served tasks: {', '.join(sorted(self.specs))}"
                )
        return select_tasks(self.specs, is_pair, tasks, PredictError)

    def tokenize(self, inputs: Sequence[str] | Sequence[Sequence[str]], is_pair: bool, max_length: int) -> dict:
        if is_pair:
            first = [p[0] for p in inputs]
            second = [p[1] for p in inputs]
            enc = self.tokenizer(first, second, truncation=True, max_length=max_length)
        else:
            enc = self.tokenizer(list(inputs), truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        features = [{k: enc[k][i] for k in keys} for i in range(len(inputs))]
        return collate(features, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def predict(
        self,
        texts: Sequence[str] | None = None,
        pairs: Sequence[Sequence[str]] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Per-task predictions (``{task: [{"label", "score", "probabilities"} | {"value"} ...]}``)."""
        if (texts is None) == (pairs is None):
            raise PredictError("give exactly one of texts or pairs")
        is_pair = pairs is not None
        inputs = list(pairs if is_pair else texts)  # type: ignore[arg-type]
        if not inputs:
            raise PredictError("no inputs: texts/pairs is empty")
        if is_pair and any(len(p) != 2 for p in inputs):
            raise PredictError("pairs: every pair needs exactly two texts")
        names = self.tasks_for(is_pair, tasks)
        max_length = max(self.specs[t].max_length for t in names)
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in names}
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            batch = {k: v.to(self.device) for k, v in self.tokenize(chunk, is_pair, max_length).items()}
            outputs = self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), tasks=names)
            for t in names:
                out[t].extend(get_task_type(self.specs[t].type).postprocess(outputs[t].float(), self.specs[t]))
        return out
