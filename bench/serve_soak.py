"""A soak at steady load: RSS and PSS of every replica of the shared app sampled every --every-s
seconds for --duration-s, non-200 answers counted.

    python bench/serve_common.py --out runs/bench-serve/ckpt      # once
    python bench/serve_soak.py --checkpoint runs/bench-serve/ckpt [--duration-s 600 --every-s 30 --warmup-s 60]

--clients clients post --texts-per-request real texts each (all 4 tasks) back to back to 127.0.0.1.
Growth is measured from the first sample after --warmup-s to the last one, per replica and in total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray import serve  # noqa: E402
from serve_common import http_load, memory_mib, start_local_serve, test_texts  # noqa: E402
from serve_memory import replicas  # noqa: E402
from serve_shared_vs_split import shared_app  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench-serve/ckpt")
    ap.add_argument("--duration-s", type=float, default=600)
    ap.add_argument("--every-s", type=float, default=30)
    ap.add_argument("--warmup-s", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--texts-per-request", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import ray

    texts = test_texts(2048)
    port = start_local_serve()
    k = args.texts_per_request
    samples: list[dict] = []
    try:
        serve.run(shared_app(str(Path(args.checkpoint).absolute()), 32, 0.01), name="soak", route_prefix="/soak")
        reps = replicas("soak")
        stop = threading.Event()
        t0 = time.monotonic()

        def sampler() -> None:
            while not stop.is_set():
                row = {"t": time.monotonic() - t0}
                row.update({name: memory_mib(r["pid"]) for name, r in reps.items()})
                samples.append(row)
                print(
                    f"t = {row['t']:5.0f} s  total PSS {sum(v['pss'] for n, v in row.items() if n != 't'):6.0f} MiB"
                    f"  RSS {sum(v['rss'] for n, v in row.items() if n != 't'):6.0f} MiB",
                    flush=True,
                )
                stop.wait(args.every_s)

        def body(i: int, j: int):
            start = (i * 977 + j * k) % (len(texts) - k)
            return {"texts": texts[start : start + k]}, k

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        res = asyncio.run(
            http_load(
                f"http://127.0.0.1:{port}/soak/v1/predict", body, concurrency=args.clients, duration_s=args.duration_s
            )
        )
        stop.set()
        thread.join(timeout=10)
    finally:
        serve.shutdown()
        ray.shutdown()

    after = [s for s in samples if s["t"] >= args.warmup_s]
    first, last = after[0], after[-1]
    print(
        f"\n{args.clients} clients x {args.duration_s:.0f} s, {k} texts/request (all 4 tasks): {res['requests']} "
        f"answered, non-200 {res['errors'] or 0}, {res['texts_per_s']:.1f} texts/s, p50 {res['p50_ms']:.0f} ms, "
        f"p99 {res['p99_ms']:.0f} ms"
    )
    print(f"growth from t = {first['t']:.0f} s to t = {last['t']:.0f} s (goal < 5 %):")
    for name in sorted(reps):
        a, b = first[name], last[name]
        print(
            f"  {name:<24} RSS {a['rss']:6.0f} -> {b['rss']:6.0f} MiB ({(b['rss'] / a['rss'] - 1) * 100:+5.1f} %)"
            f"  PSS {a['pss']:6.0f} -> {b['pss']:6.0f} MiB ({(b['pss'] / a['pss'] - 1) * 100:+5.1f} %)"
        )
    ta = {m: sum(first[n][m] for n in reps) for m in ("rss", "pss")}
    tb = {m: sum(last[n][m] for n in reps) for m in ("rss", "pss")}
    print(
        f"  {'total':<24} RSS {ta['rss']:6.0f} -> {tb['rss']:6.0f} MiB ({(tb['rss'] / ta['rss'] - 1) * 100:+5.1f} %)"
        f"  PSS {ta['pss']:6.0f} -> {tb['pss']:6.0f} MiB ({(tb['pss'] / ta['pss'] - 1) * 100:+5.1f} %)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "load": res}, indent=2))


if __name__ == "__main__":
    main()
