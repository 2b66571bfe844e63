"""Two Ray nodes on one machine: training speed with one worker per node vs both on one node, and how
long the survivor takes to resume after the other node is lost.

    python bench/two_nodes.py [--steps 30 --rounds 2 --batch-size 16]

One two-node cluster (``mtl_ray.ray.local_cluster``: 2 CPUs per node, on this one 2-core machine), the
real MiniLM and data slices of ``bench/ray_train_overhead.py`` (rt_sentiment + tweet_valence, k = 4),
2 workers × 1 CPU, global batch ``--batch-size``; arms alternate round by round (the machine is shared):

  1-node   ray.placement_strategy=PACK: both workers on one node (checked by node id)
  2-node   ray.placement_strategy=SPREAD: one worker on each node (checked)

Prints steady-state texts/s (mean of the logging windows after the first) and steps/s over the whole
fit (evaluations included), median over rounds. No speed-up is expected: both "nodes" share the same
2 cores, and the two-node arm pays for gloo over TCP between raylets. Then one node-loss run
(SPREAD, ray.max_failures=1): the worker node is SIGKILLed as soon as the first checkpoint exists;
prints the seconds from the kill to the first optimizer step of the restarted attempt on the survivor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: bind 127.0.0.1

from ray_train_overhead import bench_config, throughput  # noqa: E402


def arm_config(out: Path, steps: int, batch_size: int, strategy: str, **ray_keys: Any) -> Any:
    from mtl_ray.config import config_from_dict, config_to_dict

    d = config_to_dict(bench_config(out, steps, batch_size, workers=2, threads=1))
    d["train"]["eval_every"] = max(1, steps // 3)
    d["ray"].update(placement_strategy=strategy, storage_path=str(out / "storage"), **ray_keys)
    return config_from_dict(d)


def run_arm(nodes: Any, out: Path, steps: int, batch_size: int, strategy: str) -> dict[str, float]:
    from mtl_ray.ray.train import run_ray_training

    summary = run_ray_training(arm_config(out, steps, batch_size, strategy))
    placed = set(summary["rank_node_ids"])
    expected = 2 if strategy == "SPREAD" else 1
    assert len(placed) == expected, f"{strategy}: workers on {len(placed)} node(s), expected {expected}"
    return {
        **throughput(summary_history(summary)),
        "steps_per_s": summary["steps"] / summary["train_seconds"],
        "wall_s": summary["wall_seconds"],
    }


def summary_history(summary: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    path = Path(summary["output_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def node_loss(nodes: Any, out: Path, steps: int, batch_size: int) -> dict[str, float]:
    from mtl_ray.ray.train import run_ray_training

    cfg = arm_config(out, steps, batch_size, "SPREAD", max_failures=1)
    storage = Path(cfg.ray.storage_path)
    removed: dict[str, float] = {}

    def kill_after_first_checkpoint() -> None:
        from mtl_ray.ray.local_cluster import committed_checkpoints

        while not committed_checkpoints(str(storage)):
            time.sleep(0.05)
        removed["at"] = time.time()
        nodes.remove_worker()

    threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
    summary = run_ray_training(cfg)
    assert summary["restored_from"], "the run ended before the node was lost"
    return {
        "restored_step": int(Path(summary["restored_from"]).name.split("-")[1]),
        "resume_s": summary["first_step_unix"] - removed["at"],
        "wall_s": summary["wall_seconds"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2, help="0: only the node-loss run")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    from mtl_ray.ray.local_cluster import two_node_cluster

    results: dict[str, list[dict[str, float]]] = {"1-node": [], "2-node": []}
    with tempfile.TemporaryDirectory(prefix="bench-2n-") as tmp, two_node_cluster(num_cpus=2) as nodes:
        root = Path(tmp)
        for r in range(args.rounds):
            for arm, strategy in (("1-node", "PACK"), ("2-node", "SPREAD")):
                res = run_arm(nodes, root / f"{arm}-{r}", args.steps, args.batch_size, strategy)
                results[arm].append(res)
                print(f"round {r} {arm}: {res}", flush=True)
        loss = node_loss(nodes, root / "node-loss", args.steps, args.batch_size)

    print(f"\n{'arm':<8}{'texts/s med':>12}{'steps/s med':>12}{'wall s med':>11}")
    med = {}
    for arm, rs in results.items() if args.rounds else ():
        med[arm] = {k: statistics.median(r[k] for r in rs) for k in ("texts_per_s", "steps_per_s", "wall_s")}
        m = med[arm]
        print(f"{arm:<8}{m['texts_per_s']:>12.1f}{m['steps_per_s']:>12.2f}{m['wall_s']:>11.1f}")
    if med:
        print(f"2-node / 1-node texts/s: {med['2-node']['texts_per_s'] / med['1-node']['texts_per_s']:.3f}")
    print(
        f"node loss: restored from step {loss['restored_step']}, first step on the survivor "
        f"{loss['resume_s']:.1f} s after the kill (run wall {loss['wall_s']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
