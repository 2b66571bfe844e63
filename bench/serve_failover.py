"""A head or encoder replica killed under load: errors counted, time to recover.

    python bench/serve_common.py --out runs/bench-serve/ckpt      # once
    python bench/serve_failover.py --checkpoint runs/bench-serve/ckpt [--clients 16 --duration 60 --head-replicas 1]
    python bench/serve_failover.py --checkpoint runs/bench-serve/ckpt --kill Encoder --replicas 2

The shared-encoder app (real MiniLM, 4 tasks) takes --clients concurrent clients posting 4 texts
each (all 4 tasks) to 127.0.0.1 for --duration seconds; at the midpoint one replica of --kill
(Head-rt_sentiment by default, or Encoder) is killed with SIGKILL (a crash, not a graceful stop).
--replicas sets that deployment's replica count (--head-replicas is its old name). Two encoder
replicas get 1 CPU each (one 2-CPU replica otherwise), so both arms fit the same 4 logical CPUs. Reported: requests, non-200
answers by status, the error window (first to last failure), the time from the kill until Serve has
a healthy replica again and until answers are all 200 again. The ingress retries a call whose replica
died once (head_retries), so with 2 head replicas the survivor absorbs the failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray import serve  # noqa: E402
from serve_common import http_load, start_local_serve, test_texts  # noqa: E402

HEAD = "Head-rt_sentiment"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench-serve/ckpt")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--texts-per-request", type=int, default=4)
    ap.add_argument("--replicas", "--head-replicas", type=int, default=1, help="replicas of the killed deployment")
    ap.add_argument("--kill", default=HEAD, help="deployment whose replica is killed: Head-<task> or Encoder")
    args = ap.parse_args()

    import ray

    from mtl_ray.ray.serve.app import build_app
    from mtl_ray.serving.config import ServeConfig

    texts = test_texts(1024)
    port = start_local_serve()
    n = args.replicas
    target = args.kill
    fixed = {"min_replicas": n, "max_replicas": n}
    on_encoder = target == "Encoder"
    enc_cpus = 2.0 / n if on_encoder else 2.0
    cfg = ServeConfig(
        checkpoint=str(Path(args.checkpoint).absolute()),
        batching={"max_batch_size": 32, "max_concurrent_batches": max(1, round(enc_cpus))},
        ingress={"num_cpus": 0.5},
        encoder={"num_cpus": enc_cpus, **(fixed if on_encoder else {})},
        head={"num_cpus": 0.125, **({} if on_encoder else fixed)},
    )
    serve.run(build_app(cfg), name="mtl", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/predict"
    k = args.texts_per_request

    def body(i: int, j: int):
        start = (i * 131 + j * k) % (len(texts) - k)
        return {"texts": texts[start : start + k]}, k

    events: list[tuple[float, bool, str, float]] = []  # (end time, ok, status, latency s)
    kill_at: dict[str, float] = {}
    healthy_at: dict[str, float] = {}

    def killer() -> None:
        time.sleep(args.duration / 2)
        handle = serve.get_deployment_handle(target, app_name="mtl")
        info = handle.info.remote().result(timeout_s=30)
        kill_at["t"] = time.monotonic()
        os.kill(info["pid"], signal.SIGKILL)
        print(f"killed {target} replica {info['replica']} (pid {info['pid']})", flush=True)
        # recovered when a replica that was not killed answers, and the deployment counts n of them
        while time.monotonic() - kill_at["t"] < args.duration:
            try:
                now = handle.info.remote().result(timeout_s=2)
            except Exception:
                now = None
            dep = serve.status().applications["mtl"].deployments[target]
            if now and now["replica"] != info["replica"] and dep.replica_states.get("RUNNING", 0) >= n:
                if n == 1 or dep.status == "HEALTHY":
                    healthy_at["t"] = time.monotonic()
                    return
            time.sleep(0.2)

    try:
        asyncio.run(http_load(url, body, concurrency=args.clients, duration_s=5))  # warm-up
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        res = asyncio.run(
            http_load(
                url,
                body,
                concurrency=args.clients,
                duration_s=args.duration,
                on_result=lambda t, ok, code, latency: events.append((t, ok, code, latency)),
            )
        )
        thread.join(timeout=args.duration)
    finally:
        serve.shutdown()
        ray.shutdown()

    kill = kill_at.get("t")
    failures = [t for t, ok, _, _ in events if not ok]
    total = len(events)
    print(
        f"\n{args.clients} clients x {args.duration:.0f} s, {k} texts/request (all 4 tasks), "
        f"{n} replica(s) of {target}; one killed at t = {args.duration / 2:.0f} s"
    )
    print(
        f"requests answered: {total}; non-200: {len(failures)} {res['errors']}; "
        f"p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms"
    )
    if kill is None:
        return
    if failures:
        print(f"failed requests between {min(failures) - kill:+.2f} s and {max(failures) - kill:+.2f} s after the kill")
    if "t" in healthy_at:
        print(f"a new {target} replica answered {healthy_at['t'] - kill:.1f} s after the kill ({n} running)")
    ends = sorted(t for t, ok, _, _ in events if ok and t >= kill - 1)
    gaps = [(b - a, a) for a, b in zip(ends, ends[1:])]
    stall, stall_start = max(gaps) if gaps else (0.0, kill)
    print(f"longest time without any answer: {stall:.1f} s (from {stall_start - kill:+.1f} s after the kill)")
    worst = max((lat for t, ok, _, lat in events if t >= kill), default=0.0)
    print(f"slowest answer after the kill: {worst:.1f} s")
    timeline = []
    for second in range(-3, 13):
        lo = kill + second
        done = [ok for t, ok, _, _ in events if lo <= t < lo + 1]
        timeline.append(f"{second:+d}s:{sum(done)}/{len(done)}")
    print("answers per second around the kill (ok/all): " + " ".join(timeline))


if __name__ == "__main__":
    main()
