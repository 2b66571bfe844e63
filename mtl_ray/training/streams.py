"""Per-task data positions: an endless, epoch-wise shuffled, rank-sharded stream of indices.

Each task's train split is read in a permutation that depends only on (seed, task, epoch), so
every rank computes the same permutation; a step's *global* batch is the next
``batch_size * world_size`` indices and rank r takes the r-th contiguous slice. A single process
with ``batch_size * world_size`` therefore sees exactly the same examples as the data-parallel run.
"""

from __future__ import annotations

import zlib

import numpy as np


class TaskStream:
    """Indices into one task's train split; state is (epoch, position) for exact resume."""

    def __init__(self, task: str, num_examples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_examples < 1:
            raise ValueError(f"task {task!r}: the train split is empty")
        self.task = task
        self.num_examples = num_examples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._perm: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            key = [self.seed, zlib.crc32(self.task.encode("utf-8")), self.epoch]
            self._perm = np.random.default_rng(key).permutation(self.num_examples)
        return self._perm

    def next_global(self, count: int) -> list[int]:
        """The next ``count`` indices of the global stream (wrapping into the next epoch)."""
        out: list[int] = []
        while len(out) < count:
            perm = self._permutation()
            take = min(count - len(out), self.num_examples - self.position)
            out.extend(int(i) for i in perm[self.position : self.position + take])
            self.position += take
            if self.position >= self.num_examples:
                self.epoch += 1
                self.position = 0
                self._perm = None
        return out

    def next_batch(self, per_rank: int) -> list[int]:
        """This rank's slice of the next global batch of ``per_rank * world_size`` indices."""
        global_idx = self.next_global(per_rank * self.world_size)
        return global_idx[self.rank * per_rank : (self.rank + 1) * per_rank]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(
                f"task {self.task!r}: checkpoint was trained on {state['num_examples']} examples, "
                f"the data now has {self.num_examples}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = None
