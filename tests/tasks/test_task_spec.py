"""TaskSpec resolution and validation, and the task-type registry."""

from __future__ import annotations

import json

import pytest

from mtl_ray.config import TaskConfig
from mtl_ray.errors import ConfigError
from mtl_ray.tasks import TASK_TYPES, TaskSpec, TaskType, get_task_type, register_task_type


def cfg(**kw) -> TaskConfig:
    kw.setdefault("name", "t")
    kw.setdefault("source", "data.csv")
    return TaskConfig(**kw)


def test_every_config_task_type_is_registered_and_consistent():
    assert {"classification", "pair_classification", "regression", "contrastive"} <= set(TASK_TYPES)
    for name, ttype in TASK_TYPES.items():
        assert isinstance(ttype, TaskType) and ttype.name == name
        assert set(ttype.default_metrics) <= set(ttype.valid_metrics)
        if ttype.supervised:
            assert ttype.primary_metric in ttype.valid_metrics
        else:
            assert ttype.primary_metric is None and ttype.valid_metrics == ()
    assert get_task_type("classification").primary_metric == "accuracy"
    assert get_task_type("regression").primary_metric == "pearson"


def test_unknown_type_lists_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match="unknown task type 'ner'; valid: classification, contrastive, mlm, pair_classification, regression",
    ):
        get_task_type("ner")
    with pytest.raises(ConfigError, match="tasks.x.type: unknown task type 'ner'"):
        TaskSpec("x", "ner", None, ())


def test_registering_a_different_type_under_a_taken_name_fails():
    register_task_type(get_task_type("regression"))  # the same object again: fine
    clone = type(get_task_type("regression"))()
    with pytest.raises(ValueError, match="already registered"):
        register_task_type(clone)


def test_from_config_resolves_defaults_and_inferred_labels():
    spec = TaskSpec.from_config(cfg(type="classification", loss_weight=2, max_length=64), ["neg", "pos"])
    assert spec == TaskSpec("t", "classification", ("neg", "pos"), ("accuracy", "macro_f1", "mcc"), 2.0, 64)
    assert (spec.is_pair, spec.supervised, spec.num_outputs) == (False, True, 2)

    pair = TaskSpec.from_config(
        cfg(type="pair_classification", text_pair_field="b", metrics=["mcc", "accuracy"]), ["a", "b", "c"]
    )
    assert (pair.is_pair, pair.num_outputs, pair.metrics) == (True, 3, ("mcc", "accuracy"))

    reg = TaskSpec.from_config(cfg(type="regression"), None)
    assert (reg.label_names, reg.metrics, reg.num_outputs) == (None, ("pearson", "spearman", "mse"), 1)

    con = TaskSpec.from_config(cfg(type="contrastive"), [])
    assert (con.metrics, con.supervised, con.num_outputs, con.temperature) == ((), False, None, None)


def test_config_label_names_are_used_when_the_loader_gives_none():
    spec = TaskSpec.from_config(cfg(label_names=["x", "y"]), None)
    assert spec.label_names == ("x", "y")


def test_dict_round_trip_through_json():
    spec = TaskSpec("t", "contrastive", None, (), 0.5, 32, temperature=0.1)
    for s in (spec, TaskSpec("u", "classification", ("a", "b"), ("accuracy",))):
        assert TaskSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ConfigError, match="unknown keys \\['extra'\\]"):
        TaskSpec.from_dict({**spec.to_dict(), "extra": 1})


def test_bad_metrics_name_the_key_and_list_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match=r"tasks.t.metrics: \['pearson'\] not valid for a classification task; valid: accuracy, macro_f1, mcc",
    ):
        TaskSpec.from_config(cfg(metrics=["accuracy", "pearson"]), ["a", "b"])
    with pytest.raises(
        ConfigError,
        match=r"tasks.t.metrics: \['accuracy'\] not valid for a regression task; valid: pearson, spearman, mse",
    ):
        TaskSpec.from_config(cfg(type="regression", metrics=["accuracy"]), None)
    with pytest.raises(ConfigError, match=r"tasks.t.metrics: .* contrastive task; valid: \(none\)"):
        TaskSpec.from_config(cfg(type="contrastive", metrics=["accuracy"]), None)
    with pytest.raises(ConfigError, match="tasks.t.metrics: list at least one"):
        TaskSpec.from_config(cfg(metrics=[]), ["a", "b"])
    with pytest.raises(ConfigError, match="tasks.t.metrics: duplicate"):
        TaskSpec.from_config(cfg(metrics=["accuracy", "mcc", "mcc"]), ["a", "b"])
    with pytest.raises(ConfigError, match="tasks.t.metrics: must include 'pearson', the primary metric"):
        TaskSpec.from_config(cfg(type="regression", metrics=["mse"]), None)


def test_bad_labels_name_the_key():
    with pytest.raises(
        ConfigError, match=r"tasks.t.label_names: a classification task needs at least 2 classes, got \['only'\]"
    ):
        TaskSpec.from_config(cfg(), ["only"])
    with pytest.raises(ConfigError, match="tasks.t.label_names: a pair_classification task needs at least 2 classes"):
        TaskSpec.from_config(cfg(type="pair_classification", text_pair_field="b"), None)
    with pytest.raises(ConfigError, match=r"tasks.t.label_names: duplicate class names \['a'\]"):
        TaskSpec.from_config(cfg(), ["a", "b", "a"])
    with pytest.raises(ConfigError, match="tasks.t.label_names: a regression task has no class names"):
        TaskSpec.from_config(cfg(type="regression"), ["a", "b"])
