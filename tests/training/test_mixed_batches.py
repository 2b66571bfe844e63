"""Mixed-task micro-batches and per-task loss scaling: the allocation, the losses against a hand computation
from per-task ``model.loss`` calls, exact resume, the frozen trunk, and the errors."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import tiny_config_dict

from mtl_ray.config import TrainConfig, config_from_dict
from mtl_ray.data.tokenize import collate
from mtl_ray.errors import ConfigError
from mtl_ray.tasks.base import TaskSpec
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.checkpointing import load_for_resume, save_training_checkpoint
from mtl_ray.training.evaluation import rows
from mtl_ray.training.loss_scaling import loss_scales
from mtl_ray.training.mixed_batches import MixedBatches, allocate, rank_slice
from mtl_ray.training.run import setup_run
from mtl_ray.training.samplers import build_sampler

SIZES = {"a": 10, "b": 100, "c": 1_000}


@pytest.fixture
def cfg_of(nodrop_encoder_dir, tiny_task_files, tmp_path):
    def make(run="run", loss_weights=None, model=None, **train):
        d = tiny_config_dict(nodrop_encoder_dir, tiny_task_files, tmp_path / run, **train)
        d["model"].update(head_dropout=0.0, **(model or {}))
        for task, w in (loss_weights or {}).items():
            d["tasks"][task]["loss_weight"] = w
        return config_from_dict(d)

    return make


def trainer_of(cfg):
    setup = setup_run(cfg)
    return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id), setup


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("name", ["proportional", "annealed", "balanced"])
def test_allocation_sums_to_the_global_batch_and_is_a_function_of_seed_and_step(name):
    cfg = TrainConfig(max_steps=10)
    ranks = [build_sampler(name, SIZES, cfg, seed=3) for _ in range(2)]
    reference = build_sampler(name, SIZES, cfg, seed=3)
    for step in range(10):
        got = [allocate(s, step, 24) for s in ranks]
        assert got[0] == got[1]  # every rank computes the same mix without communicating
        assert sum(got[0].values()) == 24 and list(got[0]) == sorted(got[0])
        assert got[0] == {t: c for t, c in sorted(Counter(reference.sample(step) for _ in range(24)).items())}


def test_balanced_allocation_is_exact_when_the_batch_is_a_multiple_of_the_tasks():
    sampler = build_sampler("balanced", SIZES, TrainConfig(), seed=0)
    assert [allocate(sampler, s, 12) for s in range(5)] == [{"a": 4, "b": 4, "c": 4}] * 5
    # 4 examples over 3 tasks: the blocks carry over, so after 3 micro-batches (12 draws) every task has 4
    odd = build_sampler("balanced", SIZES, TrainConfig(), seed=0)
    total = sum((Counter(allocate(odd, s, 4)) for s in range(3)), Counter())
    assert total == {"a": 4, "b": 4, "c": 4}


def test_rank_slices_partition_the_task_chunk():
    for world in (1, 2, 3):
        for count in range(8):
            parts = [list(range(count))[rank_slice(count, r, world)] for r in range(world)]
            assert sum(parts, []) == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [rank_slice(5, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 5)]


# --------------------------------------------------------------------------- loss scaling


def spec(name, type_, labels=None):
    return TaskSpec(
        name=name,
        type=type_,
        label_names=labels,
        metrics=() if type_ == "contrastive" else (("accuracy",) if labels else ("pearson",)),
    )


def test_auto_loss_scales_by_hand():
    specs = {
        "five": spec("five", "classification", ["a", "b", "c", "d", "e"]),
        "pair": spec("pair", "pair_classification", ["same", "diff"]),
        "value": spec("value", "regression"),
        "simcse": spec("simcse", "contrastive"),
    }
    labels = {"value": [1.0, 2.0, 3.0, 4.0]}  # population variance 1.25
    got = loss_scales("auto", specs, labels.get)
    assert got == pytest.approx({"five": 1 / math.log(5), "pair": 1 / math.log(2), "simcse": 1.0, "value": 0.8})
    assert loss_scales("none", specs, labels.get) == {t: 1.0 for t in specs}


def test_auto_loss_scaling_errors_name_the_task():
    specs = {"value": spec("value", "regression")}
    with pytest.raises(ConfigError, match=r"task 'value'.*streams through Ray Data.*train.loss_scaling=none"):
        loss_scales("auto", specs, lambda t: None)
    with pytest.raises(ConfigError, match=r"task 'value' by the variance of its 3 train labels, which is 0.0"):
        loss_scales("auto", specs, lambda t: [2.0, 2.0, 2.0])
    with pytest.raises(ConfigError, match="train.loss_scaling: unknown 'log'"):
        TrainConfig(loss_scaling="log")


# --------------------------------------------------------------------------- the mixed micro-batch


def test_mixed_micro_batch_equals_per_task_model_loss_calls(cfg_of):
    """Loss = Σ_t w_t · s_t · mean loss_t over the task's examples; the gradients equal that sum's."""
    cfg = cfg_of(mixed_batches=True, loss_scaling="auto", batch_size=12, loss_weights={"sentiment": 2.0, "score": 0.5})
    trainer, setup = trainer_of(cfg)
    data, pad = setup.data, setup.tokenizer.pad_token_id
    score_labels = np.asarray(data["score"].splits["train"]["labels"], dtype=np.float64)
    scales = {"match": 1 / math.log(2), "score": 1 / score_labels.var(), "sentiment": 1 / math.log(2)}
    assert trainer.loss_scales == pytest.approx(scales)
    weights = {"match": 1.0, "score": 0.5, "sentiment": 2.0}

    trainer.model.eval()  # deterministic forward: the two computations see the same function
    sampler, streams = copy.deepcopy(trainer.sampler), copy.deepcopy(trainer.streams)
    micro = trainer.mixed.micro_batch(
        0,
        weighting=trainer.weighting,
        scales=trainer.loss_scales,
        accum=1,
        batch_of=trainer._train_batch,
        loss_of=trainer._task_loss,
    )
    mixed_grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)

    counts = allocate(sampler, 0, 12)
    assert sum(counts.values()) == 12 and len(counts) == 3, counts
    hand = torch.zeros(())
    for task, count in counts.items():
        batch = collate(rows(data[task].splits["train"], streams[task].next_global(count)), pad)
        task_loss = trainer.model.loss(task, batch)
        assert micro.losses[task] == pytest.approx(float(task_loss.detach()), rel=1e-6), (
            task
        )  # logged: unscaled mean loss
        hand = hand + weights[task] * scales[task] * task_loss
    hand.backward()
    assert micro.texts == 12
    assert micro.clip_weight == pytest.approx(np.mean([weights[t] * scales[t] for t in counts]))
    hand_grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert hand_grads.keys() == mixed_grads.keys()
    for name, g in hand_grads.items():
        assert torch.allclose(mixed_grads[name], g, atol=1e-6, rtol=1e-5), name


def test_single_task_micro_batches_apply_the_loss_scale(cfg_of):
    """In the default batch mode the scale multiplies the one task's loss: the update equals an unscaled
    run whose loss_weight is the scale (no clipping, so only the loss's scale matters)."""
    scaled, _ = trainer_of(cfg_of(run="a", loss_scaling="auto", max_grad_norm=0.0, sampler="balanced"))
    s = scaled.loss_scales
    weighted, _ = trainer_of(cfg_of(run="b", max_grad_norm=0.0, sampler="balanced", loss_weights=s))
    for _ in range(3):
        out_a, out_b = scaled.train_step(), weighted.train_step()
        assert {k: v for k, v in out_a.items() if k.startswith("loss/")} == pytest.approx(
            {k: v for k, v in out_b.items() if k.startswith("loss/")}, rel=1e-5
        )
    for (name, p), q in zip(scaled.model.named_parameters(), weighted.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_train_step_logs_every_task_of_the_mix(cfg_of):
    trainer, _ = trainer_of(cfg_of(mixed_batches=True, sampler="balanced", batch_size=9, grad_accum_steps=2))
    out = trainer.train_step()
    assert sorted(k for k in out if k.startswith("loss/")) == ["loss/match", "loss/score", "loss/sentiment"]
    assert trainer.examples_seen == 18
    assert {t: s.state_dict()["position"] for t, s in trainer.streams.items()} == {t: 6 for t in trainer.streams}


@pytest.mark.parametrize("sampler", ["annealed", "balanced"])
def test_mixed_batches_resume_exactly(cfg_of, tmp_path, sampler):
    cfg = cfg_of(mixed_batches=True, sampler=sampler, loss_scaling="auto", weighting="uncertainty", batch_size=7)
    straight, _ = trainer_of(cfg)
    for _ in range(6):
        straight.train_step()

    first, setup = trainer_of(cfg)
    for _ in range(3):
        first.train_step()
    path = save_training_checkpoint(tmp_path / "ckpt", cfg, first.model, setup.tokenizer, first.state_dict())
    resumed, _ = trainer_of(cfg)
    ckpt = load_for_resume(path)
    resumed.model.load_state_dict(ckpt.model_state)
    resumed.load_state_dict(ckpt.training_state)
    for _ in range(3):
        resumed.train_step()
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


def test_mixed_batches_on_a_frozen_trunk_train_only_the_towers(cfg_of):
    cfg = cfg_of(mixed_batches=True, freeze_shared=True, sampler="uniform", model={"sharing_depth": 1})
    trainer, _ = trainer_of(cfg)
    shared = {n: p.detach().clone() for n, p in trainer.model.shared.named_parameters()}
    towers = {n: p.detach().clone() for n, p in trainer.model.task_layers.named_parameters()}
    for _ in range(2):
        out = trainer.train_step()
    assert len([k for k in out if k.startswith("loss/")]) == 3
    for n, p in trainer.model.shared.named_parameters():
        assert torch.equal(p, shared[n]), n
    assert any(not torch.equal(p, towers[n]) for n, p in trainer.model.task_layers.named_parameters())


def test_streamed_tasks_are_refused_by_mixed_batches():
    class Streamed:  # a RowStream (Ray Data shard) hands out fixed-size batches only
        num_examples = 10

    sampler = build_sampler("uniform", {"a": 10}, TrainConfig(), 0)
    with pytest.raises(ConfigError, match=r"train.mixed_batches: tasks \['a'\] stream their train split"):
        MixedBatches(sampler, {"a": Streamed()}, 8, 0, 1, torch.device("cpu"))
