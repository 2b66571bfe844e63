"""Task samplers: which task each micro-batch (or each example of a mixed micro-batch) trains.

A sampler decides which task each micro-batch trains (with ``train.mixed_batches``, which task each
example of a micro-batch belongs to: ``mtl_ray/training/mixed_batches.py``). A sampler turns the train-split sizes ``n_i`` into a
distribution over tasks (possibly changing with the optimizer step) and draws from it with a
``numpy.random.Generator(PCG64(seed))``. Two properties the training loop relies on:

* **Rank agreement.** Every data-parallel rank builds its sampler with the same seed and calls
  :meth:`TaskSampler.sample` once per micro-batch, so all ranks draw the same task sequence without
  communicating (each rank then takes its own slice of that task's global batch).
* **Exact resume.** The generator's ``bit_generator.state`` is part of :meth:`TaskSampler.state_dict`
  (JSON-safe: the 128-bit PCG64 words are stored as decimal strings), so save -> restore continues
  the very same sequence.

Each draw consumes exactly one uniform from the generator whatever the probabilities are, so the
sequence depends only on the seed and the number of draws (the balanced sampler instead draws one
permutation per block of N draws, and stores its place in the block). Tasks are keyed by name and always
iterated in sorted-name order, so the dict order of ``sizes`` never matters.

Adding a sampler: one class with ``probabilities(step)`` and ``from_config(sizes, cfg, seed)`` that
delegates drawing and state to :class:`SeededTaskDraw`, plus one line in :data:`SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mtl_ray.config import TrainConfig
from mtl_ray.errors import CheckpointError, ConfigError


@runtime_checkable
class TaskSampler(Protocol):
    """Chooses the task of every micro-batch."""

    name: str

    def probabilities(self, step: int) -> dict[str, float]:
        """Sampling distribution at optimizer step ``step`` (sorted task names -> p, sums to 1)."""
        ...

    def sample(self, step: int) -> str:
        """Draw the task of the next micro-batch (advances the generator by one draw)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state (the generator state) for exact resume."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next draws continue the saved sequence."""
        ...


# --------------------------------------------------------------------------- shared pieces


def _check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    """Validated copy of ``sizes`` in sorted-name order."""
    if not sizes:
        raise ConfigError("sampler: no tasks to sample from (sizes is empty)")
    out: dict[str, int] = {}
    for task in sorted(sizes):
        n = sizes[task]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ConfigError(
                f"tasks.{task}: the train split must hold at least one example to be sampled, got size {n!r}"
            )
        out[task] = int(n)
    return out


