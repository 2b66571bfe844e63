"""Search-space parsing, validation errors (naming the key) and the trial list."""

from __future__ import annotations

import math
import random

import pytest

from mtl_ray.config import TuneConfig, config_from_dict
from mtl_ray.errors import ConfigError
from mtl_ray.tuning.resources import concurrent_trials
from mtl_ray.tuning.space import grid_overrides, parse_space, sample_overrides
from mtl_ray.tuning.trials import apply_trial, build_trials

BASE = {
    "tasks": {
        "a": {"type": "classification", "source": "a.csv"},
        "b": {"type": "regression", "source": "b.jsonl"},
    },
    "model": {"encoder": "enc"},
}


def tune_cfg(space: dict, **kw) -> TuneConfig:
    return TuneConfig(search_space=space, **kw)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lr": {"loguniform": [1e-3, 1e-5]}}, "tune.search_space.train.lr.loguniform: low 0.001 > high 1e-05"),
        ({"train.lr": {"uniform": [1.0]}}, "expected [low, high]"),
        ({"train.lr": {"normal": [0, 1]}}, "unknown spec 'normal'"),
        ({"model.sharing_depth": {"choice": []}}, "non-empty list"),
        ({"train.max_steps": {"randint": [1.5, 3]}}, "bounds must be integers"),
        ({"train.lr": {"loguniform": [0, 1]}}, "bounds must be > 0"),
        ({"train.lr": {"simplex": True}}, "simplex applies to tasks.*.loss_weight only"),
    ],
)
def test_bad_spec_structure_names_the_key(space, message):
    with pytest.raises(ConfigError) as err:
        tune_cfg(space)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "tune.search_space: empty"),
        ({"train.lrr": {"choice": [1e-4]}}, "tune.search_space.train.lrr: train.lrr: unknown key"),
        ({"tasks.c.loss_weight": {"uniform": [0.1, 1.0]}}, "unknown task 'c'"),
        ({"train.sampler": {"choice": ["uniform", "roundrobin"]}}, "unknown sampler 'roundrobin'"),
        ({"tasks.*.loss_weight": {"uniform": [-1.0, 1.0]}}, "loss_weight: must be >= 0"),
        ({"tune.num_samples": {"choice": [1]}}, "tune section cannot be searched"),
    ],
)
def test_keys_are_checked_against_the_config(space, message):
    with pytest.raises(ConfigError) as err:
        build_trials(BASE, tune_cfg(space), ["a", "b"])
    assert message in str(err.value)


def test_config_loads_a_tune_section():
    cfg = config_from_dict(
        {**BASE, "tune": {"search_space": {"train.lr": {"loguniform": [1e-5, 1e-4]}}, "num_samples": 3}}
    )
    assert cfg.tune.num_samples == 3 and cfg.tune.scheduler == "asha"
    with pytest.raises(ConfigError, match="tune.scheduler: unknown 'pbt'"):
        config_from_dict({**BASE, "tune": {"scheduler": "pbt"}})


def test_sampling_is_seeded_and_in_range():
    specs = parse_space(
        {
            "train.lr": {"loguniform": [1e-5, 1e-3]},
            "train.temperature": {"uniform": [1.0, 5.0]},
            "train.max_steps": {"randint": [3, 4]},
            "model.sharing_depth": {"choice": [0, 2]},
            "tasks.*.loss_weight": {"simplex": True},
        }
    )
    draws = [sample_overrides(specs, ["a", "b"], random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    many = [sample_overrides(specs, ["a", "b"], random.Random(i)) for i in range(50)]
    for d in many:
        assert 1e-5 <= d["train.lr"] <= 1e-3 and 1.0 <= d["train.temperature"] <= 5.0
        assert d["train.max_steps"] in (3, 4) and d["model.sharing_depth"] in (0, 2)
        assert math.isclose(d["tasks.a.loss_weight"] + d["tasks.b.loss_weight"], 2.0)  # simplex × T
    assert {d["train.max_steps"] for d in many} == {3, 4}


def test_grid_is_the_cartesian_product_and_wildcards_expand():
    specs = parse_space({"model.sharing_depth": {"choice": [0, 2]}, "tasks.*.max_length": {"choice": [16, 32]}})
    grid = grid_overrides(specs, ["a", "b"])
    assert grid == [
        {"model.sharing_depth": 0, "tasks.a.max_length": 16, "tasks.b.max_length": 16},
        {"model.sharing_depth": 0, "tasks.a.max_length": 32, "tasks.b.max_length": 32},
        {"model.sharing_depth": 2, "tasks.a.max_length": 16, "tasks.b.max_length": 16},
        {"model.sharing_depth": 2, "tasks.a.max_length": 32, "tasks.b.max_length": 32},
    ]
    with pytest.raises(ConfigError, match="search_alg=grid needs choice specs only"):
        grid_overrides(parse_space({"train.lr": {"uniform": [0.1, 0.2]}}), ["a"])


def test_trial_list_baselines_default_then_search():
    cfg = tune_cfg({"model.sharing_depth": {"choice": [0, 2]}}, search_alg="grid")
    trials = build_trials(BASE, cfg, ["a", "b"])
    assert [t.trial_id for t in trials] == ["single-a", "single-b", "default", "search-000", "search-001"]
    single = apply_trial(
        {**BASE, "tasks": {**BASE["tasks"], "a": {**BASE["tasks"]["a"], "loss_weight": 3.0}}}, trials[0]
    )
    assert list(single["tasks"]) == ["a"] and single["tasks"]["a"]["loss_weight"] == 1.0
    searched = config_from_dict(apply_trial(BASE, trials[4]))
    assert searched.model.sharing_depth == 2
    assert len(build_trials(BASE, tune_cfg({"train.lr": {"uniform": [1e-4, 2e-4]}}, num_samples=3), ["a", "b"])) == 6


def test_overrides_round_trip_exact_values():
    trials = build_trials(BASE, tune_cfg({"train.lr": {"loguniform": [1e-5, 1e-3]}}, num_samples=1), ["a", "b"])
    lr = trials[-1].overrides["train.lr"]
    assert config_from_dict(apply_trial(BASE, trials[-1])).train.lr == lr


def test_concurrency_must_fit_the_cluster():
    assert concurrent_trials(TuneConfig(), {"CPU": 4.0}) == 4
    assert concurrent_trials(TuneConfig(max_concurrent_trials=2), {"CPU": 4.0}) == 2
    with pytest.raises(ConfigError, match="tune.max_concurrent_trials: 5 trials"):
        concurrent_trials(TuneConfig(max_concurrent_trials=5), {"CPU": 4.0})
    with pytest.raises(ConfigError, match="one trial needs 7 CPU"):
        concurrent_trials(TuneConfig(workers_per_trial=3, cpus_per_trial=2.0), {"CPU": 4.0})
    with pytest.raises(ConfigError, match="one trial needs 1 CPU, 1 GPU"):
        concurrent_trials(TuneConfig(gpus_per_trial=1.0), {"CPU": 4.0})
