"""Two Ray nodes on this machine (``ray.cluster_utils.Cluster``: two raylets, each with its own CPUs and
a custom resource naming it, loopback only), the way a small real cluster behaves:

- a 2-worker run with ``ray.placement_strategy: SPREAD`` puts one worker on each node and computes what
  one process computes with a twice larger batch (to 1e-5); its checkpoints and outputs are in the
  shared storage's run folder;
- the Serve app with the encoder pinned to one node and the heads to the other answers over HTTP with
  the Predictor's numbers;
- removing the worker node mid-training (every process of it killed, as a lost machine) restarts the run
  from its last checkpoint on the surviving node, and it ends with the uninterrupted run's weights and a
  metrics log without a lost or repeated step.

The storage is a local folder: both "nodes" share this machine's filesystem, as NFS would be shared.
Token auth is off for this private test cluster (the Jobs test covers token auth).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from helpers import assert_equals_one_process, tiny_config_dict

from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.config import config_from_dict
from mtl_ray.ray.local_cluster import committed_checkpoints, free_port, two_node_cluster
from mtl_ray.ray.train import run_ray_training

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 12
EVAL_EVERY = 3


@pytest.fixture(scope="module")
def two_nodes():
    """(cluster, head node, worker node): 2 CPUs + resource ``node_a`` / ``node_b`` each."""
    with two_node_cluster(num_cpus=2) as nodes:
        yield nodes.cluster, nodes.head, nodes.worker


def make_config(encoder: Path, files: dict, out: Path, storage: Path, **ray_keys):
    d = tiny_config_dict(encoder, files, out, max_steps=STEPS, eval_every=EVAL_EVERY, log_every=1)
    d["model"]["head_dropout"] = 0.0
    d["ray"] = {"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "SPREAD", "num_to_keep": 10,
                "storage_path": str(storage), **ray_keys}  # fmt: skip
    return config_from_dict(d)


def steps_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [int(r["step"]) for r in map(json.loads, lines) if "val/aggregate" not in r]  # the training-step records


@pytest.fixture(scope="module")
def spread_run(two_nodes, nodrop_encoder_dir, tiny_task_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("spread")
    cfg = make_config(nodrop_encoder_dir, tiny_task_files, root / "out", root / "shared-storage")
    started = time.perf_counter()
    summary = run_ray_training(cfg)
    summary["driver_seconds"] = time.perf_counter() - started
    return cfg, summary


def test_spread_run_puts_one_worker_per_node_and_equals_one_process(two_nodes, spread_run):
    _, head, worker = two_nodes
    cfg, summary = spread_run
    assert sorted(summary["rank_node_ids"]) == sorted([head.node_id, worker.node_id])
    # one process, batch 16 = 8 per worker × 2 workers: the same global batches
    run = Path(summary["output_dir"])
    assert_equals_one_process(cfg, 16, STEPS, load_checkpoint(run / f"step-{STEPS:07d}").model_state)
    # everything in the shared storage's run folder
    assert run.parent == Path(cfg.ray.storage_path)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "training_curves.png", "tensorboard"} <= names
    assert {f"step-{s:07d}" for s in range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)} <= names
    assert steps_logged(run) == list(range(1, STEPS + 1))
    print(f"\n2 nodes × 1 worker: {STEPS / summary['train_seconds']:.2f} steps/s ({summary['train_seconds']:.1f} s)")


def test_serve_encoder_on_one_node_heads_on_the_other(two_nodes, tmp_path):
    import sys

    from ray import serve
    from ray.util.state import list_actors

    sys.path.insert(0, str(REPO / "tests" / "serving"))
    from serving_helpers import make_checkpoint

    from mtl_ray.predictor import Predictor
    from mtl_ray.ray.serve.app import build_app
    from mtl_ray.serving.config import serve_config_from_dict
    from mtl_ray.testing import make_tiny_encoder

    _, head, worker = two_nodes
    ckpt = make_checkpoint(tmp_path / "ck", make_tiny_encoder(tmp_path / "encoder"), sharing_depth=2)
    cfg = serve_config_from_dict(
        {
            "checkpoint": str(ckpt),
            "encoder": {"num_cpus": 0.5, "resources": {"node_a": 0.01}},
            "head": {"num_cpus": 0.25, "resources": {"node_b": 0.01}},
        }
    )
    port = free_port()
    # one proxy (on the head): two proxies of one machine would both bind 127.0.0.1:port
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg), name="two-nodes", route_prefix="/")
        replicas = {
            a.class_name.split(":")[-1]: a.node_id
            for a in list_actors(filters=[("state", "=", "ALIVE")])
            if a.class_name.startswith("ServeReplica:two-nodes:")
        }
        assert replicas["Encoder"] == head.node_id, replicas
        heads = {k: v for k, v in replicas.items() if k.startswith("Head-")}
        assert heads and set(heads.values()) == {worker.node_id}, replicas
        texts = ["good great fun film", "the worst boring plot"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"texts": texts, "tasks": ["sentiment"]}, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]["sentiment"]
        ref = Predictor.from_checkpoint(str(ckpt), device="cpu").predict(texts=texts, tasks=["sentiment"])["sentiment"]
        for a, b in zip(got, ref):
            assert a["label"] == b["label"]
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    finally:
        serve.shutdown()


def test_losing_a_node_restarts_from_the_last_checkpoint_on_the_survivor(
    two_nodes, spread_run, nodrop_encoder_dir, tiny_task_files, tmp_path
):
    """Last in the module: the worker node is gone afterwards."""
    cluster, head, worker = two_nodes
    ref_cfg, reference = spread_run
    storage = tmp_path / "shared-storage"
    cfg = make_config(nodrop_encoder_dir, tiny_task_files, tmp_path / "out", storage, max_failures=1)
    removed: dict[str, float] = {}

    def remove_worker_node_after_first_checkpoint() -> None:  # committed, not only written
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if committed_checkpoints(str(storage)):
                removed["at"] = time.time()
                cluster.remove_node(worker, allow_graceful=False)  # every process of the node, SIGKILL
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=remove_worker_node_after_first_checkpoint, daemon=True)
    watcher.start()
    summary = run_ray_training(cfg)
    watcher.join(timeout=10)

    assert "at" in removed, "the first checkpoint never appeared"
    assert summary["restored_from"] is not None, "the run finished before the node was removed"
    assert summary["steps"] == STEPS
    assert set(summary["rank_node_ids"]) == {head.node_id}  # both workers on the survivor now
    run = Path(summary["output_dir"])
    assert steps_logged(run) == list(range(1, STEPS + 1))  # no step lost, none logged twice
    ref_state = load_checkpoint(Path(reference["output_dir"]) / f"step-{STEPS:07d}").model_state
    state = load_checkpoint(run / f"step-{STEPS:07d}").model_state
    for name in ref_state:
        assert torch.allclose(ref_state[name], state[name], atol=1e-6), name
    restored_step = int(Path(summary["restored_from"]).name.split("-")[1])
    resume_s = summary["first_step_unix"] - removed["at"]
    print(f"\nnode removed; restored from step {restored_step}; first step on the survivor {resume_s:.1f} s later")
