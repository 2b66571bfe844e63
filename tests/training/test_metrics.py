"""Metrics equal scikit-learn / scipy and hand computations; aggregate, baseline and table by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef, mean_squared_error

from mtl_ray.errors import ConfigError, DataError
from mtl_ray.training.metrics import (
    aggregate_score,
    compute_metrics,
    format_table,
    majority_baseline,
    primary_metric,
)

PRED = np.array([0, 1, 2, 1, 0, 2, 2, 1])
GOLD = np.array([0, 1, 1, 1, 0, 2, 0, 2])


def test_classification_equals_sklearn():
    got = compute_metrics("classification", ["accuracy", "macro_f1", "mcc"], PRED, GOLD, num_labels=4)
    assert list(got) == ["accuracy", "macro_f1", "mcc"]
    assert got["accuracy"] == 5 / 8
    # class 3 never occurs: it counts as F1 0 because labels=range(num_labels)
    assert got["macro_f1"] == pytest.approx(f1_score(GOLD, PRED, average="macro", labels=[0, 1, 2, 3], zero_division=0))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(GOLD, PRED))
    assert all(type(v) is float for v in got.values())


def test_classification_by_hand_and_from_logits():
    # gold [1,1,0,0], pred [1,0,0,0]: class1 P=1 R=.5 F1=2/3; class0 P=2/3 R=1 F1=.8
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    got = compute_metrics("pair_classification", ["accuracy", "macro_f1", "mcc"], logits, np.array([1, 1, 0, 0]), 2)
    assert got["accuracy"] == 0.75
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # mcc = (TP*TN - FP*FN)/sqrt(...) = (1*2 - 0*1)/sqrt(1*2*3*2)
    assert got["mcc"] == pytest.approx(2 / math.sqrt(12))


def test_regression_equals_scipy_and_hand():
    pred = np.array([1.0, 2.0, 3.5, 3.0, 5.0], dtype=np.float32)
    gold = np.array([1.2, 1.9, 3.0, 4.0, 4.5])
    got = compute_metrics("regression", ["pearson", "spearman", "mse"], pred[:, None], gold)
    assert got["pearson"] == pytest.approx(stats.pearsonr(pred.astype(np.float64), gold).statistic)
    assert got["spearman"] == pytest.approx(stats.spearmanr(pred, gold).statistic)
    assert got["mse"] == pytest.approx(mean_squared_error(gold, pred))
    assert got["mse"] == pytest.approx((0.04 + 0.01 + 0.25 + 1.0 + 0.25) / 5)
    perfect = compute_metrics("regression", ["pearson", "spearman"], np.array([1.0, 2, 3]), np.array([2.0, 4, 6]))
    assert perfect == pytest.approx({"pearson": 1.0, "spearman": 1.0})


def test_constant_prediction_gives_zero_correlation_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_metrics("regression", ["pearson", "spearman", "mse"], np.full(4, 2.0), np.array([1.0, 2, 3, 4]))
    assert got["pearson"] == 0.0 and got["spearman"] == 0.0
    assert got["mse"] == pytest.approx(1.5)


def test_unknown_metric_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"'pearson' for a classification task; valid: accuracy, macro_f1, mcc"):
        compute_metrics("classification", ["accuracy", "pearson"], PRED, GOLD, 3)
    with pytest.raises(ConfigError, match="valid: none"):
        compute_metrics("contrastive", ["accuracy"], PRED, GOLD)
    assert compute_metrics("contrastive", [], PRED, GOLD) == {}


def test_bad_shapes_and_empty_inputs():
    with pytest.raises(DataError, match="predictions"):
        compute_metrics("classification", ["accuracy"], PRED[:3], GOLD, 3)
    with pytest.raises(DataError, match="no examples"):
        compute_metrics("regression", ["mse"], np.array([]), np.array([]))


def test_aggregate_score_by_hand():
    per_task = {
        "sent": {"accuracy": 0.8, "macro_f1": 0.1},
        "sts": {"pearson": 0.6, "mse": 9.0},
        "nli": {"accuracy": 0.4},
        "unsup": {},
    }
    types = {"sent": "classification", "sts": "regression", "nli": "pair_classification", "unsup": "contrastive"}
    assert aggregate_score(per_task, types) == pytest.approx((0.8 + 0.6 + 0.4) / 3)
    assert aggregate_score(per_task, types, {"sent": 2.0, "sts": 1.0, "nli": 1.0}) == pytest.approx(
        (2 * 0.8 + 0.6 + 0.4) / 4
    )
    assert math.isnan(aggregate_score({"unsup": {}}, {"unsup": "contrastive"}))
    assert primary_metric("regression") == "pearson" and primary_metric("contrastive") is None
    with pytest.raises(ConfigError, match="needs 'accuracy'"):
        aggregate_score({"sent": {"macro_f1": 0.5}}, {"sent": "classification"})


def test_majority_baseline_by_hand():
    base = majority_baseline(
        "classification", np.array([2, 2, 1, 0, 2]), np.array([2, 1, 2, 0]), ["accuracy", "macro_f1", "mcc"], 3
    )
    # always predicts 2: accuracy 2/4; F1 of class 2 = 2*(.5*1)/(1.5) = 2/3, others 0
    assert base == pytest.approx({"accuracy": 0.5, "macro_f1": (2 / 3) / 3, "mcc": 0.0})
    reg = majority_baseline("regression", np.array([1.0, 2.0, 6.0]), np.array([2.0, 4.0]), ["mse", "pearson"], None)
    assert reg == pytest.approx({"mse": ((3 - 2) ** 2 + (3 - 4) ** 2) / 2, "pearson": 0.0})


def test_format_table():
    per_task = {"sentiment": {"accuracy": 0.81234, "macro_f1": 0.7}, "score": {"pearson": -0.5}}
    base = {"sentiment": {"accuracy": 0.5, "macro_f1": 0.3333}}
    table = format_table(per_task, base)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "accuracy", "macro_f1", "pearson"]
    assert lines[2].split() == ["sentiment", "0.8123", "0.7000", "-"]
    assert lines[3].split() == ["baseline", "0.5000", "0.3333", "-"]
    assert lines[4].split() == ["score", "-", "-", "-0.5000"]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert "baseline" not in format_table(per_task)
