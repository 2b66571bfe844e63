"""search_alg: optuna without Ray running: the space's flat parameters, their Tune distributions (and
Optuna's view of them), simplex weights from a suggestion, the missing-package error, and the searcher
that hands out the fixed trials before Optuna's suggestions."""

from __future__ import annotations

import math
import random
import sys

import pytest

from mtl_ray.config import TuneConfig
from mtl_ray.errors import ConfigError
from mtl_ray.tuning.space import OPTUNA_MISSING, SIMPLEX_LOW, params_to_overrides, parse_space, search_params
from mtl_ray.tuning.trials import TrialSpec, build_trials

BASE = {
    "tasks": {
        "a": {"type": "classification", "source": "a.csv"},
        "b": {"type": "regression", "source": "b.jsonl"},
        "c": {"type": "classification", "source": "c.csv"},
    },
    "model": {"encoder": "enc"},
}
TASKS = ["a", "b", "c"]
SPACE = {
    "train.lr": {"loguniform": [1e-5, 1e-3]},
    "model.sharing_depth": {"choice": [0, 3, None]},
    "train.temperature": {"uniform": [1.0, 5.0]},
    "train.max_steps": {"randint": [2, 4]},
    "tasks.*.max_length": {"choice": [16, 32]},
    "tasks.*.loss_weight": {"simplex": True},
}


def test_search_params_expand_wildcards_and_the_simplex():
    params = search_params(parse_space(SPACE), TASKS)
    assert sorted(params) == sorted(
        [
            "train.lr",
            "model.sharing_depth",
            "train.temperature",
            "train.max_steps",
            "tasks.a.max_length",
            "tasks.b.max_length",
            "tasks.c.max_length",
            "simplex:tasks.a.loss_weight",
            "simplex:tasks.b.loss_weight",
            "simplex:tasks.c.loss_weight",
        ]
    )
    assert (params["train.max_steps"].kind, params["train.max_steps"].values) == ("randint", (2, 4))
    assert (params["tasks.b.max_length"].kind, params["tasks.b.max_length"].values) == ("choice", (16, 32))
    assert params["simplex:tasks.c.loss_weight"].kind == "uniform"
    assert params["simplex:tasks.c.loss_weight"].values == (SIMPLEX_LOW, 1.0)


def test_tune_distributions_match_the_specs():
    pytest.importorskip("ray")
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

    from mtl_ray.ray.searcher import tune_search_space

    space = tune_search_space(parse_space(SPACE), TASKS)
    lr, k, temp, steps = (space[n] for n in ("train.lr", "model.sharing_depth", "train.temperature", "train.max_steps"))
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform) and (lr.lower, lr.upper) == (1e-5, 1e-3)
    assert isinstance(temp, Float) and isinstance(temp.get_sampler(), Uniform) and (temp.lower, temp.upper) == (1, 5)
    assert isinstance(k, Categorical) and k.categories == [0, 3, None]
    # randint [2, 4] includes 4: Tune's upper end is exclusive, so the domain is [2, 5)
    assert isinstance(steps, Integer) and (steps.lower, steps.upper) == (2, 5)
    assert set(steps.sample(size=200, random_state=0)) == {2, 3, 4}
    w = space["simplex:tasks.a.loss_weight"]
    assert isinstance(w, Float) and (w.lower, w.upper) == (SIMPLEX_LOW, 1.0)
    assert space["tasks.c.max_length"].categories == [16, 32]


def test_optuna_sees_randint_with_both_ends_included():
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch

    from mtl_ray.ray.searcher import tune_search_space

    dists = OptunaSearch.convert_search_space(tune_search_space(parse_space(SPACE), TASKS))
    assert (dists["train.max_steps"].low, dists["train.max_steps"].high) == (2, 4)
    assert dists["train.lr"].log and (dists["train.lr"].low, dists["train.lr"].high) == (1e-5, 1e-3)
    assert not dists["train.temperature"].log
    assert dists["model.sharing_depth"].choices == (0, 3, None)


