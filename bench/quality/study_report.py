"""The quality study's tables and plot, from the finished runs' records (pure Python + matplotlib).

A record is what study.py writes per run (``result.json``)::

    {"arm": "depth_k2", "seed": 0, "task": None or "bbc_topic", "steps": 200, "params": 41234567,
     "train_seconds": 101.2, "task_types": {"bbc_topic": "classification", ...},
     "test": {"bbc_topic": {"accuracy": 0.91, ...}, ...}}

Δm% (mtl_ray.tuning.deltam) of a multi-task run compares its primary test metric per task with the
single-task baseline's, averaged over the seeds (one baseline per task); mean ± std over seeds.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from study_arms import Arm

from mtl_ray.tasks import get_task_type
from mtl_ray.tuning.deltam import delta_m, primary_metrics

SINGLE = {"equal": "single_task", "converged": "single_es"}  # each protocol's single-task baseline
DERIVED = "bbc_headline_match"  # the derived pair task, reported with and without (docs/quality.md)


def arm_seed_metrics(records: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """arm -> seed -> {"primary": task -> value, "params": int, "types": task -> type, "runs": n}.
    The single-task arm's runs of one seed are merged: one value per task, parameters summed."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        entry = out.setdefault(r["arm"], {}).setdefault(
            int(r["seed"]), {"primary": {}, "params": 0, "types": {}, "runs": 0, "train_seconds": 0.0}
        )
        entry["primary"].update(primary_metrics(r["test"], r["task_types"]))
        entry["types"].update({t: r["task_types"][t] for t in r["test"] if t in r["task_types"]})
        entry["params"] += int(r["params"])
        entry["runs"] += 1
        entry["train_seconds"] += float(r.get("train_seconds", 0.0))
        entry["steps"] = entry.get("steps", 0) + int(r.get("steps", 0))
    return out


def single_baseline(per_arm: dict[str, dict[int, dict[str, Any]]], protocol: str = "equal") -> dict[str, float]:
    """task -> the protocol's single-task primary test metric, mean over seeds."""
    values: dict[str, list[float]] = {}
    for entry in per_arm.get(SINGLE[protocol], {}).values():
        for task, v in entry["primary"].items():
            values.setdefault(task, []).append(v)
    return {task: statistics.fmean(v) for task, v in values.items()}


def metric_names(types: dict[str, str]) -> dict[str, str]:
    return {task: get_task_type(t).primary_metric for task, t in types.items() if get_task_type(t).supervised}


def layers_per_request(arm: Arm, num_layers: int, num_tasks: int) -> int:
    """Encoder layers run to answer one text for every task: single-task models run the whole
    encoder once per task; a model cut at k runs the k shared layers once and one tower per task."""
    if arm.kind == "single":
        return num_tasks * num_layers
    k = num_layers if arm.sharing_depth is None else arm.sharing_depth
    return k + num_tasks * (num_layers - k)


def serve_replicas(arm: Arm, num_tasks: int) -> int:
    """Replicas of the smallest Serve deployment answering every task: one shared encoder + one head
    deployment per task for one multi-task model; one such app (encoder + head) per single-task model."""
    return 2 * num_tasks if arm.kind == "single" else 1 + num_tasks


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[dict[str, Any]], arms: list[Arm], num_layers: int) -> list[dict[str, Any]]:
    """One row per arm that has results: per-task mean/std, Δm% mean/std, params, layers per request."""
    per_arm = arm_seed_metrics(records)
    rows = []
    for arm in arms:
        base = single_baseline(per_arm, arm.protocol)
        seeds = per_arm.get(arm.name)
        if not seeds:
            continue
        types: dict[str, str] = {}
        for entry in seeds.values():
            types.update(entry["types"])
        names = metric_names(types)
        if not names:  # an MLM-only stage 0: nothing to score
            continue
        tasks = sorted(names)
        per_task = {t: _mean_std([e["primary"][t] for e in seeds.values() if t in e["primary"]]) for t in tasks}
        deltas = [delta_m(e["primary"], base, names) for e in seeds.values()]
        without = {t: n for t, n in names.items() if t != DERIVED}
        deltas_wo = [
            delta_m({t: v for t, v in e["primary"].items() if t in without}, base, without) for e in seeds.values()
        ]
        # one task's term of Δm% (delta_m over that task alone; NaN without a baseline, dropped)
        task_deltas = {
            t: _mean_std([delta_m({t: e["primary"][t]}, base, names) for e in seeds.values() if t in e["primary"]])
            for t in tasks
        }
        rows.append(
            {
                "arm": arm.name,
                "label": arm.label,
                "kind": arm.kind,
                "sharing_depth": arm.sharing_depth,
                "seeds": sorted(seeds),
                "metric_names": names,
                "per_task": per_task,
                "task_delta_pct": task_deltas,
                "protocol": arm.protocol,
                "delta_m": _mean_std(deltas),
                "delta_m_without_derived": _mean_std(deltas_wo),
                "steps": statistics.fmean(e["steps"] for e in seeds.values()),
                "serve_replicas": serve_replicas(arm, len(tasks)),
                "params": max(e["params"] for e in seeds.values()),
                "layers_per_request": layers_per_request(arm, num_layers, len(tasks)),
                "train_seconds": statistics.fmean(e["train_seconds"] for e in seeds.values()),
            }
        )
    return rows


