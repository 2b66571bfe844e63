"""Loss weightings against hand computations, plus state round trips for every registered method."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtl_ray.config import TrainConfig
from mtl_ray.errors import ConfigError
from mtl_ray.training.weighting import (
    WEIGHTINGS,
    DynamicWeightAverage,
    LossWeighting,
    UncertaintyWeighting,
    build_weighting,
)

TASKS = {"a": 1.0, "b": 1.0}


def losses(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(a), "b": torch.tensor(b)}


# ------------------------------------------------------------------ the matrix: every method


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_weighting_combines_subsets_and_round_trips(name):
    cfg = TrainConfig(dwa_window=2)
    w = build_weighting(name, {"a": 1.0, "b": 0.5, "c": 2.0}, cfg)
    assert isinstance(w, LossWeighting)
    assert set(w.weights()) == {"a", "b", "c"}
    for step in range(5):
        w.update(step, {"a": 1.0 / (step + 1), "b": 2.0, "c": 3.0 - 0.1 * step})
    x = torch.tensor(0.7, requires_grad=True)
    total = w.combine({"b": x * 2})  # one task present
    assert total.ndim == 0
    total.backward()
    assert x.grad is not None and x.grad != 0
    with pytest.raises(KeyError, match="unknown task"):
        w.combine({"zzz": torch.tensor(1.0)})

    params = {k: v.clone() for k, v in w.state_dict().items()}
    extra = json.loads(json.dumps(w.extra_state()))  # JSON-safe
    fresh = build_weighting(name, {"a": 1.0, "b": 0.5, "c": 2.0}, cfg)
    fresh.load_state_dict(params)
    fresh.load_extra_state(extra)
    assert fresh.weights() == pytest.approx(w.weights())
    # and both continue identically
    for m in (w, fresh):
        m.update(5, {"a": 0.1, "b": 2.5, "c": 2.0})
    probe = {"a": torch.tensor(1.3), "c": torch.tensor(0.4)}
    assert torch.equal(w.combine(probe), fresh.combine(probe))


def test_unknown_weighting_and_bad_static_weights():
    with pytest.raises(ConfigError, match="valid: static, uncertainty, dwa"):
        build_weighting("famo", TASKS, TrainConfig())
    with pytest.raises(ConfigError, match="tasks.a.loss_weight"):
        build_weighting("static", {"a": -1.0}, TrainConfig())


# ------------------------------------------------------------------ static


def test_static_is_the_weighted_sum():
    w = build_weighting("static", {"a": 2.0, "b": 0.5}, TrainConfig())
    assert w.combine(losses(1.5, 4.0)).item() == pytest.approx(2.0 * 1.5 + 0.5 * 4.0)
    assert w.combine({"b": torch.tensor(4.0)}).item() == pytest.approx(2.0)
    assert w.weights() == {"a": 2.0, "b": 0.5}
    assert list(w.parameters()) == []


# ------------------------------------------------------------------ uncertainty (Kendall et al. 2018)


def test_uncertainty_value_and_gradient_by_hand():
    w = build_weighting("uncertainty", TASKS, TrainConfig())
    assert isinstance(w, UncertaintyWeighting)
    assert torch.equal(w.log_vars.detach(), torch.zeros(2))  # s initialised to 0 -> weight 1
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -0.2]))
    total = w.combine(losses(1.0, 2.0))
    by_hand = math.exp(-0.5) * 1.0 + 0.5 + math.exp(0.2) * 2.0 - 0.2
    assert total.item() == pytest.approx(by_hand, rel=1e-6)
    total.backward()
    # dL/ds_t = -exp(-s_t) L_t + 1
    expected = torch.tensor([-math.exp(-0.5) * 1.0 + 1, -math.exp(0.2) * 2.0 + 1])
    torch.testing.assert_close(w.log_vars.grad, expected)
    assert w.weights() == pytest.approx({"a": math.exp(-0.5), "b": math.exp(0.2)})


def test_uncertainty_static_weight_scales_the_loss_term_only():
    w = build_weighting("uncertainty", {"a": 3.0, "b": 1.0}, TrainConfig())
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, 0.0]))
    assert w.combine({"a": torch.tensor(2.0)}).item() == pytest.approx(3.0 * math.exp(-0.5) * 2.0 + 0.5, rel=1e-6)
    assert w.weights()["a"] == pytest.approx(3.0 * math.exp(-0.5))


def test_uncertainty_learns_exp_s_equal_to_the_loss():
    # minimiser of exp(-s) L + s is s = log L: larger losses get smaller weights
    w = build_weighting("uncertainty", TASKS, TrainConfig())
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        w.combine(losses(0.5, 4.0)).backward()
        opt.step()
    torch.testing.assert_close(w.log_vars.detach(), torch.log(torch.tensor([0.5, 4.0])), atol=1e-3, rtol=0)


# ------------------------------------------------------------------ DWA (Liu et al. 2019)


def test_dwa_weights_over_three_windows_match_the_formula():
    cfg = TrainConfig(dwa_window=2, dwa_temperature=2.0)
    w = build_weighting("dwa", {"a": 1.0, "b": 1.0, "c": 0.5}, cfg)
    assert isinstance(w, DynamicWeightAverage)
    # window 1: a mean 4, b mean 2, c mean 1; window 2: a mean 2 (halved), b mean 2 (flat), c only 1 step
    steps = [
        {"a": 5.0, "b": 1.0, "c": 1.0},
        {"a": 3.0, "b": 3.0},
        {"a": 2.0, "b": 2.0, "c": 3.0},
        {"a": 2.0, "b": 2.0},
    ]
    for i, step_losses in enumerate(steps[:2]):
        w.update(i, step_losses)
        assert w.weights() == {"a": 1.0, "b": 1.0, "c": 0.5}  # window 1: weights 1 (times static)
    for i, step_losses in enumerate(steps[2:], start=2):
        w.update(i, step_losses)
        if i == 2:
            assert w.weights() == {"a": 1.0, "b": 1.0, "c": 0.5}  # window 2 still 1
    # after window 2: r = L(2)/L(1) = {a: 2/4, b: 2/2, c: 3/1}
    r = {"a": 0.5, "b": 1.0, "c": 3.0}
    z = sum(math.exp(v / 2.0) for v in r.values())
    lam = {t: 3 * math.exp(v / 2.0) / z for t, v in r.items()}
    got = w.weights()
    assert got["a"] == pytest.approx(lam["a"])
    assert got["b"] == pytest.approx(lam["b"])
    assert got["c"] == pytest.approx(0.5 * lam["c"])  # static weight multiplies λ
    assert sum(lam.values()) == pytest.approx(3.0)
    total = w.combine({"a": torch.tensor(2.0), "c": torch.tensor(1.0)})
    assert total.item() == pytest.approx(lam["a"] * 2.0 + 0.5 * lam["c"] * 1.0, rel=1e-6)

    # window 3: c not trained -> r_c = 1; a keeps halving, b doubles
    for i, step_losses in enumerate([{"a": 1.0, "b": 4.0}, {"a": 1.0, "b": 4.0}], start=4):
        w.update(i, step_losses)
    r = {"a": 0.5, "b": 2.0, "c": 1.0}
    z = sum(math.exp(v / 2.0) for v in r.values())
    assert w.weights()["b"] == pytest.approx(3 * math.exp(1.0) / z)
    assert w.weights()["c"] == pytest.approx(0.5 * 3 * math.exp(0.5) / z)


def test_dwa_resumes_mid_window():
    cfg = TrainConfig(dwa_window=3)
    w = build_weighting("dwa", TASKS, cfg)
    seq = [{"a": 3.0 - 0.2 * i, "b": 1.0 + 0.1 * i} for i in range(10)]
    for i in range(7):  # stop inside window 3
        w.update(i, seq[i])
    fresh = build_weighting("dwa", TASKS, cfg)
    fresh.load_extra_state(json.loads(json.dumps(w.extra_state())))
    for i in range(7, 10):
        w.update(i, seq[i])
        fresh.update(i, seq[i])
    assert fresh.weights() == w.weights()
    assert w.weights() != {"a": 1.0, "b": 1.0}
