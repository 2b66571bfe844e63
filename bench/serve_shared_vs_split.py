"""Serving N = 4 tasks: one shared encoder (k = L) vs model splitting (4 single-task models), same CPU
budget, one local Ray, real MiniLM; plus end-to-end Serve vs the in-process Predictor at batch 32.

    python bench/serve_common.py --out runs/bench-serve/ckpt      # once
    python bench/serve_shared_vs_split.py --checkpoint runs/bench-serve/ckpt

Arms (both behind the same FastAPI ingress and Gateway: one HTTP request, tokenized once):
  shared  Ingress -> Encoder (@serve.batch, 2 CPUs) -> 4 Head deployments (pooled (n, 384) vectors cross)
  split   Ingress -> 4 SingleTaskModel deployments, each its own full MiniLM + head (@serve.batch, 0.625 CPU each)
Logical CPUs: 3.0 per arm (ingress 0.5; shared: encoder 2 + heads 4 x 0.125; split: 4 x 0.625). Each
request carries --texts-per-request texts and asks all 4 tasks; --concurrency clients post back to back
for --duration seconds against 127.0.0.1. Arms alternate per round (the machine is shared and noisy).
Replica RSS is read from /proc/<pid>/status of every replica of the arm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray import serve  # noqa: E402
from serve_common import cpu_seconds, http_load, rss_mib, start_local_serve, test_texts  # noqa: E402


@serve.deployment(name="SingleTaskModel")
class SingleTaskModel:
    """Model splitting: one task's whole model (its own encoder + head) in one replica, batched."""

    def __init__(self, checkpoint: str, task: str, max_batch_size: int, wait_s: float):
        from mtl_ray.ray.serve.deployments import _set_torch_threads
        from mtl_ray.serving.parts import EncoderPart, HeadPart

        _set_torch_threads()
        self.encoder = EncoderPart.from_checkpoint(checkpoint)
        self.head = HeadPart.from_checkpoint(checkpoint, task)
        self.run.set_max_batch_size(max_batch_size)
        self.run.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=lambda bs: sum(len(b) for b in bs))
    async def run(self, batches: list) -> list:
        def compute():
            return [self.head.predict(e) for e in self.encoder.encode(batches)]

        return await asyncio.to_thread(compute)

    async def predict(self, batch) -> list:
        return await self.run(batch)

    def info(self) -> dict:
        return {"pid": os.getpid()}


class SplitBackend:
    """Gateway backend for the split arm: 'encode' is a no-op, every task's model encodes itself."""

    def __init__(self, models: dict):
        self.models = models

    def submit_encode(self, batch):
        return batch

    async def resolve(self, batch):
        return batch

    async def predict(self, task: str, batch) -> list:
        return await self.models[task].predict.remote(batch)

    async def spec(self, task: str) -> dict:
        return {}


@serve.deployment(name="SplitIngress")
@serve.ingress()
class SplitIngress:
    def __init__(self, models: dict, checkpoint: str, max_batch_size: int, served_tasks: dict):
        from mtl_ray.serving.checkpoint_info import read_checkpoint_info
        from mtl_ray.serving.gateway import Gateway
        from mtl_ray.serving.served_task import ServedTask
        from mtl_ray.serving.text_tokenizer import CheckpointTokenizer

        info = read_checkpoint_info(checkpoint, verify=False)
        tokenizer = CheckpointTokenizer.from_dir(info.tokenizer_dir)  # the same lean ingress as the shared app
        tasks = {t: ServedTask.from_dict(d) for t, d in served_tasks.items()}
        self.gateway = Gateway(tasks, tokenizer, SplitBackend(models), max_batch_size=max_batch_size)

    def __serve_build_asgi_app__(self):
        from mtl_ray.serving.http_api import build_http_api

        return build_http_api(self.gateway)

    def info(self) -> dict:
        return {"pid": os.getpid()}


def shared_app(checkpoint: str, batch: int, wait_s: float):
    from mtl_ray.ray.serve.app import build_app
    from mtl_ray.serving.config import ServeConfig

    cfg = ServeConfig(
        checkpoint=checkpoint,
        # two single-threaded forwards at a time: the same parallel structure as the split arm's 4
        # single-threaded models, so the comparison is about how much encoding each arm does
        batching={"max_batch_size": batch, "batch_wait_timeout_s": wait_s, "max_concurrent_batches": 2},
        ingress={"num_cpus": 0.5},
        encoder={"num_cpus": 2.0},
        head={"num_cpus": 0.125},
    )
    return build_app(cfg)