def _fmt(ms: tuple[float, float], digits: int = 3, signed: bool = False) -> str:
    mean, std = ms
    if math.isnan(mean):
        return "–"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The per-arm table (primary test metric per task, mean ± std over seeds) and the per-task Δ table."""
    if not rows:
        return "(no finished runs)\n"
    tasks = sorted({t for r in rows for t in r["per_task"]})
    names = {t: n for r in rows for t, n in r["metric_names"].items()}
    head = [
        "arm",
        "protocol",
        "seeds",
        "steps",
        "params",
        "layers / request",
        "Serve replicas",
        *[f"{t} ({names[t]})" for t in tasks],
        "Δm%",
        f"Δm% w/o {DERIVED}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["label"],
            r.get("protocol", "equal"),
            str(len(r["seeds"])),
            f"{r.get('steps', 0):.0f}",
            f"{r['params'] / 1e6:.1f} M",
            str(r["layers_per_request"]),
            str(r.get("serve_replicas", "–")),
            *[_fmt(r["per_task"].get(t, (math.nan, math.nan))) for t in tasks],
            _fmt(r["delta_m"], 2, signed=True),
            _fmt(r.get("delta_m_without_derived", (math.nan, math.nan)), 2, signed=True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per task, % change of the primary test metric against the single-task baseline (mean ± std over seeds):",
        "",
    ]
    head = ["arm", *tasks]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["kind"] == "single":
            continue
        cells = [r["label"], *[_fmt(r["task_delta_pct"].get(t, (math.nan, math.nan)), 1, signed=True) for t in tasks]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """Every test metric of every run: arm, seed, run task (single-task arm), task, metric, value."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "run_task", "task", "metric", "value", "params", "steps", "train_seconds"])
        for r in sorted(records, key=lambda r: (r["arm"], r["seed"], r.get("task") or "")):
            for task, metrics in sorted(r["test"].items()):
                for metric, value in sorted(metrics.items()):
                    w.writerow(
                        [
                            r["arm"],
                            r["seed"],
                            r.get("task") or "",
                            task,
                            metric,
                            value,
                            r["params"],
                            r["steps"],
                            round(float(r.get("train_seconds", 0.0)), 1),
                        ]
                    )
    tmp.replace(path)


def _label_points(ax: Any, points: list[tuple[float, float, dict[str, Any]]]) -> None:
    """Name every point without overlaps: the points at one x get their labels in a column (equal-compute
    arms to the left, the others to the right), top to bottom in Δm% order, at least ``gap`` apart."""
    if not points:
        return
    means = [m for _, m, _ in points]
    gap = max(max(means) - min(means), 1.0) * 0.05
    columns: dict[float, list[tuple[float, float, dict[str, Any]]]] = {}
    for p in points:
        columns.setdefault(p[0], []).append(p)
    for x, column in columns.items():
        left = column[0][2].get("protocol", "equal") == "equal" and column[0][2]["kind"] == "multi"
        y = math.inf
        for _, mean, r in sorted(column, key=lambda p: -p[1]):
            y = min(mean, y - gap)
            ax.annotate(
                r["arm"],
                (x, mean),
                xytext=(x + (-1.2 if left else 1.2), y),
                ha="right" if left else "left",
                va="center",
                fontsize=7,
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6"},
            )
    xs = [x for x, _, _ in points]
    ax.set_xlim(min(xs) - 7, max(xs) + 6)


def plot(rows: list[dict[str, Any]], path: Path, num_layers: int) -> None:
    """Left: the quality/cost front — Δm% (vs the protocol's single-task models) against encoder layers
    run per request, one point per arm (equal compute: circles, converged: squares). Right: per-task
    % change against single-task for every multi-task arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    markers = {"equal": "o", "converged": "s"}
    points = []  # (x, Δm% mean, row): equal-compute arms a little left of their x, converged a little right
    for r in rows:
        mean, std = r["delta_m"]
        if math.isnan(mean):
            continue
        protocol = r.get("protocol", "equal")
        shift = 0.0 if r["kind"] == "single" else (-0.3 if protocol == "equal" else 0.3)
        points.append((r["layers_per_request"] + shift, mean, r))
        ax.errorbar(
            r["layers_per_request"] + shift,
            mean,
            yerr=std,
            marker=markers.get(protocol, "o"),
            capsize=3,
            ls="none",
            color="tab:grey" if r["kind"] == "single" else ("tab:blue" if protocol == "equal" else "tab:green"),
        )
    _label_points(ax, points)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("encoder layers run per request (all tasks)")
    ax.set_ylabel("Δm% vs single-task (test, mean ± std over seeds)")
    ax.set_title("Quality vs serving cost (circles: equal compute, squares: converged)")

    multi = [r for r in rows if r["kind"] == "multi"]
    tasks = sorted({t for r in multi for t in r["task_delta_pct"]})
    width = 0.8 / max(len(multi), 1)
    for i, r in enumerate(multi):
        xs = [j + i * width for j in range(len(tasks))]
        vals = [r["task_delta_pct"].get(t, (math.nan, math.nan)) for t in tasks]
        ax2.bar(xs, [v[0] for v in vals], width, yerr=[v[1] for v in vals], capsize=2, label=r["arm"])
    ax2.axhline(0.0, color="grey", lw=0.8)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=15, fontsize=8)
    ax2.set_ylabel("% change vs single-task (primary test metric)")
    ax2.set_title("Per task, every multi-task arm")
    if multi:
        ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