def _params(**u: float) -> dict:
    base = {
        "train.lr": 1e-4,
        "model.sharing_depth": 3,
        "train.temperature": 2.0,
        "train.max_steps": 3.0,
        "tasks.a.max_length": 16,
        "tasks.b.max_length": 32,
        "tasks.c.max_length": 16,
    }
    return {**base, **{f"simplex:tasks.{t}.loss_weight": v for t, v in u.items()}}


def test_params_to_overrides_normalises_the_simplex():
    o = params_to_overrides(parse_space(SPACE), TASKS, _params(a=0.5, b=0.25, c=0.9))
    e = {"a": -math.log(0.5), "b": -math.log(0.25), "c": -math.log(0.9)}
    for t in TASKS:
        assert o[f"tasks.{t}.loss_weight"] == pytest.approx(3 * e[t] / sum(e.values()))
    assert sum(o[f"tasks.{t}.loss_weight"] for t in TASKS) == pytest.approx(3.0)
    assert o["tasks.b.loss_weight"] > o["tasks.a.loss_weight"] > o["tasks.c.loss_weight"]  # smaller u, larger weight
    assert o["train.max_steps"] == 3 and isinstance(o["train.max_steps"], int)
    assert (o["train.lr"], o["model.sharing_depth"], o["tasks.b.max_length"]) == (1e-4, 3, 32)
    # equal draws -> the equal-weight point (1.0 each), also at u = 1 where every -log(u) is 0
    for u in (0.3, 1.0):
        equal = params_to_overrides(parse_space(SPACE), TASKS, _params(a=u, b=u, c=u))
        assert [equal[f"tasks.{t}.loss_weight"] for t in TASKS] == pytest.approx([1.0, 1.0, 1.0])


def test_uniform_draws_give_weights_uniform_on_the_simplex():
    """With u uniform (what TPE's start-up trials draw) the weights are Dirichlet(1, 1, 1) * 3, as random
    search draws them: a weight / 3 is Beta(1, 2), P(w/3 < 0.5) = 0.75 and E[(w/3)^2] = 1/6. (Plain
    u / sum(u) would give P = 0.83 and E = 0.14.)"""
    rng = random.Random(0)
    specs = parse_space({"tasks.*.loss_weight": {"simplex": True}})
    first = []
    for _ in range(20000):
        p = {f"simplex:tasks.{t}.loss_weight": rng.uniform(SIMPLEX_LOW, 1.0) for t in TASKS}
        first.append(params_to_overrides(specs, TASKS, p)["tasks.a.loss_weight"] / 3)
    assert sum(x < 0.5 for x in first) / len(first) == pytest.approx(0.75, abs=0.01)
    assert sum(x * x for x in first) / len(first) == pytest.approx(1 / 6, abs=0.005)


def test_params_to_overrides_names_missing_parameters():
    with pytest.raises(ConfigError, match="lacks parameters simplex:tasks.a.loss_weight"):
        params_to_overrides(parse_space(SPACE), TASKS, _params(b=0.5, c=0.5))


def test_optuna_lists_only_the_fixed_trials():
    trials = build_trials(BASE, TuneConfig(search_space=SPACE, search_alg="optuna", num_samples=5), TASKS)
    assert [(t.trial_id, t.kind) for t in trials] == [
        ("single-a", "single"),
        ("single-b", "single"),
        ("single-c", "single"),
        ("default", "default"),
    ]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "tune.search_space: empty"),
        ({"train.lrr": {"uniform": [1e-4, 1e-3]}}, "tune.search_space.train.lrr: train.lrr: unknown key"),
        ({"train.lr": {"loguniform": [1e-3, 1e-5]}}, "low 0.001 > high 1e-05"),
    ],
)
def test_optuna_keeps_the_bad_input_rules(space, message):
    with pytest.raises(ConfigError) as err:
        build_trials(BASE, TuneConfig(search_space=space, search_alg="optuna"), TASKS)
    assert message in str(err.value)


def test_missing_optuna_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(ConfigError) as err:
        build_trials(BASE, TuneConfig(search_space=SPACE, search_alg="optuna"), TASKS)
    assert str(err.value) == "tune.search_alg: optuna needs the optuna package: pip install 'mtl-ray[optuna]'"
    assert str(err.value) == OPTUNA_MISSING
    assert build_trials(BASE, TuneConfig(search_space=SPACE, num_samples=2), TASKS)[-1].trial_id == "search-001"


