"""Search plots (PNG, headless matplotlib): what sharing depth and loss weights did to the scores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plot_search(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``score_vs_sharing_depth.png`` (aggregate and Δm% per trial against k; the default trial
    ringed, early-stopped trials hollow) and ``metric_vs_loss_weight.png`` (one panel per task: its
    primary metric against its loss weight). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mtl = [r for r in rows if r["kind"] != "single" and _finite(r.get("aggregate")) and r.get("k") is not None]
    written: list[Path] = []
    if not mtl:
        return written
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "aggregate", "validation aggregate"),
        (axes[1], "delta_m_pct", "Δm% vs single-task"),
    ):
        for r in mtl:
            if not _finite(r.get(key)):
                continue
            face = "none" if r.get("stopped_early") else "tab:blue"
            ax.scatter(r["k"], r[key], facecolors=face, edgecolors="tab:blue", s=40)
            if r["kind"] == "default":
                ax.scatter(r["k"], r[key], facecolors="none", edgecolors="black", s=140, linewidths=1.5)
        if key == "delta_m_pct":
            ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set(xlabel="sharing depth k", ylabel=label, title=f"{label} vs k")
    fig.suptitle("hollow: stopped early by ASHA; ringed: the default config", fontsize=9)
    fig.tight_layout()
    path = out_dir / "score_vs_sharing_depth.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    metric_cols = sorted({c for r in mtl for c in r if "/" in c and not c.startswith("weight/")})
    if metric_cols:
        fig, axes = plt.subplots(1, len(metric_cols), figsize=(4.2 * len(metric_cols), 3.8), squeeze=False)
        for ax, col in zip(axes[0], metric_cols):
            task = col.split("/")[0]
            pts = [(r.get(f"weight/{task}"), r.get(col)) for r in mtl]
            pts = [p for p in pts if _finite(p[0]) and _finite(p[1])]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:orange")
            ax.set(xlabel=f"loss weight of {task}", ylabel=col, title=task)
        fig.tight_layout()
        path = out_dir / "metric_vs_loss_weight.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
