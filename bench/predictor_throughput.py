"""In-process inference: one hard-shared MultiTaskModel (k = L) vs N single-task models (model splitting).

    python bench/predictor_throughput.py [--tasks 4 --batch-size 32 --max-length 64 --rounds 3]

Real MiniLM-L6 (pinned wheel), real RT snippets. Each arm runs in its own fresh process (so its RSS is
its own), arms alternate round by round (the machine is shared and noisy), and the script prints the
median texts/s answered for ALL N tasks, the ratio, and each arm's RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_arm(arm: str, n_tasks: int, batch_size: int, max_length: int, n_texts: int) -> dict:
    import torch

    from mtl_ray.config import DataConfig, TaskConfig
    from mtl_ray.data.sources import load_task_splits
    from mtl_ray.model.encoder import load_encoder
    from mtl_ray.model.multitask import MultiTaskModel
    from mtl_ray.predictor import Predictor
    from mtl_ray.tasks.base import TaskSpec

    torch.manual_seed(0)
    data_cfg = DataConfig()
    splits, _ = load_task_splits(TaskConfig(name="rt", source="builtin:rt_sentiment"), data_cfg)
    texts = list(splits["test"]["text"][:n_texts])
    base = rss_mib()
    specs = {
        f"task{i}": TaskSpec(
            name=f"task{i}",
            type="classification",
            label_names=("a", "b", "c"),
            metrics=("accuracy",),
            max_length=max_length,
        )
        for i in range(n_tasks)
    }
    if arm == "shared":
        encoder, tok = load_encoder("builtin:all-MiniLM-L6-v2", data_cfg.resolved_cache_dir())
        predictors = [Predictor(MultiTaskModel(encoder, specs), tok, "cpu", batch_size)]
    else:
        predictors = []
        for name, spec in specs.items():
            encoder, tok = load_encoder("builtin:all-MiniLM-L6-v2", data_cfg.resolved_cache_dir())
            predictors.append(Predictor(MultiTaskModel(encoder, {name: spec}), tok, "cpu", batch_size))
    loaded = rss_mib()
    for p in predictors:  # warm-up
        p.predict(texts=texts[:batch_size])
    start = time.perf_counter()
    for p in predictors:
        out = p.predict(texts=texts)
    elapsed = time.perf_counter() - start
    assert all(len(v) == len(texts) for v in out.values())
    params = sum(sum(x.numel() for x in p.model.parameters()) for p in predictors)
    return {
        "arm": arm,
        "texts_per_s": len(texts) / elapsed,
        "rss_mib": rss_mib(),
        "rss_model_mib": loaded - base,
        "params": params,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm, print JSON
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.tasks, args.batch_size, args.max_length, args.texts)))
        return
    results: dict[str, list[dict]] = {"shared": [], "split": []}
    for r in range(args.rounds):
        for arm in ("shared", "split") if r % 2 == 0 else ("split", "shared"):
            cmd = [
                sys.executable,
                __file__,
                "--arm",
                arm,
                "--tasks",
                str(args.tasks),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
                "--texts",
                str(args.texts),
            ]
            res = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            )
            results[arm].append(res)
            print(
                f"round {r + 1} {arm:<6} {res['texts_per_s']:7.1f} texts/s  RSS {res['rss_mib']:7.0f} MiB", flush=True
            )
    med = {a: statistics.median(x["texts_per_s"] for x in v) for a, v in results.items()}
    rss = {a: statistics.median(x["rss_mib"] for x in v) for a, v in results.items()}
    mdl = {a: statistics.median(x["rss_model_mib"] for x in v) for a, v in results.items()}
    params = {a: v[0]["params"] for a, v in results.items()}
    n = args.tasks
    print(
        f"\nN = {n} tasks, batch {args.batch_size}, max length {args.max_length}, {args.texts} texts, {args.rounds} rounds"
    )
    print(f"{'arm':<28}{'texts/s (all tasks)':>20}{'process RSS MiB':>18}{'model load MiB':>16}{'params':>14}")
    print(
        f"{'shared encoder, k = L':<28}{med['shared']:>20.1f}{rss['shared']:>18.0f}{mdl['shared']:>16.0f}{params['shared']:>14,}"
    )
    print(
        f"{f'{n} single-task models':<28}{med['split']:>20.1f}{rss['split']:>18.0f}{mdl['split']:>16.0f}{params['split']:>14,}"
    )
    print(
        f"throughput ratio shared/split: {med['shared'] / med['split']:.2f}x   "
        f"RSS ratio split/shared: {rss['split'] / rss['shared']:.2f}x   params ratio: {params['split'] / params['shared']:.2f}x"
    )


if __name__ == "__main__":
    main()
