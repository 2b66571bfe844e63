"""Δm% against a hand computation, the results table, the best-config export (it trains), plots."""

from __future__ import annotations

import csv
import math

import pytest

from mtl_ray.config import load_config
from mtl_ray.training.run import train
from mtl_ray.tuning.deltam import delta_m
from mtl_ray.tuning.plots import plot_search
from mtl_ray.tuning.report import best_row, build_rows, export_best_config, markdown_table, write_csv


def test_delta_m_by_hand():
    # acc 0.80 vs 0.75: +6.667%; pearson 0.45 vs 0.50: -10%; mse 0.9 vs 1.0 (lower is better): +10%
    mtl = {"a": 0.80, "b": 0.45, "c": 0.9}
    single = {"a": 0.75, "b": 0.50, "c": 1.0}
    got = delta_m(mtl, single, {"a": "accuracy", "b": "pearson", "c": "mse"})
    assert got == pytest.approx((0.05 / 0.75 * 100 - 10.0 + 10.0) / 3)
    assert delta_m({"a": 0.8}, {"a": 0.8}) == 0.0
    assert math.isnan(delta_m({"a": 0.8}, {}))
    assert delta_m({"a": 0.8, "x": 0.1}, {"a": 0.4}) == pytest.approx(100.0)  # tasks without a baseline left out


def record(trial_id, kind, metrics, only=None, k=None, weights=(1.0, 1.0), step=10, tasks=("cls", "reg")):
    types = {"cls": "classification", "reg": "regression"}
    cfg = {
        "tasks": {t: {"type": types[t], "source": f"{t}.csv", "loss_weight": w} for t, w in zip(tasks, weights)},
        "model": {"encoder": "enc", "sharing_depth": k},
        "train": {"lr": 1e-4, "temperature": 2.0, "sampler": "temperature", "weighting": "static"},
    }
    return {
        "trial": {"trial_id": trial_id, "kind": kind, "overrides": {}, "only_task": only},
        "config": cfg,
        "metrics": {"step": step, "model/num_layers": 4, **metrics},
        "checkpoint": f"/ckpt/{trial_id}",
        "max_steps": 10,
        "error": None,
    }


RECORDS = [
    record(
        "single-cls", "single", {"single/val/cls/accuracy": 0.8, "single/val/aggregate": 0.8}, "cls", tasks=("cls",)
    ),
    record("single-reg", "single", {"single/val/reg/pearson": 0.5, "single/val/aggregate": 0.5}, "reg", tasks=("reg",)),
    record("default", "default", {"val/cls/accuracy": 0.84, "val/reg/pearson": 0.45, "val/aggregate": 0.645}),
    record(
        "search-000",
        "search",
        {"val/cls/accuracy": 0.88, "val/reg/pearson": 0.55, "val/aggregate": 0.715},
        k=0,
        weights=(1.5, 0.5),
    ),
    record(
        "search-001", "search", {"val/cls/accuracy": 0.5, "val/reg/pearson": 0.1, "val/aggregate": 0.3}, k=2, step=5
    ),
]


def test_rows_sorted_with_delta_m_and_flags():
    rows = build_rows(RECORDS)
    assert [r["trial"] for r in rows] == ["search-000", "default", "search-001", "single-cls", "single-reg"]
    top = rows[0]
    assert top["delta_m_pct"] == pytest.approx(((0.88 - 0.8) / 0.8 * 100 + (0.55 - 0.5) / 0.5 * 100) / 2)
    assert rows[1]["delta_m_pct"] == pytest.approx(((0.84 - 0.8) / 0.8 * 100 + (0.45 - 0.5) / 0.5 * 100) / 2)
    assert rows[1]["k"] == 4  # sharing_depth None -> L
    assert top["k"] == 0 and top["weight/cls"] == 1.5 and top["cls/accuracy"] == 0.88
    assert [r["stopped_early"] for r in rows[:3]] == [False, False, True]
    assert rows[3]["aggregate"] == 0.8 and math.isnan(rows[3]["delta_m_pct"])
    assert best_row(rows)["trial"] == "search-000"


def test_csv_and_markdown(tmp_path):
    rows = build_rows(RECORDS)
    with open(write_csv(rows, tmp_path / "r.csv"), encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert [r["trial"] for r in read] == [r["trial"] for r in rows]
    assert read[0]["reg/pearson"] == "0.55" and read[0]["checkpoint"] == "/ckpt/search-000"
    md = markdown_table(rows, limit=2, paths=False).splitlines()
    assert md[0].startswith("| trial | kind | aggregate | delta_m_pct |") and len(md) == 4
    assert "checkpoint" not in md[0]


def test_plots_written(tmp_path):
    paths = plot_search(build_rows(RECORDS), tmp_path)
    assert [p.name for p in paths] == ["score_vs_sharing_depth.png", "metric_vs_loss_weight.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_exported_best_config_trains(tiny_config, tmp_path):
    from mtl_ray.config import config_to_dict

    cfg = config_to_dict(tiny_config(model={"sharing_depth": 1}, max_steps=2, eval_every=2, run="best"))
    cfg["tasks"]["score"]["loss_weight"] = 0.25
    rec = {"trial": {"trial_id": "search-007"}, "config": {**cfg, "tune": {"name": "x"}}}
    path = export_best_config(rec, tmp_path / "best_config.yaml")
    text = path.read_text()
    assert text.startswith("# Best config of a Ray Tune search (trial search-007)") and "tune:" not in text
    loaded = load_config(path)
    assert loaded.model.sharing_depth == 1 and loaded.tasks["score"].loss_weight == 0.25
    summary = train(loaded, progress=False)
    assert summary["steps"] == 2 and summary["best_checkpoint"]
