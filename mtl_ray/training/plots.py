"""Training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Per-task training loss (left) and validation primary metrics + aggregate (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_keys = sorted({k for r in history for k in r if k.startswith("loss/")})
    val_keys = sorted({k for r in history for k in r if k.startswith("val/")})
    if not loss_keys and not val_keys:
        return None
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in loss_keys:
        pts = [(r["step"], r[key]) for r in history if key in r]
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], label=key[5:], marker=".", linewidth=1)
    ax_loss.set(title="training loss per task", xlabel="step", ylabel="loss")
    if loss_keys:
        ax_loss.legend(fontsize=8)
    primary = [k for k in val_keys if k.endswith(("/accuracy", "/pearson")) or k == "val/aggregate"]
    for key in primary:
        pts = [(r["step"], r[key]) for r in history if key in r]
        style = {"linewidth": 2.5, "color": "black"} if key == "val/aggregate" else {"linewidth": 1}
        ax_val.plot([p[0] for p in pts], [p[1] for p in pts], label=key[4:], marker="o", **style)
    ax_val.set(title="validation", xlabel="step", ylabel="metric")
    if primary:  # an unsupervised-only run (an MLM stage 0) has no metric to plot
        ax_val.legend(fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation metric (unsupervised tasks only)", ha="center", transform=ax_val.transAxes)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