def _temperature_probs(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    """p_i ∝ n_i^(1/T), computed as a softmax of log(n_i)/T (stable for any n_i and T)."""
    names = list(sizes)
    logits = np.log(np.array([sizes[t] for t in names], dtype=np.float64)) / temperature
    logits -= logits.max()
    weights = np.exp(logits)
    probs = weights / weights.sum()
    return {t: float(p) for t, p in zip(names, probs)}


class SeededTaskDraw:
    """A PCG64 generator that draws task names from given probabilities; its state is JSON-safe."""

    def __init__(self, tasks: list[str], seed: int) -> None:
        self.tasks = list(tasks)
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def draw(self, probs: Mapping[str, float]) -> str:
        # Inverse-CDF with one uniform per draw: the generator advances by the same amount whatever
        # the probabilities are, so annealing never desynchronises ranks or resumed runs.
        cdf = np.cumsum([probs[t] for t in self.tasks])
        u = self._rng.random() * cdf[-1]
        idx = int(np.searchsorted(cdf, u, side="right"))
        return self.tasks[min(idx, len(self.tasks) - 1)]

    def permutation(self) -> list[str]:
        """The tasks in a random order (advances the generator by one permutation)."""
        return [self.tasks[int(i)] for i in self._rng.permutation(len(self.tasks))]

    def state_dict(self) -> dict[str, Any]:
        st = self._rng.bit_generator.state
        return {
            "tasks": list(self.tasks),
            "seed": self.seed,
            "bit_generator": st["bit_generator"],
            # 128-bit integers: strings so that every JSON reader (not only Python's) keeps them exact
            "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]),
            "uinteger": int(st["uinteger"]),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved_tasks = list(state.get("tasks", self.tasks))
        if saved_tasks != self.tasks:
            raise CheckpointError(f"sampler state: saved for tasks {saved_tasks}, but this run has tasks {self.tasks}")
        if state.get("bit_generator") != "PCG64":
            raise CheckpointError(f"sampler state: expected a PCG64 generator, got {state.get('bit_generator')!r}")
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }


# --------------------------------------------------------------------------- samplers


class _FixedDistributionSampler:
    """Shared body of the samplers whose distribution does not depend on the step."""

    name = ""

    def __init__(self, probs: dict[str, float], seed: int) -> None:
        self._probs = probs
        self._draw = SeededTaskDraw(list(probs), seed)

    @classmethod
    def from_config(cls, sizes: Mapping[str, int], cfg: TrainConfig, seed: int) -> _FixedDistributionSampler:
        return cls(sizes, seed)  # type: ignore[call-arg]

    def probabilities(self, step: int) -> dict[str, float]:
        return dict(self._probs)

    def sample(self, step: int) -> str:
        return self._draw.draw(self._probs)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.name, **self._draw.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_sampler_name(state, self.name)
        self._draw.load_state_dict(state)


def _check_sampler_name(state: Mapping[str, Any], name: str) -> None:
    saved = state.get("sampler", name)
    if saved != name:
        raise CheckpointError(f"sampler state: saved by the {saved!r} sampler, but this run uses {name!r}")


class ProportionalSampler(_FixedDistributionSampler):
    """p_i ∝ n_i: every training example is equally likely to be seen (large tasks dominate)."""

    name = "proportional"

    def __init__(self, sizes: Mapping[str, int], seed: int) -> None:
        sizes = _check_sizes(sizes)
        total = sum(sizes.values())
        super().__init__({t: n / total for t, n in sizes.items()}, seed)


class TemperatureSampler(_FixedDistributionSampler):
    """p_i ∝ n_i^(1/T) (T = 1 proportional, T -> ∞ uniform); as in multilingual BERT/T5/XLM-R."""

    name = "temperature"

    def __init__(self, sizes: Mapping[str, int], seed: int, temperature: float) -> None:
        if temperature <= 0:
            raise ConfigError(f"train.temperature: must be > 0, got {temperature}")
        super().__init__(_temperature_probs(_check_sizes(sizes), temperature), seed)

    @classmethod
    def from_config(cls, sizes: Mapping[str, int], cfg: TrainConfig, seed: int) -> TemperatureSampler:
        return cls(sizes, seed, cfg.temperature)


class UniformSampler(_FixedDistributionSampler):
    """p_i = 1/N: every task equally often, whatever its size (small tasks are revisited most)."""

    name = "uniform"

    def __init__(self, sizes: Mapping[str, int], seed: int) -> None:
        sizes = _check_sizes(sizes)
        super().__init__({t: 1.0 / len(sizes) for t in sizes}, seed)


class AnnealedSampler:
    """Temperature sampling whose temperature moves linearly with the optimizer step.

    ``T(step) = T0 + (T1 - T0) * min(step / max_steps, 1)`` and ``p_i ∝ n_i^(1/T(step))``, with
    ``T0 = train.anneal_start_temperature`` and ``T1 = train.anneal_end_temperature``. The default
    1 -> 5 starts proportional and ends close to uniform, so small tasks get more attention late in
    training, when large tasks have been mostly learned.

    This is the family of Stickland & Murray 2019 ("BERT and PALs", annealed sampling), who use
    ``p_i ∝ n_i^α`` with ``α = 1 − 0.8·(e − 1)/(E − 1)`` over epochs e = 1..E: with ``α = 1/T``
    their endpoints α = 1 -> 0.2 are exactly our default T = 1 -> 5. They interpolate α linearly
    per epoch; we interpolate T linearly per step (same endpoints, a slightly different path).
    """

    name = "annealed"

    def __init__(
        self, sizes: Mapping[str, int], seed: int, start_temperature: float, end_temperature: float, max_steps: int
    ) -> None:
        for key, value in (
            ("anneal_start_temperature", start_temperature),
            ("anneal_end_temperature", end_temperature),
        ):
            if value <= 0:
                raise ConfigError(f"train.{key}: must be > 0, got {value}")
        if max_steps < 1:
            raise ConfigError(f"train.max_steps: must be >= 1, got {max_steps}")
        self._sizes = _check_sizes(sizes)
        self.start_temperature = float(start_temperature)
        self.end_temperature = float(end_temperature)
        self.max_steps = int(max_steps)
        self._draw = SeededTaskDraw(list(self._sizes), seed)

    @classmethod
    def from_config(cls, sizes: Mapping[str, int], cfg: TrainConfig, seed: int) -> AnnealedSampler:
        return cls(sizes, seed, cfg.anneal_start_temperature, cfg.anneal_end_temperature, cfg.max_steps)

    def temperature(self, step: int) -> float:
        frac = min(max(step, 0) / self.max_steps, 1.0)
        return self.start_temperature + (self.end_temperature - self.start_temperature) * frac

    def probabilities(self, step: int) -> dict[str, float]:
        return _temperature_probs(self._sizes, self.temperature(step))

    def sample(self, step: int) -> str:
        return self._draw.draw(self.probabilities(step))

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.name, **self._draw.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_sampler_name(state, self.name)
        self._draw.load_state_dict(state)


class BalancedSampler:
    """Every consecutive block of N draws (N = number of tasks) is a seeded random permutation of the tasks.

    After ``m·N`` draws every task has been drawn exactly ``m`` times, and at any point no two tasks'
    counts differ by more than 1: one micro-batch per task per block (with ``train.mixed_batches``, one
    example per task per block). This is the guarantee an equal-compute comparison needs: with
    ``N·S`` optimizer steps (one micro-batch each), every task gets exactly the ``S`` updates of its
    single-task model. ``probabilities`` reports the long-run frequency 1/N; the order inside a block
    is random so that no task always comes last before an evaluation.

    State: the generator, the current block and the position inside it (``position == N``: the block is
    used up, the next draw starts a new one).
    """

    name = "balanced"

    def __init__(self, sizes: Mapping[str, int], seed: int) -> None:
        self._tasks = list(_check_sizes(sizes))
        self._draw = SeededTaskDraw(self._tasks, seed)
        self._block: list[str] = []
        self._position = 0

    @classmethod
    def from_config(cls, sizes: Mapping[str, int], cfg: TrainConfig, seed: int) -> BalancedSampler:
        return cls(sizes, seed)

    def probabilities(self, step: int) -> dict[str, float]:
        return {t: 1.0 / len(self._tasks) for t in self._tasks}

    def sample(self, step: int) -> str:
        if self._position >= len(self._block):
            self._block, self._position = self._draw.permutation(), 0
        task = self._block[self._position]
        self._position += 1
        return task

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.name, **self._draw.state_dict(), "block": list(self._block), "position": self._position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_sampler_name(state, self.name)
        block, position = list(state.get("block", [])), int(state.get("position", 0))
        if (block and sorted(block) != self._tasks) or not 0 <= position <= len(block):
            raise CheckpointError(
                f"sampler state: balanced block {block} at position {position} is not a permutation of {self._tasks}"
            )
        self._draw.load_state_dict(state)
        self._block, self._position = block, position


SAMPLERS: dict[str, type] = {
    "proportional": ProportionalSampler,
    "temperature": TemperatureSampler,
    "uniform": UniformSampler,
    "annealed": AnnealedSampler,
    "balanced": BalancedSampler,
}


def build_sampler(name: str, sizes: Mapping[str, int], cfg: TrainConfig, seed: int) -> TaskSampler:
    """The sampler ``name`` over train-split ``sizes`` (task -> examples), configured from ``cfg``.

    Pass the same ``seed`` on every data-parallel rank (e.g. ``cfg.seed``), never a rank-dependent one.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"train.sampler: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name].from_config(sizes, cfg, seed)
