"""What a finished search writes: the results table (CSV + markdown, sorted by the aggregate score),
the best config as a ready-to-run training YAML, and the summary the CLI prints.

Input is one plain record per trial (built by ``mtl_ray/ray/tune.py`` from Tune's results)::

    {"trial": TrialSpec.to_dict(), "config": <the trial's config dict>, "metrics": <its last report>,
     "checkpoint": path or None, "max_steps": int, "error": str or None}

Scores are each trial's *last* evaluation on the validation split: the end of its budget, or the
rung where ASHA stopped it (``stopped_early``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from mtl_ray.training.metrics import primary_metric
from mtl_ray.tuning.deltam import delta_m, primary_metrics

SCORE = "val/aggregate"
SINGLE_PREFIX = "single/"


def per_task_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``val/<task>/<metric>`` flattened keys back to task -> metric -> value."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "val" and isinstance(value, (int, float)):
            out.setdefault(parts[1], {})[parts[2]] = float(value)
    return out


def trial_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The trial's last report. Single-task baselines report under ``single/`` (so ASHA, which ranks
    ``val/aggregate``, never compares them with multi-task trials); the prefix is dropped here."""
    metrics = record.get("metrics") or {}
    if record["trial"]["kind"] == "single":
        return {k.removeprefix(SINGLE_PREFIX): v for k, v in metrics.items()}
    return dict(metrics)


def task_types(config: dict[str, Any]) -> dict[str, str]:
    return {name: t.get("type", "classification") for name, t in config["tasks"].items()}


def single_task_scores(records: list[dict[str, Any]]) -> dict[str, float]:
    """task -> primary validation metric of its single-task baseline trial."""
    out = {}
    for r in records:
        if r["trial"]["kind"] != "single" or not r.get("metrics"):
            continue
        task = r["trial"]["only_task"]
        prim = primary_metrics(per_task_metrics(trial_metrics(r)), task_types(r["config"]))
        if task in prim:
            out[task] = prim[task]
    return out


def build_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per trial, sorted by aggregate (best first; baselines and failed trials last)."""
    single = single_task_scores(records)
    rows = []
    for r in records:
        cfg, metrics, trial = r["config"], trial_metrics(r), r["trial"]
        types = task_types(cfg)
        per_task = per_task_metrics(metrics)
        prim = primary_metrics(per_task, types)
        names = {t: primary_metric(types[t]) for t in prim}
        num_layers = metrics.get("model/num_layers")
        k = cfg["model"].get("sharing_depth")
        if k is None and num_layers is not None:
            k = int(num_layers)
        step = metrics.get("step")
        row: dict[str, Any] = {
            "trial": trial["trial_id"],
            "kind": trial["kind"],
            "aggregate": metrics.get(SCORE),
            "delta_m_pct": delta_m(prim, single, names) if trial["kind"] != "single" and single else math.nan,
            "k": k if trial["kind"] != "single" else None,
            "lr": cfg["train"]["lr"],
            "temperature": cfg["train"]["temperature"],
            "sampler": cfg["train"]["sampler"],
            "weighting": cfg["train"]["weighting"],
            "steps": int(step) if step is not None else 0,
            "stopped_early": bool(step is not None and step < r["max_steps"] and not r.get("error")),
            "error": r.get("error") or "",
        }
        for task in sorted(types):
            row[f"weight/{task}"] = cfg["tasks"][task].get("loss_weight", 1.0)
        for task in sorted(prim):
            row[f"{task}/{names[task]}"] = prim[task]
        row["checkpoint"] = r.get("checkpoint") or ""
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple[int, float]:
        agg = row["aggregate"]
        missing = agg is None or (isinstance(agg, float) and math.isnan(agg))
        return (row["kind"] == "single", 1 if missing else 0, -(agg if not missing else 0.0))

    rows.sort(key=order)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    # per-task metric columns next to the scores, paths last
    fixed = ["trial", "kind", "aggregate", "delta_m_pct"]
    metric_cols = [c for c in cols if "/" in c and not c.startswith("weight/")]
    tail = ["checkpoint"]
    rest = [c for c in cols if c not in fixed + metric_cols + tail]
    return fixed + metric_cols + rest + tail


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    cols = _columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in cols})
    return path


def markdown_table(rows: list[dict[str, Any]], limit: int | None = None, paths: bool = True) -> str:
    """A GitHub markdown table of ``rows`` (first ``limit``); ``paths=False`` leaves the checkpoint out."""
    cols = [c for c in _columns(rows) if paths or c != "checkpoint"]
    cols = [c for c in cols if c != "error" or any(r.get("error") for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best multi-task trial (rows are sorted; baselines never win)."""
    for row in rows:
        agg = row["aggregate"]
        if row["kind"] != "single" and agg is not None and not (isinstance(agg, float) and math.isnan(agg)):
            return row
    return None


def export_best_config(record: dict[str, Any], path: Path, command_hint: str = "") -> Path:
    """The best trial's config as a training YAML that ``load_config`` reads (the tune section left out)."""
    data = {k: v for k, v in record["config"].items() if k != "tune"}
    head = f"# Best config of a Ray Tune search (trial {record['trial']['trial_id']}); train it with:\n"
    head += f"#   mtl-ray train --config {command_hint or path}\n"
    path.write_text(head + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
