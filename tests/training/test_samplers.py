"""Task samplers: empirical frequencies match the formulas, seeding and state give exact sequences."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mtl_ray.config import TrainConfig
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.training.samplers import SAMPLERS, TaskSampler, build_sampler

SIZES = {"small": 100, "medium": 1_000, "large": 10_000}
DRAWS = 20_000


def expected(name: str, cfg: TrainConfig, step: int = 0) -> dict[str, float]:
    n = {t: float(v) for t, v in SIZES.items()}
    if name == "proportional":
        w = n
    elif name in ("uniform", "balanced"):
        w = {t: 1.0 for t in n}
    else:
        if name == "temperature":
            temp = cfg.temperature
        else:
            frac = min(step / cfg.max_steps, 1.0)
            temp = cfg.anneal_start_temperature + (cfg.anneal_end_temperature - cfg.anneal_start_temperature) * frac
        w = {t: v ** (1.0 / temp) for t, v in n.items()}
    total = sum(w.values())
    return {t: v / total for t, v in w.items()}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_probabilities_match_formula_and_empirical_frequencies(name):
    cfg = TrainConfig(temperature=3.0, max_steps=100)
    sampler = build_sampler(name, SIZES, cfg, seed=0)
    assert isinstance(sampler, TaskSampler)
    probs = sampler.probabilities(0)
    assert list(probs) == sorted(SIZES)  # sorted-name order
    for t, p in expected(name, cfg).items():
        assert probs[t] == pytest.approx(p, abs=1e-12)
    counts = Counter(sampler.sample(0) for _ in range(DRAWS))
    for t, p in probs.items():
        assert abs(counts[t] / DRAWS - p) < 0.01, (t, counts[t] / DRAWS, p)


def test_formulas_by_hand():
    cfg = TrainConfig(temperature=2.0)
    sizes = {"a": 1, "b": 4, "c": 9}
    assert build_sampler("proportional", sizes, cfg, 0).probabilities(0) == pytest.approx(
        {"a": 1 / 14, "b": 4 / 14, "c": 9 / 14}
    )
    # T = 2: sqrt -> 1, 2, 3
    assert build_sampler("temperature", sizes, cfg, 0).probabilities(0) == pytest.approx(
        {"a": 1 / 6, "b": 2 / 6, "c": 3 / 6}
    )
    assert build_sampler("uniform", sizes, cfg, 0).probabilities(0) == pytest.approx({t: 1 / 3 for t in sizes})


def test_annealed_endpoints_equal_temperature_sampling():
    cfg = TrainConfig(max_steps=200, anneal_start_temperature=1.0, anneal_end_temperature=5.0)
    annealed = build_sampler("annealed", SIZES, cfg, seed=0)
    at_start = build_sampler("temperature", SIZES, TrainConfig(temperature=1.0), seed=0).probabilities(0)
    at_end = build_sampler("temperature", SIZES, TrainConfig(temperature=5.0), seed=0).probabilities(0)
    assert annealed.probabilities(0) == pytest.approx(at_start, abs=1e-12)
    assert annealed.probabilities(0) == pytest.approx(expected("proportional", cfg), abs=1e-12)
    assert annealed.probabilities(200) == pytest.approx(at_end, abs=1e-12)
    assert annealed.probabilities(10_000) == pytest.approx(at_end, abs=1e-12)  # clamped after max_steps
    assert annealed.probabilities(100) == pytest.approx(expected("annealed", cfg, step=100), abs=1e-12)  # T = 3
    # small tasks gain probability monotonically along the schedule
    small = [annealed.probabilities(s)["small"] for s in range(0, 201, 50)]
    assert small == sorted(small)


def test_annealed_exponents_and_probabilities_by_hand():
    """T(step) = 1 + (3 - 1)·step/100, p_i ∝ n_i^(1/T): sizes 1, 64 = 8² = 4³, 729 = 27² = 9³ make every root exact."""
    cfg = TrainConfig(max_steps=100, anneal_start_temperature=1.0, anneal_end_temperature=3.0)
    annealed = build_sampler("annealed", {"a": 1, "b": 64, "c": 729}, cfg, seed=0)
    by_step = {
        0: (1.0, {"a": 1 / 794, "b": 64 / 794, "c": 729 / 794}),  # exponent 1: proportional
        25: (1.5, {"a": 1 / 98, "b": 16 / 98, "c": 81 / 98}),  # exponent 2/3: 64^(2/3) = 16, 729^(2/3) = 81
        50: (2.0, {"a": 1 / 36, "b": 8 / 36, "c": 27 / 36}),  # exponent 1/2 (mid): square roots
        100: (3.0, {"a": 1 / 14, "b": 4 / 14, "c": 9 / 14}),  # exponent 1/3 (max_steps): cube roots
        400: (3.0, {"a": 1 / 14, "b": 4 / 14, "c": 9 / 14}),  # held after max_steps
    }
    for step, (temp, probs) in by_step.items():
        assert annealed.temperature(step) == pytest.approx(temp, abs=1e-12), step
        assert annealed.probabilities(step) == pytest.approx(probs, abs=1e-12), step


def test_balanced_every_block_is_a_permutation_and_counts_are_exact():
    sampler = build_sampler("balanced", SIZES, TrainConfig(), seed=4)
    draws = [sampler.sample(i) for i in range(3 * 50)]
    for b in range(50):
        assert sorted(draws[3 * b : 3 * b + 3]) == sorted(SIZES), b  # one of each task per block
    for n in range(1, len(draws) + 1):  # at every prefix, no task is more than one draw behind
        counts = Counter(draws[:n])
        assert max(counts.values()) - min(counts.get(t, 0) for t in SIZES) <= 1, n
    assert Counter(draws) == {t: 50 for t in SIZES}  # N·T draws -> exactly N each, whatever the sizes
    assert len({tuple(draws[3 * b : 3 * b + 3]) for b in range(50)}) > 1  # the order inside a block varies


def test_balanced_resumes_mid_block():
    cfg = TrainConfig()
    sampler = build_sampler("balanced", SIZES, cfg, seed=2)
    head = [sampler.sample(i) for i in range(4)]  # one full block and one draw into the second
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["position"] == 1 and sorted(state["block"]) == sorted(SIZES)
    assert state["block"][0] == head[3]
    reference = [sampler.sample(i) for i in range(4, 40)]
    fresh = build_sampler("balanced", SIZES, cfg, seed=0)
    fresh.load_state_dict(state)
    assert [fresh.sample(i) for i in range(4, 40)] == reference
    assert sorted(head[3:4] + reference[:2]) == sorted(SIZES)  # the interrupted block completes after resume
    with pytest.raises(CheckpointError, match="not a permutation"):
        fresh.load_state_dict({**state, "block": ["small", "small", "large"]})


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_sequence_on_every_rank(name):
    cfg = TrainConfig(max_steps=50)
    ranks = [build_sampler(name, SIZES, cfg, seed=7) for _ in range(2)]
    seqs = [[s.sample(i) for i in range(200)] for s in ranks]
    assert seqs[0] == seqs[1]
    other = build_sampler(name, SIZES, cfg, seed=8)
    assert [other.sample(i) for i in range(200)] != seqs[0]


def test_dict_order_of_sizes_does_not_matter():
    cfg = TrainConfig()
    a = build_sampler("temperature", SIZES, cfg, seed=3)
    b = build_sampler("temperature", dict(reversed(list(SIZES.items()))), cfg, seed=3)
    assert [a.sample(i) for i in range(100)] == [b.sample(i) for i in range(100)]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_state_round_trip_continues_identically(name):
    cfg = TrainConfig(max_steps=100)
    sampler = build_sampler(name, SIZES, cfg, seed=11)
    for i in range(37):
        sampler.sample(i)
    state = json.loads(json.dumps(sampler.state_dict()))  # JSON-safe
    reference = [sampler.sample(i) for i in range(37, 137)]
    fresh = build_sampler(name, SIZES, cfg, seed=999)  # the seed is overridden by the state
    fresh.load_state_dict(state)
    assert [fresh.sample(i) for i in range(37, 137)] == reference


def test_state_from_another_run_is_refused():
    cfg = TrainConfig()
    state = build_sampler("uniform", SIZES, cfg, 0).state_dict()
    with pytest.raises(CheckpointError, match="tasks"):
        build_sampler("uniform", {"small": 1, "large": 2}, cfg, 0).load_state_dict(state)
    with pytest.raises(CheckpointError, match="'uniform' sampler"):
        build_sampler("proportional", SIZES, cfg, 0).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -3])
def test_empty_or_negative_task_size_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="tasks.medium"):
        build_sampler("proportional", {"small": 5, "medium": bad}, TrainConfig(), 0)


def test_unknown_sampler_and_empty_sizes():
    with pytest.raises(ConfigError, match="valid: proportional"):
        build_sampler("zipf", SIZES, TrainConfig(), 0)
    with pytest.raises(ConfigError, match="no tasks"):
        build_sampler("uniform", {}, TrainConfig(), 0)
    with pytest.raises(ConfigError, match="anneal_end_temperature"):
        build_sampler("annealed", SIZES, TrainConfig(anneal_end_temperature=0.0), 0)


def test_extreme_sizes_are_stable():
    probs = build_sampler("temperature", {"a": 1, "b": 10**12}, TrainConfig(temperature=0.05), 0).probabilities(0)
    assert all(np.isfinite(list(probs.values())))
    assert sum(probs.values()) == pytest.approx(1.0)
