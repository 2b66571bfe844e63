"""Elastic training (``ray.num_workers: [1, 2]``) on two Ray nodes of this machine, each able to hold one
worker (2 CPUs per node, ``ray.cpus_per_worker: 2``):

- the run starts with 2 workers (one per node);
- after its first committed checkpoint the worker node is removed (every process SIGKILLed): Ray Train's
  elastic policy restarts the group with the 1 worker the head can hold, from the last checkpoint;
- once that worker has trained, a fresh worker node is added: the policy's resize check sees 2 workers
  fit and restarts the group with 2 workers from the (1-worker) run's latest checkpoint;
- the logged per-step losses, learning rates and loss weights equal the fixed-size run's (one process
  computing both slices of every step, which ``tests/training/test_elastic.py`` shows equals two gloo
  workers) to 1e-5, dropout on, and the final weights too; no step is lost or logged twice.

Each step sleeps 1 s while a hold file exists (``MTL_RAY_STEP_DELAY_S``), so the 1-worker phase outlasts
Ray's resize detection (its resource view refreshes every 20 s); the file is removed once the group grew.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_config_dict

from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.config import config_from_dict
from mtl_ray.ray.local_cluster import committed_checkpoints, two_node_cluster
from mtl_ray.ray.train import run_ray_training
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.driver import STEP_DELAY_ENV, STEP_DELAY_WHILE_ENV
from mtl_ray.training.run import setup_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

STEPS = 60
EVAL_EVERY = 3


def make_config(encoder: Path, files: dict, out: Path, storage: Path):
    d = tiny_config_dict(encoder, files, out, max_steps=STEPS, eval_every=EVAL_EVERY, log_every=1)
    d["train"]["num_threads"] = 1  # 2 cores on this machine
    d["ray"] = {"num_workers": [1, 2], "cpus_per_worker": 2, "max_failures": -1, "num_to_keep": 100,
                "elastic_resize_interval_s": 2.0, "storage_path": str(storage)}  # fmt: skip
    return config_from_dict(d)


def read_records(storage: Path) -> list[dict]:
    """The training-step records of the run's metrics.jsonl (being rewritten: skip a torn line)."""
    out = []
    for path in glob.glob(str(storage / "*" / "metrics.jsonl")):
        for line in Path(path).read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "val/aggregate" not in r:
                out.append(r)
    return out


class Driver:
    """Shrinks, then grows the cluster under the run; notes when each event happened (unix time)."""

    def __init__(self, nodes, storage: Path, hold: Path) -> None:
        self.nodes, self.storage, self.hold = nodes, storage, hold
        self.events: dict[str, float] = {}
        self.error: str | None = None

    def wait(self, what: str, cond, timeout: float = 240.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            time.sleep(0.1)
        self.error = f"timed out waiting for {what}"
        return None

    def run(self) -> None:
        try:
            if not self.wait("the first committed checkpoint", lambda: committed_checkpoints(str(self.storage))):
                return
            self.events["removed"] = time.time()
            self.nodes.remove_worker()
            first = self.wait(
                "a step on 1 worker", lambda: [r for r in read_records(self.storage) if r["workers"] == 1]
            )
            if not first:
                return
            self.events["first_step_on_1"] = first[0]["time"]
            # the 1-worker run commits a checkpoint of its own before the node comes back
            step = int(first[0]["step"])
            if not self.wait("a 1-worker checkpoint", lambda: any(
                int(n.split("-")[1]) >= step for n in committed_checkpoints(str(self.storage)))):  # fmt: skip
                return
            self.events["added"] = time.time()
            self.nodes.add_worker()

            def grown():
                return [r for r in read_records(self.storage) if r["workers"] == 2 and r["time"] > self.events["added"]]

            again = self.wait("a step on 2 workers again", grown)
            if again:
                self.events["first_step_on_2_again"] = again[0]["time"]
        finally:
            self.hold.unlink(missing_ok=True)  # let the run finish at full speed


def test_shrink_to_one_worker_and_grow_back_equals_the_fixed_run(
    encoder_with_dropout, tiny_task_files, tmp_path, monkeypatch
):
    storage = tmp_path / "shared-storage"
    cfg = make_config(encoder_with_dropout, tiny_task_files, tmp_path / "out", storage)
    hold = tmp_path / "hold"
    hold.write_text("slow steps while this file exists\n")
    monkeypatch.setenv(STEP_DELAY_ENV, "1.0")
    monkeypatch.setenv(STEP_DELAY_WHILE_ENV, str(hold))
    # right after the node loss Ray's resource view (refreshed every 20 s) still counts 2 workers: the first
    # restart waits for a second worker until this timeout (60 s by default), then restarts with 1
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    with two_node_cluster(num_cpus=2) as nodes:
        driver = Driver(nodes, storage, hold)
        thread = threading.Thread(target=driver.run, daemon=True)
        thread.start()
        started = time.time()
        summary = run_ray_training(cfg)
        wall = time.time() - started
        thread.join(timeout=10)
    assert driver.error is None, driver.error
    assert summary["steps"] == STEPS and summary["final_num_workers"] == 2
    assert summary["global_batch_size"] == 8 * 2 * 1

    run = Path(summary["output_dir"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "val/aggregate" not in r]
    assert [int(r["step"]) for r in steps] == list(range(1, STEPS + 1))  # none lost, none twice
    workers = [r["workers"] for r in steps]
    shrink, grow = workers.index(1), len(workers) - workers[::-1].index(1)
    assert set(workers[:shrink]) == {2} and set(workers[shrink:grow]) == {1} and set(workers[grow:]) == {2}, workers

    # the fixed-size run: one process computing both slices of every step (= two workers, unit-tested)
    setup = setup_run(cfg)
    ref = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu", data_parallel_size=2)
    for got in steps:
        want = ref.train_step()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-5), (int(got["step"]), got["workers"], key)
    state = load_checkpoint(run / f"step-{STEPS:07d}").model_state
    for name, p in ref.model.named_parameters():
        assert torch.allclose(p.detach(), state[name], atol=1e-5), name

    ev = driver.events
    report = {
        "wall_s": round(wall, 1),
        "steps_on_2_then_1_then_2": [shrink, grow - shrink, STEPS - grow],
        "shrink_recovery_s": round(ev["first_step_on_1"] - ev["removed"], 1),
        "grow_after_node_added_s": round(ev["first_step_on_2_again"] - ev["added"], 1),
    }
    print(f"\nelastic run: {json.dumps(report)}")
    (Path(os.environ.get("MTL_RAY_ELASTIC_REPORT", tmp_path / "elastic.json"))).write_text(json.dumps(report))


@pytest.fixture(scope="module")
def encoder_with_dropout(tmp_path_factory) -> Path:
    """The tiny encoder as built (dropout 0.1 in every layer; the heads add ``model.head_dropout``)."""
    from mtl_ray.testing import make_tiny_encoder

    path = make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_dropout_prob"] > 0 and config["attention_probs_dropout_prob"] > 0
    return path
