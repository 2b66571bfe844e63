"""Heterogeneous (mixed-task) micro-batches: ``train.mixed_batches`` (Aghajanyan et al. 2021, "Muppet").

**Allocation.** A global micro-batch holds ``G = batch_size × D`` examples, ``D`` the data-parallel size
(the world size, or ``ray.num_workers``' max in an elastic run; ``training/loop.py``). Its task mix is
``G`` consecutive draws of the task sampler at the current step (:func:`allocate`): for the
proportional / temperature / uniform / annealed samplers that is a multinomial(G, p(step)) draw, for
the balanced sampler whole permutation blocks (G a multiple of the number of tasks N: exactly G / N
per task; otherwise the block carries into the next micro-batch). The sampler is seeded identically
on every rank, so all ranks compute the same counts ``c_t`` without communicating, and its state
(already in the trainer's ``state_dict``) resumes the allocation exactly. Draws rather than a
largest-remainder rounding: rounding ``G·p_t`` never gives a task with ``G·p_t < 0.5`` an example,
while the draws give every task its expected share ``G·p_t`` and keep each sampler's guarantees.

**Rows.** Task t's ``c_t`` examples are the next ``c_t`` indices of its :class:`TaskStream` (the global
stream, identical on every rank); slice v takes the v-th of ``D`` near-equal contiguous parts
(:func:`rank_slice`), and a rank computes its block of slices (one slice per rank at a fixed size), each
seeded on its own (``seed_slice``), so the slices compute the same whichever rank holds them. One process
with ``batch_size × world_size`` (one slice) reads the same examples as a fixed-size run.

**Loss.** ``L = weighting.combine({t: s_t · L_t})`` over the tasks present, ``L_t`` the mean loss over the
task's ``c_t`` global examples and ``s_t`` its loss scale (static weighting: ``Σ_t w_t · s_t · L_t``).
Each task's sub-batch is forwarded through the model on its own (``model.loss(task, sub_batch)``, or
the frozen trunk's loss with ``train.freeze_shared``): exact and the same code as a single-task
micro-batch, at the cost of one pass of the shared layers per task present instead of one fused pass.
Slice v computes ``(n_t^v · D / c_t) × (its mean over its n_t^v examples)``, so the average of the slices'
gradients is exactly the gradient of the global mean for per-example losses (classification,
regression). A contrastive (SimCSE) loss uses in-batch negatives: as with single-task micro-batches,
each slice's negatives are its own.

A slice that holds no example of a present task still enters it into the weighting, with a zero loss
(a learnable weight's regulariser then gets the same gradient from every slice), and the loop calls
:func:`~mtl_ray.training.distributed.fill_missing_gradients` so the flat all-reduce stays aligned.

**Clipping** (``training/loop.py``): a mixed micro-batch counts with ``mean_t(w_t · s_t)`` over its tasks, so
with equal weights the summed gradient is clipped to ``max_grad_norm`` (as Muppet clips the summed loss).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl_ray.errors import ConfigError
from mtl_ray.training.samplers import TaskSampler
from mtl_ray.training.streams import TaskStream
from mtl_ray.training.weighting import LossWeighting


@dataclass(frozen=True)
class MicroBatch:
    """What one micro-batch contributed on this rank."""

    # task -> the sum over this rank's slices of each slice's (n_t^v · D / c_t)-scaled mean loss, unscaled by
    # s_t: summed over ranks and divided by D, the task's mean loss over the global micro-batch (the same keys
    # on every rank)
    losses: dict[str, float]
    clip_weight: float  # the micro-batch's weight in the clipping rule: mean over its tasks of w_t · s_t
    texts: int  # examples this rank trained on
    slices: int = 1  # slices this rank computed


def allocate(sampler: TaskSampler, step: int, global_size: int) -> dict[str, int]:
    """``{task: c_t}`` (sorted names, tasks with c_t > 0) from ``global_size`` draws of ``sampler``."""
    counts = Counter(sampler.sample(step) for _ in range(global_size))
    return {t: counts[t] for t in sorted(counts)}


def rank_slice(count: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``count`` items: the first ``count % world_size`` ranks get one more."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class MixedBatches:
    """Allocates each global micro-batch across tasks and runs its forward/backward on this rank.

    ``slices`` / ``data_parallel_size``: this rank's slices of the ``D`` slices of a micro-batch (default: the
    slice ``rank`` of ``world_size``; ``training.loop.slices_of_rank`` otherwise)."""

    def __init__(
        self,
        sampler: TaskSampler,
        streams: Mapping[str, Any],
        batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
        *,
        slices: Sequence[int] | None = None,
        data_parallel_size: int | None = None,
    ) -> None:
        streamed = sorted(t for t, s in streams.items() if not isinstance(s, TaskStream))
        if streamed:
            raise ConfigError(
                f"train.mixed_batches: tasks {streamed} stream their train split through Ray Data (ray.streaming), "
                "which hands out fixed-size batches, not the variable per-task counts of a mixed micro-batch; "
                "set train.mixed_batches=false or ray.streaming=false"
            )
        self.sampler = sampler
        self.streams: Mapping[str, TaskStream] = streams
        self.data_parallel_size = data_parallel_size or world_size
        self.slices = list(slices) if slices is not None else [rank]
        self.global_size = batch_size * self.data_parallel_size
        self.rank = rank
        self.world_size = world_size
        self.device = device

    def micro_batch(
        self,
        step: int,
        *,
        weighting: LossWeighting,
        scales: Mapping[str, float],
        accum: int,
        batch_of: Callable[[str, list[int]], dict[str, Tensor]],
        loss_of: Callable[[str, dict[str, Tensor]], Tensor],
        seed_slice: Callable[[int], None] | None = None,
    ) -> MicroBatch:
        """Draw the allocation; per slice of this rank: ``seed_slice(v)``, forward each task's sub-batch,
        backward ``combine / accum``.

        ``accum``: the divisor of each slice's combined loss (``grad_accum_steps`` at a fixed size;
        ``grad_accum_steps × D / world_size`` in general, so the mean over ranks averages all slices).
        ``batch_of(task, train_indices)``: the collated batch on the device; ``loss_of(task, batch)``: the
        task's mean loss over it.
        """
        counts = allocate(self.sampler, step, self.global_size)
        weights = weighting.weights()
        chunks = {t: self.streams[t].next_global(c) for t, c in counts.items()}  # every rank reads every chunk
        sums = dict.fromkeys(counts, 0.0)
        texts = 0
        d = self.data_parallel_size
        for v in self.slices:
            if seed_slice is not None:
                seed_slice(v)
            raw: dict[str, Tensor] = {}
            for task, count in counts.items():
                idx = chunks[task][rank_slice(count, v, d)]
                if idx:
                    share = len(idx) * d / count  # n_t^v · D / c_t
                    raw[task] = loss_of(task, batch_of(task, idx)).float() * share
                else:  # another slice holds this task's few examples
                    raw[task] = torch.zeros((), device=self.device)
                texts += len(idx)
            total = weighting.combine({t: loss * scales[t] for t, loss in raw.items()}) / accum
            total.backward()
            for t, loss in raw.items():
                sums[t] += float(loss.detach())
        return MicroBatch(
            losses=sums,
            clip_weight=float(np.mean([weights[t] * scales[t] for t in counts])),
            texts=texts,
            slices=len(self.slices),
        )
