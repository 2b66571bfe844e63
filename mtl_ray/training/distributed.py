"""Data-parallel helpers on plain ``torch.distributed`` (no Ray): the Ray layer only sets up the group.

mtl-ray does not wrap the model in DDP. Every micro-batch trains one task that all ranks agree on
(the task sampler draws from identically seeded generators), so every rank has gradients for the
same parameters; :func:`allreduce_gradients` averages exactly those in one flat bucket. Parameters
a step did not touch keep ``grad is None`` on every rank, as in a single process, so AdamW skips
them identically (DDP's zero-filled gradients for unused parameters would still move them through
momentum and weight decay, and need ``find_unused_parameters``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def allreduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` across ranks for every parameter that has one, in one flat all-reduce."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_across_ranks(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Average a dict of floats over ranks (keys must be identical on every rank)."""
    if not is_distributed():
        return dict(values)
    world = dist.get_world_size()
    return {k: v / world for k, v in sum_dict_across_ranks(values, device).items()}


def sum_dict_across_ranks(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum a dict of floats over ranks (keys must be identical on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def sum_across_ranks(value: float, device: torch.device | str = "cpu") -> float:
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def broadcast_floats(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Rank 0's ``values`` on every rank (float64, exact): decisions taken from them then agree."""
    if not is_distributed() or not values:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return [float(v) for v in t.tolist()]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def fill_missing_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Give a zero ``.grad`` to every parameter that has none here but has one on another rank.

    :func:`allreduce_gradients` flattens the gradients that exist, so every rank must hold gradients for
    the same parameters. With one task per micro-batch they do; with mixed micro-batches a rank may hold
    no example of a task that another rank trains (``training/mixed_batches.py``). One small all-reduce
    (MAX of a has-gradient flag per parameter); a no-op in one process.
    """
    if not is_distributed():
        return
    params = list(params)
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    for p, anywhere in zip(params, has.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
