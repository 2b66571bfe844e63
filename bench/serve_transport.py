"""What it costs to move the encoder's output between deployments: pooled (n, H) vs hidden (n, T, H).

    python bench/serve_transport.py [--n 32 --hidden 384 --lengths 16 64 128 --calls 40]

No model: a Producer deployment returns an :class:`~mtl_ray.serving.parts.Encoded` of the given shape
(float32, as the encoder sends), a Consumer touches it and answers a few bytes. Measured from an
ingress-like caller, per call, median of --calls:
  via caller  await the producer, then send the arrays to the consumer (what the Gateway does)
  passed ref  hand the producer's DeploymentResponse straight to the consumer (no hop through the caller)
The k = L app sends the pooled row; an app cut at k < L sends the hidden rows (ray issue #47590).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import numpy as np
from ray import serve

from mtl_ray.serving.parts import Encoded


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Producer:
    def make(self, n: int, t: int, h: int) -> Encoded:
        if t == 0:
            return Encoded(pooled=np.ones((n, h), np.float32))
        return Encoded(hidden=np.ones((n, t, h), np.float32), attention_mask=np.ones((n, t), np.int64))


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Consumer:
    def take(self, enc: Encoded) -> int:
        return enc.nbytes


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Caller:
    def __init__(self, producer, consumer):
        self.producer, self.consumer = producer, consumer

    async def run(self, n: int, t: int, h: int, calls: int, passed: bool) -> list[float]:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            ref = self.producer.make.remote(n, t, h)
            if passed:
                await self.consumer.take.remote(ref)
            else:
                await self.consumer.take.remote(await ref)
            times.append((time.perf_counter() - start) * 1000)
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="texts per call")
    ap.add_argument("--hidden", type=int, default=384, help="H (MiniLM: 384)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 128], help="T of the hidden-state payloads")
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()

    import os

    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    )
    try:
        caller = serve.run(Caller.bind(Producer.bind(), Consumer.bind()), name="transport", route_prefix=None)
        print(f"n = {args.n} texts, H = {args.hidden}; median ms per producer->consumer call ({args.calls} calls)")
        print(f"{'payload':<28}{'MiB':>8}{'via caller':>12}{'passed ref':>12}")
        for t in [0, *args.lengths]:
            nbytes = args.n * args.hidden * 4 * max(t, 1) + (args.n * t * 8 if t else 0)
            row = []
            for passed in (False, True):
                caller.run.remote(args.n, t, args.hidden, 3, passed).result()  # warm-up
                ms = caller.run.remote(args.n, t, args.hidden, args.calls, passed).result()
                row.append(statistics.median(ms))
            label = "pooled (n, H)" if t == 0 else f"hidden (n, {t}, H) + mask"
            print(f"{label:<28}{nbytes / 2**20:>8.2f}{row[0]:>12.2f}{row[1]:>12.2f}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