def split_app(checkpoint: str, batch: int, wait_s: float):
    from mtl_ray.serving.parts import read_checkpoint_info
    from mtl_ray.serving.served_task import ServedTask

    specs = read_checkpoint_info(checkpoint, verify=False).specs
    tasks = sorted(specs)
    models = {
        t: SingleTaskModel.options(
            name=f"Model-{t}",
            ray_actor_options={"num_cpus": 0.625},
            max_ongoing_requests=64,
            logging_config={"enable_access_log": False},  # as the shared app's encoder and heads
        ).bind(checkpoint, t, batch, wait_s)
        for t in tasks
    }
    return SplitIngress.options(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64).bind(
        models, checkpoint, batch, {t: ServedTask.from_spec(s).to_dict() for t, s in specs.items()}
    )


def replica_pids(app_name: str) -> dict[str, int]:
    return {
        name: serve.get_deployment_handle(name, app_name=app_name).info.remote().result(timeout_s=30)["pid"]
        for name in serve.status().applications[app_name].deployments
    }


def measure_arm(arm: str, args: argparse.Namespace, port: int, texts: list[str]) -> dict[str, Any]:
    build = shared_app if arm == "shared" else split_app
    t0 = time.monotonic()
    serve.run(build(args.checkpoint, args.batch, args.wait_s), name=arm, route_prefix=f"/{arm}")
    deploy_s = time.monotonic() - t0
    url = f"http://127.0.0.1:{port}/{arm}/v1/predict"
    n = args.texts_per_request

    def body(i: int, k: int):
        start = ((i * 997 + k * n) % (len(texts) - n)) if len(texts) > n else 0
        return {"texts": texts[start : start + n]}, n

    asyncio.run(http_load(url, body, concurrency=args.concurrency, duration_s=args.warmup))
    pids = replica_pids(arm)
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    res = asyncio.run(http_load(url, body, concurrency=args.concurrency, duration_s=args.duration))
    res["cpu_s"] = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    res["texts_per_cpu_s"] = res["texts_per_s"] * res["elapsed_s"] / sum(res["cpu_s"].values())
    res["rss_mib"] = {k: rss_mib(p) for k, p in pids.items()}
    res["deploy_s"] = deploy_s
    res["loadavg"] = os.getloadavg()[0]
    serve.delete(arm)
    return res


def serve_vs_predictor(args: argparse.Namespace, port: int, texts: list[str]) -> dict[str, Any]:
    """Serve end to end (requests of --batch texts, all 4 tasks) vs Predictor.predict at batch --batch."""
    import torch

    from mtl_ray.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu", batch_size=args.batch)
    sample = texts[: args.batch * 8]
    by_threads = {}
    for threads in (1, 2):  # its best setting on these 2 cores (1 thread wins when the cores are contended)
        torch.set_num_threads(threads)
        predictor.predict(texts=sample[: args.batch])  # warm-up
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = predictor.predict(texts=sample)
            rates.append(len(sample) / (time.perf_counter() - t0))
        by_threads[threads] = statistics.median(rates)
    assert len(out) == 4
    torch.set_num_threads(1)

    serve.run(shared_app(args.checkpoint, args.batch, args.wait_s), name="shared", route_prefix="/shared")
    url = f"http://127.0.0.1:{port}/shared/v1/predict"

    def body(i: int, k: int):
        start = ((i + k) * args.batch) % (len(texts) - args.batch)
        return {"texts": texts[start : start + args.batch]}, args.batch

    asyncio.run(http_load(url, body, concurrency=2, duration_s=args.warmup))
    res = asyncio.run(http_load(url, body, concurrency=2, duration_s=args.duration))
    serve.delete("shared")
    return {"predictor_texts_per_s": max(by_threads.values()), "predictor_by_threads": by_threads, "serve": res}


