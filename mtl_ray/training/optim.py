"""AdamW with decoupled weight decay on matrices only, and a warm-up + linear-decay schedule.

Parameter groups, always in this order (so a saved optimizer state lines up on resume):

0. ``decay``    — model parameters with ``ndim >= 2`` (Linear / embedding matrices): ``weight_decay``.
1. ``no_decay`` — model parameters with ``ndim < 2`` (biases, LayerNorm weights and biases): 0.
   Decaying these pulls LayerNorm gains towards 0 and biases towards 0 for no regularisation
   benefit (the BERT / HF Trainer convention).
2. ``weighting`` — the loss weighting's learnable parameters (uncertainty log-variances): 0, since
   decay would bias every ``s_t = log σ_t²`` towards 0, i.e. towards equal weights.

A group may be empty (e.g. ``weighting`` for static weighting); torch accepts that, and keeping the
number of groups fixed keeps checkpoints interchangeable between weightings' optimizer layouts.
Frozen parameters (``requires_grad=False``) are left out. Every group carries its ``name``.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_ray.config import TrainConfig
from mtl_ray.errors import ConfigError


def parameter_groups(model: nn.Module, weighting: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The three named AdamW groups described in the module docstring."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():  # registration order: deterministic
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    model_ids = {id(p) for p in decay + no_decay}
    weighting_params = [p for p in weighting.parameters() if p.requires_grad]
    shared = [p for p in weighting_params if id(p) in model_ids]
    if shared:
        raise ConfigError("optimizer: the loss weighting shares parameters with the model")
    return [
        {"name": "decay", "params": decay, "weight_decay": cfg.weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        {"name": "weighting", "params": weighting_params, "weight_decay": 0.0, "lr": cfg.weighting_lr or cfg.lr},
    ]


def build_optimizer(model: nn.Module, weighting: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model and the loss weighting at peak ``cfg.lr`` (the scheduler scales it)."""
    groups = parameter_groups(model, weighting, cfg)
    if not any(g["params"] for g in groups):
        raise ConfigError("optimizer: the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_steps(cfg: TrainConfig) -> int:
    """Number of linear warm-up steps: ``round(warmup_ratio * max_steps)``."""
    return int(round(cfg.warmup_ratio * cfg.max_steps))


def lr_multiplier(step: int, warmup: int, max_steps: int) -> float:
    """Factor on the peak lr after ``step`` scheduler steps.

    ``step / warmup`` during warm-up (0 at step 0, 1 at ``warmup``), then linear decay to 0 at
    ``max_steps`` (and 0 after). Same shape as HF's ``get_linear_schedule_with_warmup``.
    """
    if step < warmup:
        return step / warmup
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then linear decay; call ``scheduler.step()`` once after every ``optimizer.step()``."""
    warmup, total = warmup_steps(cfg), cfg.max_steps

    def multiplier(step: int) -> float:
        return lr_multiplier(step, warmup, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
