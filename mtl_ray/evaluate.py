"""Evaluate a checkpoint on a split of its own tasks' data (`mtl-ray eval`, `jobs/evaluate.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from mtl_ray.added_heads import with_heads
from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.config import apply_overrides, config_from_dict, config_to_dict
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.data.sources import load_task_splits
from mtl_ray.device import resolve_device
from mtl_ray.training.builders import tokenize_tasks
from mtl_ray.training.checkpointing import model_from_checkpoint
from mtl_ray.training.evaluation import evaluate_model
from mtl_ray.training.metrics import aggregate_score
from mtl_ray.training.run import baselines


@dataclass
class EvalReport:
    split: str
    metrics: dict[str, dict[str, float]]  # per task
    aggregate: float
    baseline: dict[str, dict[str, float]]  # majority class / train mean, per task

    def to_dict(self) -> dict:
        return {"split": self.split, "metrics": self.metrics, "aggregate": self.aggregate, "baseline": self.baseline}


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    overrides: list[str] | None = None,
    heads: dict[str, str] | None = None,
    keys: CheckpointKeys | None = None,
) -> EvalReport:
    """Verify + load ``path`` (decrypted / signature-checked per ``keys``), read its tasks' ``split``
    (config overrides allowed, e.g. ``data.cache_dir``); ``heads``: ``{task: head checkpoint}`` replacing
    or adding tasks (``mtl_ray/added_heads.py``)."""
    ckpt = with_heads(load_checkpoint(path, load_training_state=False, keys=keys), heads or {}, keys=keys)
    model, cfg = model_from_checkpoint(ckpt)
    cfg = config_from_dict(apply_overrides(config_to_dict(cfg), overrides or []))
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir))
    raw = {name: load_task_splits(cfg.tasks[name], cfg.data)[0] for name in model.specs}
    data = tokenize_tasks(model.specs, raw, tokenizer)
    device = resolve_device(cfg.train.device)
    model.to(device)
    metrics = evaluate_model(
        model, data, split, pad_token_id=tokenizer.pad_token_id, batch_size=cfg.train.eval_batch_size, device=device
    )
    agg = aggregate_score(metrics, {t: s.type for t, s in model.specs.items() if t in metrics})
    return EvalReport(split=split, metrics=metrics, aggregate=agg, baseline=baselines(data, split))