def test_unknown_search_alg_lists_optuna():
    with pytest.raises(ConfigError, match="valid: random, grid, optuna"):
        TuneConfig(search_space=SPACE, search_alg="tpe")


def _searcher(seed: int = 0, concurrency: int = 10):
    from mtl_ray.ray.searcher import optuna_search

    cfg = TuneConfig(search_space=SPACE, search_alg="optuna", seed=seed, num_samples=4)
    fixed = build_trials(BASE, cfg, TASKS)
    return optuna_search(cfg, BASE, fixed, concurrency), fixed


def test_searcher_hands_out_fixed_trials_then_seeded_suggestions():
    pytest.importorskip("optuna")
    limiter, fixed = _searcher(seed=3)
    got = [limiter.suggest(f"t{i}") for i in range(len(fixed) + 3)]
    assert [g["trial"] for g in got[: len(fixed)]] == [t.to_dict() for t in fixed]
    assert all("search" not in g for g in got[: len(fixed)])
    searched = got[len(fixed) :]
    assert [g["trial"]["trial_id"] for g in searched] == ["search-000", "search-001", "search-002"]
    for g in searched:
        trial = TrialSpec.from_dict(g["trial"])
        assert trial.kind == "search" and trial.overrides == params_to_overrides(parse_space(SPACE), TASKS, g["search"])
        assert 1e-5 <= trial.overrides["train.lr"] <= 1e-3 and trial.overrides["train.max_steps"] in (2, 3, 4)
    # same seed -> same suggestions; another seed -> others
    again, _ = _searcher(seed=3)
    assert [again.suggest(f"t{i}") for i in range(len(fixed) + 3)][len(fixed) :] == searched
    other, _ = _searcher(seed=4)
    assert [other.suggest(f"t{i}") for i in range(len(fixed) + 3)][len(fixed) :] != searched


def test_only_search_trials_reach_optuna_and_state_round_trips():
    pytest.importorskip("optuna")
    from optuna.trial import TrialState

    limiter, fixed = _searcher()
    wrapper = limiter.searcher
    study = wrapper.searcher._ot_study
    for i in range(len(fixed) + 1):
        limiter.suggest(f"t{i}")
    limiter.on_trial_complete("t0", {"single/val/a/accuracy": 0.9})  # a baseline: not an Optuna trial
    limiter.on_trial_complete("t3", {"val/aggregate": 0.5})  # the default: not a point of the space
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    last = f"t{len(fixed)}"
    limiter.on_trial_result(last, {"val/aggregate": 0.4, "training_iteration": 1})
    limiter.on_trial_complete(last, {"val/aggregate": 0.6, "training_iteration": 2})
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.6)]
    # Tune saves the wrapper's counters apart from the searcher; a restored one numbers on
    fresh, _ = _searcher()
    fresh.searcher.set_state(wrapper.get_state())
    assert fresh.searcher.suggest("t9")["trial"]["trial_id"] == "search-001"


def test_concurrency_limiter_caps_live_trials():
    pytest.importorskip("optuna")
    limiter, fixed = _searcher(concurrency=2)
    assert limiter.suggest("t0") is not None and limiter.suggest("t1") is not None
    assert limiter.suggest("t2") is None  # two live trials: wait
    limiter.on_trial_complete("t0", {"single/val/a/accuracy": 0.9})
    assert limiter.suggest("t2")["trial"]["trial_id"] == fixed[2].trial_id


def test_every_sharing_depth_option_is_checked_against_the_encoder():
    """An adaptive search has no drawn trials to check: every option / range end of the spec is."""
    pytest.importorskip("ray")
    from mtl_ray.tuning.experiment import check_depths

    base = {**BASE, "tune": {"search_space": {"model.sharing_depth": {"choice": [0, 9]}}}}
    with pytest.raises(ConfigError, match=r"sharing_depth: 9 is outside \[0, 4\]"):
        check_depths([], base, 4)
    base["tune"]["search_space"]["model.sharing_depth"] = {"randint": [0, 4]}
    check_depths([], base, 4)
    with pytest.raises(ConfigError, match=r"sharing_depth: 4 is outside \[0, 3\]"):
        check_depths([], base, 3)
