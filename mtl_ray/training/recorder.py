"""What a run writes as it goes: metrics.jsonl and TensorBoard scalars, and the console log line."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCORE_ATTRIBUTE = "val/aggregate"  # what ranks checkpoints (and Tune trials): higher is better


@dataclass
class RunRecorder:
    """Writes metrics.jsonl and TensorBoard scalars in ``output_dir`` and keeps the run's history."""

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


def open_recorder(out: Path, step: int) -> RunRecorder:
    """A recorder for a run starting at ``step``. A (re)started run keeps the records up to the step it
    starts from and drops the rest, so the history never holds a step twice; a fresh run (step 0)
    starts an empty history."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.jsonl"
    kept: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("step", 0) <= step:
                    kept.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    recorder = RunRecorder(out, purge_step=step + 1 if step > 0 else None)
    recorder.history.extend(kept)
    return recorder


def flatten_metrics(per_task: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{task}/{name}": value for task, m in per_task.items() for name, value in m.items()}


def format_log_line(metrics: dict[str, float], max_steps: int) -> str:
    """``step 10/500 texts/s=41.2 rt_sentiment=0.693 ...`` (per-task training loss)."""
    losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
    return f"step {int(metrics['step'])}/{max_steps} texts/s={metrics['texts_per_s']:.1f} {losses}"
