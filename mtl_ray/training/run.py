"""A training run in plain Python: data → model → loop → checkpoints, metrics, plots, test table.

``train`` is the single-process driver (``mtl-ray train --no-ray``). Ray Train's per-worker function
and Ray Tune's trials reuse the same pieces: ``setup_run`` (data + model), ``build_trainer``, ``fit``,
and :class:`EvalCheckpointer`, the ONE evaluate → checkpoint → report path, which they hand a
``publish`` function (``ray.train.report`` / ``tune.report``); ``test_results`` scores the end of a run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtl_ray.config import Config, dump_config
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError
from mtl_ray.training.builders import TaskData, build_model, build_trainer, load_specs_and_splits, tokenize_tasks
from mtl_ray.training.checkpointing import (
    check_resume_compatible,
    load_for_resume,
    save_training_checkpoint,
    saved_aggregate,
    step_checkpoint_name,
    step_checkpoints,
)
from mtl_ray.training.loop import MultiTaskTrainer, fit
from mtl_ray.training.metrics import format_table, majority_baseline
from mtl_ray.training.recorder import SCORE_ATTRIBUTE, RunRecorder, flatten_metrics, format_log_line, open_recorder

__all__ = [
    "EvalCheckpointer",
    "RunRecorder",
    "RunSetup",
    "baselines",
    "flatten_metrics",
    "format_log_line",
    "open_recorder",
    "restore_trainer",
    "set_torch_threads",
    "setup_run",
    "test_results",
    "train",
    "write_run_outputs",
]

# publish(metrics, checkpoint directory or None): hands an evaluation to the runner (Ray Train, Tune)
Publish = Callable[[dict[str, Any], Path | None], None]


@dataclass
class RunSetup:
    model: Any
    tokenizer: Any
    data: dict[str, TaskData]


def set_torch_threads(cfg: Config, cpus: float) -> int:
    """Intra-op threads: ``train.num_threads`` if set, else the CPUs this worker / trial reserved."""
    threads = cfg.train.num_threads or max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


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


def restore_trainer(trainer: MultiTaskTrainer, cfg: Config, path: str | Path) -> dict[str, Any]:
    """Load model weights and the full training state (exact resume) from a checkpoint directory,
    after checking it was trained on the same tasks, encoder and sharing depth; returns its meta."""
    ckpt = load_for_resume(path, CheckpointKeys.from_config(cfg.checkpoint))
    check_resume_compatible(ckpt, cfg, trainer.model)
    trainer.model.load_state_dict(ckpt.model_state)
    trainer.load_state_dict(ckpt.training_state)
    return ckpt.meta


def seconds_before(meta: dict[str, Any], history: list[dict[str, Any]], step: int) -> float:
    """Training seconds a resumed run had spent up to its checkpoint at ``step``: the checkpoint's own
    ``train_seconds``, or (a checkpoint written without it) an estimate from the ``time`` stamps of
    the ``metrics.jsonl`` records kept up to ``step``, scaled to cover steps 0..step."""
    saved = (meta.get("metrics") or {}).get("train_seconds")
    if saved is not None:
        return float(saved)
    stamps = sorted((float(r["step"]), float(r["time"])) for r in history if "time" in r and "step" in r)
    if len(stamps) < 2 or stamps[-1][0] <= stamps[0][0]:
        return 0.0
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]
    return (t1 - t0) * step / (s1 - s0)


class EvalCheckpointer:
    """``fit``'s ``on_eval``: the one evaluate → checkpoint → report path of every runner.

    At each evaluation the flat record (``step``, ``val/aggregate``, ``val/<task>/<metric>`` and
    ``extra``) goes to the recorder, and the process that writes (``writer``: rank 0; every rank holds
    the same weights) saves a checkpoint in the project's own format. Then:

    - with ``publish`` (Ray Train, Ray Tune): the checkpoint is written to a temporary directory and
      ``publish(record, path)`` hands it over (the runner copies it to its storage); ranks that do not
      write call ``publish(record, None)`` (Ray Train's report is a barrier every rank must reach);
    - without (``--no-ray``): it is kept in ``checkpoint_dir``, with the best by the aggregate and the
      latest ones kept (``keep`` in all).
    """

    def __init__(
        self,
        cfg: Config,
        trainer: MultiTaskTrainer,
        tokenizer: Any,
        *,
        writer: bool = True,
        recorder: RunRecorder | None = None,
        checkpoint_dir: Path | None = None,
        publish: Publish | None = None,
        extra: dict[str, Any] | None = None,
        echo: Callable[[str], None] = lambda msg: print(msg, flush=True),
        clock: Callable[[], float] | None = None,
    ) -> None:
        if publish is None and checkpoint_dir is None:
            raise ValueError("EvalCheckpointer: give checkpoint_dir (keep locally) or publish (hand over)")
        self.cfg, self.trainer, self.tokenizer = cfg, trainer, tokenizer
        self.writer, self.recorder, self.checkpoint_dir = writer, recorder, checkpoint_dir
        self.publish, self.extra, self.echo = publish, dict(extra or {}), echo
        self.clock = clock  # training seconds so far, saved with each checkpoint (resume adds on)
        self.best_aggregate = float("-inf")
        self.best_checkpoint: Path | None = None
        self.best_step: int | None = None

    def __call__(self, step: int, per_task: dict[str, dict[str, float]], aggregate: float) -> None:
        record = {"step": step, SCORE_ATTRIBUTE: aggregate, **flatten_metrics(per_task, "val"), **self.extra}
        if not self.writer:
            assert self.publish is not None
            self.publish(record, None)
            return
        if self.recorder is not None:
            self.recorder.log(record)
        self.echo(f"eval step {step}: aggregate={aggregate:.4f}")
        name = step_checkpoint_name(step)
        if self.publish is None:
            assert self.checkpoint_dir is not None
            path = self._save(self.checkpoint_dir / name, per_task, aggregate)
            self._keep(path, aggregate, step)
            return
        with tempfile.TemporaryDirectory(prefix="mtl-ray-ckpt-", ignore_cleanup_errors=True) as tmp:
            self.publish(record, self._save(Path(tmp) / name, per_task, aggregate))

    def _save(self, path: Path, per_task: dict[str, dict[str, float]], aggregate: float) -> Path:
        return save_training_checkpoint(
            path,
            self.cfg,
            self.trainer.model,
            self.tokenizer,
            self.trainer.state_dict(),
            {"validation": per_task, "aggregate": aggregate}
            | ({"train_seconds": self.clock()} if self.clock is not None else {}),
        )

    def adopt(self, step: int) -> None:
        """A run resumed in its own ``checkpoint_dir`` at ``step``: the best of the checkpoints it kept
        up to ``step`` (by their saved aggregate) stays the best, so it is neither forgotten nor rotated
        out by the evaluations after the resume. Checkpoints past ``step`` (the abandoned attempt's) do
        not compete."""
        assert self.checkpoint_dir is not None
        for at, path in step_checkpoints(self.checkpoint_dir):
            if at > step:
                continue
            try:
                aggregate = saved_aggregate(path)
            except CheckpointError:
                continue  # torn: not a candidate
            if aggregate > self.best_aggregate:
                self.best_aggregate, self.best_checkpoint, self.best_step = aggregate, path, at

    def _keep(self, new: Path, aggregate: float, step: int) -> None:
        """Keep the best checkpoint by validation aggregate and the most recent ones."""
        if aggregate > self.best_aggregate:
            self.best_aggregate, self.best_checkpoint, self.best_step = aggregate, new, step
        assert self.checkpoint_dir is not None
        keep = self.cfg.ray.num_to_keep
        existing = [p for _, p in step_checkpoints(self.checkpoint_dir)]
        protected = {self.best_checkpoint, new}
        removable = [p for p in existing if p not in protected]
        while len(existing) > max(keep, 2) and removable:
            victim = removable.pop(0)
            shutil.rmtree(victim, ignore_errors=True)
            existing.remove(victim)


def test_results(trainer: MultiTaskTrainer, data: dict[str, TaskData]) -> dict[str, Any]:
    """The end of every run: test metrics (gathered over all ranks), their aggregate, the baselines.
    With early stopping ``fit`` has restored the best evaluation's weights: those are scored."""
    test = trainer.evaluate("test")
    es = trainer.early_stopping
    return {
        "test": test,
        "test_aggregate": trainer.aggregate(test) if test else None,
        "majority_baseline": baselines(data, "test"),
        "early_stopping": es.summary() if es is not None else None,
    }


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
    trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
    meta = restore_trainer(trainer, cfg, resume_from) if resume_from is not None else {}
    resumed_at = trainer.step
    recorder = open_recorder(out, resumed_at)  # a resumed run keeps its records up to resumed_at
    before = seconds_before(meta, recorder.history, resumed_at) if resumed_at else 0.0
    bar = _progress_bar(cfg.train.max_steps, trainer.step, progress)

    def echo(line: str) -> None:
        bar.write(line) if bar is not None else print(line, flush=True)

    def on_log(metrics: dict[str, float]) -> None:
        recorder.log(metrics)
        echo(format_log_line(metrics, cfg.train.max_steps))

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    on_eval = EvalCheckpointer(
        cfg,
        trainer,
        setup.tokenizer,
        recorder=recorder,
        checkpoint_dir=out / "checkpoints",
        echo=echo,
        clock=lambda: before + time.perf_counter() - start,
    )
    if resumed_at:
        on_eval.adopt(resumed_at)
    fit(trainer, on_step=(lambda _: bar.update(1)) if bar else None, on_log=on_log, on_eval=on_eval)
    if bar is not None:
        bar.close()
    recorder.close()
    elapsed = before + time.perf_counter() - start
    summary = {
        "output_dir": str(out),
        "steps": trainer.step,
        "train_seconds": elapsed,
        "examples_seen": trainer.examples_seen,
        "best_checkpoint": str(on_eval.best_checkpoint) if on_eval.best_checkpoint else None,
        "best_validation_aggregate": on_eval.best_aggregate,
        "best_step": on_eval.best_step,
        "resumed_from_step": resumed_at or None,
        **test_results(trainer, setup.data),
    }
    return write_run_outputs(out, summary, recorder.history)


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
