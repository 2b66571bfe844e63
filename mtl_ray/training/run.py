"""In-process training run: data → model → loop → checkpoints, metrics, plots, test table.

This is the single-process driver (``mtl-ray train --no-ray``); Ray Train's per-worker function
reuses the same pieces (``setup_run``, ``MultiTaskTrainer``, ``fit``, ``RunRecorder``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtl_ray.config import Config, dump_config
from mtl_ray.training.builders import TaskData, build_model, load_specs_and_splits, tokenize_tasks
from mtl_ray.training.checkpointing import check_resume_compatible, load_for_resume, save_training_checkpoint
from mtl_ray.training.loop import MultiTaskTrainer, fit
from mtl_ray.training.metrics import format_table, majority_baseline


@dataclass
class RunSetup:
    model: Any
    tokenizer: Any
    data: dict[str, TaskData]


def setup_run(cfg: Config, preloaded: dict[str, Any] | None = None) -> RunSetup:
    """Load + tokenize every task and build the model (seeded, so every rank builds the same heads).
    ``preloaded``: see :func:`~mtl_ray.training.builders.load_specs_and_splits`."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    specs, raw = load_specs_and_splits(cfg, preloaded)
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = build_model(cfg, specs)
    data = tokenize_tasks(specs, raw, tokenizer)
    return RunSetup(model=model, tokenizer=tokenizer, data=data)


def baselines(data: dict[str, TaskData], split: str = "test") -> dict[str, dict[str, float]]:
    """Majority-class (or train-mean) scores on ``split`` for every supervised task."""
    out = {}
    for task, d in sorted(data.items()):
        spec = d.spec
        if not spec.supervised or not spec.metrics or split not in d.splits or "train" not in d.splits:
            continue
        num_labels = len(spec.label_names) if spec.label_names else None
        out[task] = majority_baseline(
            spec.type, d.splits["train"]["labels"], d.splits[split]["labels"], spec.metrics, num_labels
        )
    return out


@dataclass
class RunRecorder:
    """Writes metrics.jsonl, TensorBoard scalars and keeps the best/last checkpoints in ``output_dir``."""

    output_dir: Path
    tensorboard: bool = True
    # a restarted run: TensorBoard hides events at steps >= purge_step left by the interrupted attempt
    purge_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_aggregate: float = float("-inf")
    best_checkpoint: Path | None = None
    _writer: Any = None

    def __post_init__(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.purge_step)

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        self.history.append(record)
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def flush(self) -> None:
        """Write buffered TensorBoard events to disk (before the folder is copied to a storage URI)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def flatten_metrics(per_task: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{task}/{name}": value for task, m in per_task.items() for name, value in m.items()}


def format_log_line(metrics: dict[str, float], max_steps: int) -> str:
    """``step 10/500 texts/s=41.2 rt_sentiment=0.693 ...`` (per-task training loss)."""
    losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
    return f"step {int(metrics['step'])}/{max_steps} texts/s={metrics['texts_per_s']:.1f} {losses}"


def restore_trainer(trainer: MultiTaskTrainer, cfg: Config, path: str | Path) -> None:
    """Load model weights and the full training state (exact resume) from a checkpoint directory,
    after checking it was trained on the same tasks, encoder and sharing depth."""
    ckpt = load_for_resume(path)
    check_resume_compatible(ckpt, cfg, trainer.model)
    trainer.model.load_state_dict(ckpt.model_state)
    trainer.load_state_dict(ckpt.training_state)


def write_run_outputs(out: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json, training_curves.png and the printed per-task test table (``summary`` holds
    ``test`` and ``majority_baseline``); shared by the in-process and the Ray Train drivers."""
    from mtl_ray.training.plots import plot_history

    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot_history(history, out / "training_curves.png")
    print("\nTest metrics ('baseline' rows: majority class / train mean):")
    print(format_table(summary["test"], summary["majority_baseline"]))
    return summary


def train(cfg: Config, resume_from: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train in this process; returns the final summary (also written to ``output_dir/summary.json``)."""
    out = Path(cfg.train.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    setup = setup_run(cfg)
    trainer = MultiTaskTrainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
    if resume_from is not None:
        restore_trainer(trainer, cfg, resume_from)
    recorder = RunRecorder(out)
    ckpt_dir = out / "checkpoints"
    bar = _progress_bar(cfg.train.max_steps, trainer.step, progress)

    def on_log(metrics: dict[str, float]) -> None:
        recorder.log(metrics)
        line = format_log_line(metrics, cfg.train.max_steps)
        bar.write(line) if bar is not None else print(line, flush=True)

    def on_eval(step: int, per_task: dict[str, dict[str, float]], aggregate: float) -> None:
        recorder.log({"step": step, "val/aggregate": aggregate, **flatten_metrics(per_task, "val")})
        path = ckpt_dir / f"step-{step:07d}"
        save_training_checkpoint(
            path,
            cfg,
            trainer.model,
            setup.tokenizer,
            trainer.state_dict(),
            {"validation": per_task, "aggregate": aggregate},
        )
        _keep_checkpoints(ckpt_dir, recorder, path, aggregate, keep=cfg.ray.num_to_keep)
        msg = f"eval step {step}: aggregate={aggregate:.4f}"
        bar.write(msg) if bar is not None else print(msg, flush=True)

    start = time.perf_counter()
    fit(trainer, on_step=(lambda _: bar.update(1)) if bar else None, on_log=on_log, on_eval=on_eval)
    if bar is not None:
        bar.close()
    recorder.close()
    elapsed = time.perf_counter() - start
    test = trainer.evaluate("test")
    base = baselines(setup.data, "test")
    summary = {
        "output_dir": str(out),
        "steps": trainer.step,
        "train_seconds": elapsed,
        "examples_seen": trainer.examples_seen,
        "best_checkpoint": str(recorder.best_checkpoint) if recorder.best_checkpoint else None,
        "best_validation_aggregate": recorder.best_aggregate,
        "test": test,
        "test_aggregate": trainer.aggregate(test) if test else None,
        "majority_baseline": base,
    }
    return write_run_outputs(out, summary, recorder.history)


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _keep_checkpoints(ckpt_dir: Path, recorder: RunRecorder, new: Path, aggregate: float, keep: int) -> None:
    """Keep the best checkpoint by validation aggregate and the most recent ones (``keep`` in all)."""
    if aggregate > recorder.best_aggregate:
        recorder.best_aggregate = aggregate
        recorder.best_checkpoint = new
    existing = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))
    protected = {recorder.best_checkpoint, new}
    removable = [p for p in existing if p not in protected]
    while len(existing) > max(keep, 2) and removable:
        victim = removable.pop(0)
        shutil.rmtree(victim, ignore_errors=True)
        existing.remove(victim)
