"""AdamW parameter groups and the warm-up / linear-decay schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_ray.config import TrainConfig
from mtl_ray.training.optim import build_optimizer, build_scheduler, warmup_steps
from mtl_ray.training.weighting import build_weighting


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_parameter_groups():
    cfg = TrainConfig(weight_decay=0.05, lr=1e-3)
    model = Tiny()
    weighting = build_weighting("uncertainty", {"a": 1.0, "b": 1.0}, cfg)
    opt = build_optimizer(model, weighting, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["decay", "no_decay", "weighting"]
    decay, no_decay, wgt = opt.param_groups

    def ids(group: dict) -> list[int]:
        return [id(p) for p in group["params"]]

    assert ids(decay) == [id(model.emb.weight), id(model.proj.weight)]
    assert ids(no_decay) == [id(model.proj.bias), id(model.norm.weight), id(model.norm.bias)]
    assert ids(wgt) == [id(weighting.log_vars)]
    assert (decay["weight_decay"], no_decay["weight_decay"], wgt["weight_decay"]) == (0.05, 0.0, 0.0)
    assert (decay["lr"], no_decay["lr"], wgt["lr"]) == (1e-3, 1e-3, cfg.weighting_lr)
    assert build_optimizer(model, weighting, TrainConfig(lr=1e-3, weighting_lr=None)).param_groups[2]["lr"] == 1e-3
    # frozen parameters are left out
    assert id(model.frozen.weight) not in {id(p) for g in opt.param_groups for p in g["params"]}


def test_static_weighting_keeps_an_empty_group_and_steps():
    cfg = TrainConfig()
    model = Tiny()
    opt = build_optimizer(model, build_weighting("static", {"a": 1.0}, cfg), cfg)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 3, 0]
    model.proj(torch.ones(1, 4)).sum().backward()
    opt.step()  # an empty group is fine


def _lr_after(cfg: TrainConfig, steps: int) -> float:
    opt = build_optimizer(nn.Linear(2, 2), build_weighting("static", {"a": 1.0}, cfg), cfg)
    sched = build_scheduler(opt, cfg)
    for _ in range(steps):
        opt.step()
        sched.step()
    decay, no_decay, wgt = (g["lr"] for g in opt.param_groups)
    assert decay == no_decay
    # one schedule for every group: the weighting group's lr keeps its ratio to the peak lr
    assert wgt == pytest.approx(decay * cfg.weighting_lr / cfg.lr)
    return decay


def test_schedule_warmup_then_linear_decay():
    cfg = TrainConfig(lr=1e-3, max_steps=100, warmup_ratio=0.1)
    assert warmup_steps(cfg) == 10
    assert _lr_after(cfg, 0) == 0.0
    assert _lr_after(cfg, 5) == pytest.approx(0.5e-3)
    assert _lr_after(cfg, 10) == pytest.approx(1e-3)  # end of warm-up: peak
    assert _lr_after(cfg, 55) == pytest.approx(0.5e-3)  # half-way through the decay
    assert _lr_after(cfg, 100) == 0.0
    assert _lr_after(cfg, 120) == 0.0


def test_schedule_without_warmup_and_rounding():
    cfg = TrainConfig(lr=2e-3, max_steps=50, warmup_ratio=0.0)
    assert _lr_after(cfg, 0) == pytest.approx(2e-3)
    assert _lr_after(cfg, 25) == pytest.approx(1e-3)
    assert warmup_steps(TrainConfig(max_steps=7, warmup_ratio=0.3)) == 2  # round(2.1)