def check_equal_to_predictor(args: argparse.Namespace, port: int, texts: list[str]) -> float:
    """Max |difference| between the shared app's answers and Predictor.predict on 32 real texts."""
    import httpx

    from mtl_ray.predictor import Predictor

    serve.run(shared_app(args.checkpoint, args.batch, args.wait_s), name="shared", route_prefix="/shared")
    got = httpx.post(f"http://127.0.0.1:{port}/shared/v1/predict", json={"texts": texts[:32]}, timeout=60).json()
    ref = Predictor.from_checkpoint(args.checkpoint, device="cpu").predict(texts=texts[:32])
    worst = 0.0
    for task, rows in ref.items():
        for a, b in zip(got["predictions"][task], rows):
            assert a.get("label") == b.get("label"), task
            for key in ("score", "value"):
                if key in b:
                    worst = max(worst, abs(a[key] - b[key]))
            for c, p in b.get("probabilities", {}).items():
                worst = max(worst, abs(a["probabilities"][c] - p))
    serve.delete("shared")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench-serve/ckpt")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--texts-per-request", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="encoder max batch (texts) and Predictor batch size")
    ap.add_argument("--wait-s", type=float, default=0.01)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-predictor", action="store_true")
    ap.add_argument("--json", default=None, help="also write all results here")
    args = ap.parse_args()
    args.checkpoint = str(Path(args.checkpoint).absolute())

    import ray

    texts = test_texts(2048)
    port = start_local_serve()
    results: dict[str, Any] = {"shared": [], "split": []}
    try:
        results["max_abs_diff_vs_predictor"] = check_equal_to_predictor(args, port, texts)
        print(f"shared app vs Predictor on 32 real texts: max |diff| {results['max_abs_diff_vs_predictor']:.2e}")
        for r in range(args.rounds):
            for arm in ("shared", "split") if r % 2 == 0 else ("split", "shared"):
                res = measure_arm(arm, args, port, texts)
                results[arm].append(res)
                print(
                    f"round {r + 1} {arm:<6} {res['texts_per_s']:7.1f} texts/s (all 4 tasks)  p50 {res['p50_ms']:6.0f} ms"
                    f"  p99 {res['p99_ms']:6.0f} ms  {res['texts_per_cpu_s']:5.1f} texts/replica-CPU-s  errors "
                    f"{res['errors']}  RSS {sum(res['rss_mib'].values()):6.0f} MiB in {len(res['rss_mib'])}  "
                    f"(deploy {res['deploy_s']:.0f} s, load avg {res['loadavg']:.1f})",
                    flush=True,
                )
        if not args.skip_predictor:
            results["serve_vs_predictor"] = svp = serve_vs_predictor(args, port, texts)
            print(
                f"batch {args.batch}: Predictor {svp['predictor_texts_per_s']:.1f} texts/s (best of 1/2 threads: "
                f"{svp['predictor_by_threads']}), Serve "
                f"{svp['serve']['texts_per_s']:.1f} texts/s -> ratio {svp['serve']['texts_per_s'] / svp['predictor_texts_per_s']:.2f}",
                flush=True,
            )
    finally:
        serve.shutdown()
        ray.shutdown()

    med = {a: statistics.median(x["texts_per_s"] for x in results[a]) for a in ("shared", "split")}
    p50 = {a: statistics.median(x["p50_ms"] for x in results[a]) for a in ("shared", "split")}
    p99 = {a: statistics.median(x["p99_ms"] for x in results[a]) for a in ("shared", "split")}
    rss = {a: results[a][-1]["rss_mib"] for a in ("shared", "split")}
    eff = {a: statistics.median(x["texts_per_cpu_s"] for x in results[a]) for a in ("shared", "split")}
    print(
        f"\nN = 4 tasks, {args.texts_per_request} texts/request, concurrency {args.concurrency}, "
        f"{args.duration:.0f} s per arm x {args.rounds} rounds, encoder batch {args.batch}"
    )
    print(f"{'arm':<30}{'texts/s (all 4)':>16}{'p50 ms':>9}{'p99 ms':>9}{'texts/CPU-s':>13}{'replica RSS MiB':>17}")
    for arm, label in (("shared", "shared encoder (k = L)"), ("split", "4 single-task models")):
        print(
            f"{label:<30}{med[arm]:>16.1f}{p50[arm]:>9.0f}{p99[arm]:>9.0f}{eff[arm]:>13.1f}{sum(rss[arm].values()):>17.0f}"
        )
    print(
        f"throughput ratio shared/split: {med['shared'] / med['split']:.2f}x   "
        f"texts per replica-CPU-second ratio: {eff['shared'] / eff['split']:.2f}x   "
        f"RSS ratio split/shared: {sum(rss['split'].values()) / sum(rss['shared'].values()):.2f}x"
    )
    for arm in ("shared", "split"):
        print(f"  {arm} replicas: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss[arm].items())))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
