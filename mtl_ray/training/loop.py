"""The multi-task training loop in plain PyTorch: one optimizer step, evaluation, resumable state.

Ray Train (``mtl_ray/ray/train.py``) runs this same class on every worker; a single process runs it
directly (``mtl-ray train --no-ray``, tests). Distributed behaviour comes only from
``mtl_ray.training.distributed`` (plain ``torch.distributed``), which is a no-op in one process.

Per optimizer step: ``grad_accum_steps`` micro-batches, each of ONE task drawn by the task sampler
(identical on every rank), each rank taking its slice of that task's global batch; per-task losses
are combined by the loss weighting, gradients averaged across ranks, clipped, then AdamW steps.

A micro-batch's global batch is ``data_parallel_size`` slices of ``batch_size`` examples (the world size,
or ``ray.num_workers``' max when elastic). Rank r of a world of w computes a contiguous block of those
slices, one forward/backward each, so the step's gradient is the mean over the same slices whatever w
is: one worker with two slices computes what two workers with one slice each compute (see
:func:`slices_of_rank`). Dropout is seeded per (seed, step, micro-batch, slice) for the same reason
(:meth:`MultiTaskTrainer._seed_slice`; a fixed-size run without accumulation keeps the old per-rank seeds).

With ``train.mixed_batches`` a micro-batch holds examples of several tasks instead, each task's mean
loss weighted and summed (``training/mixed_batches.py``; sliced the same way). Either way each task loss
is first multiplied by its ``train.loss_scaling`` scale s_t (``training/loss_scaling.py``; 1 by default).

Clipping acts on the *unweighted* gradient: the model's gradient norm is clipped to
``max_grad_norm × w̄``, w̄ the mean loss weight (w_t · s_t) of the step's micro-batches; a mixed
micro-batch counts with the mean of w_t · s_t over the tasks it holds. With one task per
micro-batch, clipping the weighted gradient to a fixed norm would rescale every step to that norm and
erase the task's weight (on MiniLM the gradient norm is above 1 on almost every step); this way a
weight of 0.5 still halves the task's update. The weighting's own parameters are clipped on their own.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from mtl_ray.config import TrainConfig
from mtl_ray.data.tokenize import collate
from mtl_ray.device import resolve_device
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import get_task_type
from mtl_ray.training import distributed as dist_utils
from mtl_ray.training.early_stopping import Tracker
from mtl_ray.training.evaluation import evaluate_model, rows
from mtl_ray.training.frozen import FrozenTrunk
from mtl_ray.training.metrics import aggregate_score
from mtl_ray.training.mixed_batches import MixedBatches
from mtl_ray.training.samplers import TaskSampler
from mtl_ray.training.streams import TaskStream
from mtl_ray.training.task_data import TaskData
from mtl_ray.training.weighting import LossWeighting

if TYPE_CHECKING:
    from mtl_ray.training.distill import Distiller

STATE_VERSION = 1


def slices_of_rank(rank: int, world_size: int, data_parallel_size: int) -> range:
    """The slices of a global micro-batch that ``rank`` computes: a contiguous block, sizes differing by at
    most one (``data_parallel_size`` 2 on one worker: slices 0 and 1; on two workers: 0 | 1)."""
    return range(rank * data_parallel_size // world_size, (rank + 1) * data_parallel_size // world_size)


class RowStream(Protocol):
    """Training rows of one task from outside the in-memory splits, with resumable state."""

    num_examples: int  # rows per epoch (all ranks together): the task sampler's size for this task

    def next_rows(self, per_rank: int) -> list[dict[str, Any]]: ...  # this rank's next tokenized rows

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MultiTaskTrainer:
    """Runs optimizer steps and evaluations with the components it is handed (built from the config by
    :func:`mtl_ray.training.builders.build_trainer`), and owns the per-task data positions."""

    def __init__(
        self,
        tcfg: TrainConfig,
        model: MultiTaskModel,
        data: dict[str, TaskData],
        pad_token_id: int,
        *,
        weighting: LossWeighting,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        sampler: TaskSampler,
        frozen: FrozenTrunk | None = None,
        early_stopping: Tracker | None = None,
        device: torch.device | str | None = None,
        train_streams: Mapping[str, RowStream] | None = None,
        distill: Distiller | None = None,
        loss_scales: Mapping[str, float] | None = None,
        data_parallel_size: int | None = None,
    ) -> None:
        """``data_parallel_size``: slices of ``batch_size`` in a micro-batch's global batch (None: the world
        size); an elastic run passes its max workers so the global batch never changes.
        ``loss_scales``: task -> factor on its loss (``train.loss_scaling``; None: 1 for every task).
        ``train_streams``: tasks whose training rows come from a stream (e.g. a Ray Data shard) instead of
        ``data[task].splits["train"]``; their ``data`` entry holds only eval splits.
        ``frozen`` (``train.freeze_shared``): the frozen trunk that computes (or reads cached) trunk
        outputs, so a step runs only the task's own layers and head. ``distill`` (``train.distill_from``):
        the loss of the tasks it has teacher outputs for (``training/distill.py``). ``early_stopping``
        (``train.early_stopping_patience``): when ``fit`` stops and which weights it restores."""
        self.tcfg = tcfg
        self.device = torch.device(device) if device is not None else resolve_device(tcfg.device)
        self.rank, self.world_size = dist_utils.rank_and_world()
        self.data_parallel_size = data_parallel_size or self.world_size
        if self.data_parallel_size < self.world_size:
            raise ValueError(f"data_parallel_size {self.data_parallel_size} is below the world size {self.world_size}")
        if train_streams and self.data_parallel_size != self.world_size:
            raise ValueError("streamed tasks shard rows per worker: data_parallel_size must equal the world size")
        self.slices = slices_of_rank(self.rank, self.world_size, self.data_parallel_size)
        self.model = model.to(self.device)
        self.data = data
        self.pad_token_id = pad_token_id
        self.external = dict(train_streams or {})
        self.train_tasks = sorted({t for t, d in data.items() if d.size("train") > 0} | set(self.external))
        if not self.train_tasks:
            raise ValueError("no task has training data")
        sizes = {
            t: self.external[t].num_examples if t in self.external else data[t].size("train") for t in self.train_tasks
        }
        self.weighting = weighting
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.sampler = sampler
        self.frozen = frozen  # train.freeze_shared: the trunk's (cached) outputs feed the towers
        self.distill = distill  # train.distill_from: hard + soft (teacher) loss per distilled task
        self.early_stopping = early_stopping  # training/early_stopping.py
        self.streams: dict[str, TaskStream | RowStream] = {
            t: self.external.get(t) or TaskStream(t, sizes[t], self.tcfg.seed, self.rank, self.world_size)
            for t in self.train_tasks
        }
        self.loss_scales = {t: float((loss_scales or {}).get(t, 1.0)) for t in self.train_tasks}
        # train.mixed_batches: several tasks per micro-batch, allocated by the sampler (training/mixed_batches.py)
        self.mixed = (
            MixedBatches(
                sampler,
                self.streams,
                tcfg.batch_size,
                self.rank,
                self.world_size,
                self.device,
                slices=self.slices,
                data_parallel_size=self.data_parallel_size,
            )
            if tcfg.mixed_batches
            else None
        )
        # head_warmup_steps (mlm): task -> the step before which its loss trains only its head (tasks/mlm.py)
        self.head_warmup = {
            t: int(spec.options["head_warmup_steps"])
            for t, spec in model.specs.items()
            if spec.options and spec.options.get("head_warmup_steps")
        }
        self.step = 0
        self.examples_seen = 0  # global (all ranks) training examples so far
        self.use_bf16 = self.tcfg.bf16 and self.device.type == "cuda"

    # ------------------------------------------------------------------ training

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _next_slices(self, task: str) -> list[tuple[int, list[dict[str, Any]], list[int] | None]]:
        """This rank's slices of the next global micro-batch of ``task``: (slice number, ``batch_size``
        tokenized examples, their indices in the train split (None for a streamed task))."""
        b = self.tcfg.batch_size
        if task in self.external:
            return [(self.rank, self.external[task].next_rows(b), None)]
        global_idx = self.streams[task].next_global(b * self.data_parallel_size)
        out = []
        for v in self.slices:
            idx = global_idx[v * b : (v + 1) * b]
            out.append((v, rows(self.data[task].splits["train"], idx), idx))
        return out

    def _train_batch(self, task: str, indices: list[int]) -> dict[str, torch.Tensor]:
        """The collated, on-device batch of ``task``'s train rows ``indices`` (mixed micro-batches)."""
        return self._to_device(collate(rows(self.data[task].splits["train"], indices), self.pad_token_id))

    def _seed_slice(self, micro: int, slice_: int) -> None:
        """Seed torch (dropout, mlm masks) right before a slice's forward: a pure function of (seed, step,
        micro-batch, slice), so resuming needs no RNG state and a slice draws the same masks whichever rank
        of whichever world size computes it. Micro-batch 0 keeps the key ``seed:step:slice``, which in a
        fixed-size run (slice = rank) is the per-step, per-rank key of runs before elastic training: with
        ``grad_accum_steps`` 1 those runs are reproduced bit for bit (nothing draws from torch's RNG
        between the step's start and the first forward)."""
        seed, step = self.tcfg.seed, self.step
        key = f"{seed}:{step}:{slice_}" if micro == 0 else f"{seed}:{step}:{micro}:{slice_}"
        torch.manual_seed(zlib.crc32(key.encode()))

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns rank-averaged per-task losses, weights and the learning rate."""
        self.model.train()
        self.weighting.train()
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.tcfg.grad_accum_steps
        # each slice's loss / (accum × slices per world-size share): after the mean over ranks the
        # gradient is the mean over all accum × data_parallel_size slices (1 / accum at a fixed size)
        divisor = accum * self.data_parallel_size / self.world_size
        loss_sums: dict[str, float] = defaultdict(float)
        loss_counts: dict[str, float] = defaultdict(float)
        texts = 0
        weights = self.weighting.weights()
        step_weights: list[float] = []
        for micro in range(accum):
            if self.mixed is not None:  # several tasks in this micro-batch
                mixed = self.mixed.micro_batch(
                    self.step,
                    weighting=self.weighting,
                    scales=self.loss_scales,
                    accum=divisor,
                    batch_of=self._train_batch,
                    loss_of=self._task_loss,
                    seed_slice=lambda v, micro=micro: self._seed_slice(micro, v),
                )
                step_weights.append(mixed.clip_weight)
                for t, value in mixed.losses.items():  # summed over this rank's slices
                    loss_sums[t] += value
                    loss_counts[t] += mixed.slices
                texts += mixed.texts
                continue
            task = self.sampler.sample(self.step)
            loss_scale = self.loss_scales[task]
            step_weights.append(weights[task] * loss_scale)
            for slice_, examples, idx in self._next_slices(task):
                self._seed_slice(micro, slice_)
                batch = self._to_device(collate(examples, self.pad_token_id))
                task_loss = self._task_loss(task, batch, idx)  # idx: distillation's teacher rows
                total = self.weighting.combine({task: task_loss.float() * loss_scale}) / divisor
                total.backward()
                loss_sums[task] += float(task_loss.detach())
                loss_counts[task] += 1
                texts += len(examples)
        model_params = [p for p in self.model.parameters() if p.requires_grad]
        weighting_params = list(self.weighting.parameters())
        if self.mixed is not None:  # a rank may hold no example of a task another rank trained
            dist_utils.fill_missing_gradients(model_params + weighting_params)
        dist_utils.allreduce_gradients(model_params + weighting_params)
        if self.tcfg.max_grad_norm > 0:
            self._clip(model_params, self.tcfg.max_grad_norm * float(np.mean(step_weights)))
            self._clip(weighting_params, self.tcfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        # Every rank drew the same tasks, so the keys agree; the mean is over every slice of every rank.
        local = {**{f"sum/{t}": v for t, v in loss_sums.items()}, **{f"n/{t}": n for t, n in loss_counts.items()}}
        totals = dist_utils.sum_dict_across_ranks(local, self.device)
        step_losses = {t: totals[f"sum/{t}"] / totals[f"n/{t}"] for t in sorted(loss_sums)}
        self.weighting.update(self.step, step_losses)
        self.examples_seen += int(dist_utils.sum_across_ranks(texts, self.device))
        out = {"step": float(self.step), "lr": lr}
        out.update({f"loss/{t}": v for t, v in step_losses.items()})
        out.update({f"weight/{t}": w for t, w in self.weighting.weights().items()})
        if self.distill is not None:  # loss/<task>/hard and loss/<task>/soft of the distilled tasks
            out.update(self.distill.pop_metrics(self.device))
        return out

    def _task_loss(self, task: str, batch: dict[str, torch.Tensor], idx: list[int] | None = None) -> torch.Tensor:
        """Mean training loss of one task's batch (the frozen trunk's with ``train.freeze_shared``; hard +
        soft teacher loss for a distilled task whose train-split indices ``idx`` are known)."""
        with self._autocast():
            if self.step < self.head_warmup.get(task, 0):  # the head alone learns from this task's loss
                spec = self.model.specs[task]
                return get_task_type(spec.type).model_loss(self.model, task, batch, train_encoder=False)
            if self.distill is not None and idx is not None and self.distill.teaches(task):
                return self.distill.loss(task, batch, idx)  # train.distill_from
            return self.model.loss(task, batch) if self.frozen is None else self.frozen.loss(task, batch)

    @staticmethod
    def _clip(params: list[torch.nn.Parameter], max_norm: float) -> None:
        with_grad = [p for p in params if p.grad is not None]
        if with_grad and max_norm > 0:
            torch.nn.utils.clip_grad_norm_(with_grad, max_norm)

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, split: str = "validation") -> dict[str, dict[str, float]]:
        """Per-task metrics on ``split`` over the whole split (gathered across ranks)."""
        return evaluate_model(
            self.model,
            self.data,
            split,
            pad_token_id=self.pad_token_id,
            batch_size=self.tcfg.eval_batch_size,
            device=self.device,
            autocast=self._autocast(),
        )

    def aggregate(self, per_task: dict[str, dict[str, float]]) -> float:
        types = {t: self.data[t].spec.type for t in per_task}
        return aggregate_score(per_task, types)

    # ---------------------------------------------------------------- resumable state

    def state_dict(self) -> dict[str, Any]:
        state = {
            "version": STATE_VERSION,
            "step": self.step,
            "examples_seen": self.examples_seen,
            "world_size": self.world_size,  # informational: a resume at another world size is exact
            "data_parallel_size": self.data_parallel_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "streams": {t: s.state_dict() for t, s in self.streams.items()},
            "weighting": {"params": self.weighting.state_dict(), "extra": self.weighting.extra_state()},
        }
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state_dict(self.model)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ValueError(f"training state version {state.get('version')} is not {STATE_VERSION}")
        if sorted(state["streams"]) != self.train_tasks:
            raise ValueError(f"checkpoint trained tasks {sorted(state['streams'])}, this run trains {self.train_tasks}")
        self.step = int(state["step"])
        self.examples_seen = int(state["examples_seen"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        for t, s in state["streams"].items():
            self.streams[t].load_state_dict(s)
        self.weighting.load_state_dict(state["weighting"]["params"])
        self.weighting.load_extra_state(state["weighting"]["extra"])
        if self.early_stopping is not None and "early_stopping" in state:  # after the model's weights
            self.early_stopping.load_state_dict(state["early_stopping"], self.model)


def fit(
    trainer: MultiTaskTrainer,
    *,
    on_step: Callable[[dict[str, float]], None] | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    on_eval: Callable[[int, dict[str, dict[str, float]], float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run ``trainer`` to ``train.max_steps``: log every ``log_every``, evaluate every ``eval_every``
    (and at the end). ``on_eval(step, per_task_metrics, aggregate)`` is where callers checkpoint.
    With ``trainer.early_stopping`` the run may end sooner, and the best weights are restored."""
    tcfg = trainer.tcfg
    window_start = time.perf_counter()
    window_examples = trainer.examples_seen
    window_losses: dict[str, list[float]] = defaultdict(list)
    es = trainer.early_stopping
    while trainer.step < tcfg.max_steps and not (es is not None and es.finished):
        if should_stop is not None and should_stop():
            return
        metrics = trainer.train_step()
        if on_step is not None:
            on_step(metrics)
        for key, value in metrics.items():
            if key.startswith("loss/"):
                window_losses[key].append(value)
        if on_log is not None and (trainer.step % tcfg.log_every == 0 or trainer.step == tcfg.max_steps):
            # per-task loss = mean over the steps of this logging window that trained the task
            record = {k: v for k, v in metrics.items() if not k.startswith("loss/")}
            record.update({k: float(np.mean(v)) for k, v in sorted(window_losses.items())})
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            record["texts_per_s"] = (trainer.examples_seen - window_examples) / elapsed
            on_log(record)
            window_start, window_examples = time.perf_counter(), trainer.examples_seen
            window_losses.clear()
        if trainer.step % tcfg.eval_every == 0 or trainer.step == tcfg.max_steps:
            per_task = trainer.evaluate("validation")
            aggregate = trainer.aggregate(per_task)
            if es is not None:  # before on_eval: the checkpoint holds the updated counters
                es.observe(trainer.step, per_task, aggregate, trainer.model)
                if es.rewrites_final and (es.finished or trainer.step == tcfg.max_steps):
                    es.restore(trainer.model)  # per-task bests: the final checkpoint is written from them
                    per_task = trainer.evaluate("validation")
                    aggregate = trainer.aggregate(per_task)
            if on_eval is not None:
                on_eval(trainer.step, per_task, aggregate)
            window_start, window_examples = time.perf_counter(), trainer.examples_seen
    if es is not None:
        es.restore(trainer.model)  # test scoring and the caller get the best weights
