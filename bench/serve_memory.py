"""Memory of serving N = 4 tasks: the shared-encoder app (k = L: numpy heads, tokenizers-only ingress)
vs model splitting (4 single-task deployments, each a full MiniLM + head), per replica, RSS and PSS.

    python bench/serve_common.py --out runs/bench-serve/ckpt      # once
    python bench/serve_memory.py --checkpoint runs/bench-serve/ckpt [--rounds 2 --load-s 10]

Both arms are those of bench/serve_shared_vs_split.py (same ingress code, same CPU budget). Each arm is
deployed alone in one local Ray, warmed with --load-s seconds of HTTP load (8 texts per request, all
tasks), then every replica's RSS and PSS are read from /proc/<pid>/smaps_rollup; the arm is deleted
before the other is deployed (PSS depends on who else maps the same pages). Arms alternate per round.
This driver process imports torch (the app builder resolves task types), so it shares library pages
with the torch replicas of both arms; the PSS totals are the replicas' alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray import serve  # noqa: E402
from serve_common import http_load, memory_mib, start_local_serve, test_texts  # noqa: E402
from serve_shared_vs_split import shared_app, split_app  # noqa: E402

GOALS = {"head_rss": 300, "head_pss": 160, "ingress_rss": 300, "ingress_pss": 160, "pss_ratio": 0.55}


def replicas(app_name: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name in serve.status().applications[app_name].deployments:
        info = serve.get_deployment_handle(name, app_name=app_name).info.remote().result(timeout_s=30)
        out[name] = {"pid": info["pid"], "torch": info.get("torch_loaded")}
    return out


def measure(arm: str, args: argparse.Namespace, port: int, texts: list[str]) -> dict[str, Any]:
    build = shared_app if arm == "shared" else split_app
    serve.run(build(args.checkpoint, 32, 0.01), name=arm, route_prefix=f"/{arm}")

    def body(i: int, k: int):
        start = (i * 997 + k * 8) % (len(texts) - 8)
        return {"texts": texts[start : start + 8]}, 8

    load = asyncio.run(
        http_load(f"http://127.0.0.1:{port}/{arm}/v1/predict", body, concurrency=4, duration_s=args.load_s)
    )
    time.sleep(1.0)
    reps = replicas(arm)
    for r in reps.values():
        r.update(memory_mib(r["pid"]))
    serve.delete(arm)
    time.sleep(2.0)
    return {"replicas": reps, "requests": load["requests"], "errors": load["errors"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench-serve/ckpt")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--load-s", type=float, default=10.0)
    ap.add_argument("--json", default=None, help="also write all results here")
    args = ap.parse_args()
    args.checkpoint = str(Path(args.checkpoint).absolute())

    import ray

    texts = test_texts(512)
    port = start_local_serve()
    results: dict[str, list] = {"shared": [], "split": []}
    try:
        for r in range(args.rounds):
            for arm in ("shared", "split") if r % 2 == 0 else ("split", "shared"):
                res = measure(arm, args, port, texts)
                results[arm].append(res)
                pss = sum(x["pss"] for x in res["replicas"].values())
                rss = sum(x["rss"] for x in res["replicas"].values())
                print(
                    f"round {r + 1} {arm:<6} {len(res['replicas'])} replicas  PSS {pss:6.0f} MiB  RSS {rss:6.0f} MiB  "
                    f"({res['requests']} requests, errors {res['errors']})",
                    flush=True,
                )
    finally:
        serve.shutdown()
        ray.shutdown()

    def med(arm: str, name: str, key: str) -> float:
        return statistics.median(x["replicas"][name][key] for x in results[arm])

    print(f"\nper replica, median of {args.rounds} rounds (MiB)")
    print(f"{'arm':<8}{'deployment':<26}{'RSS':>8}{'PSS':>8}  torch")
    totals = {}
    for arm in ("shared", "split"):
        names = sorted(results[arm][0]["replicas"])
        for name in names:
            torch_loaded = results[arm][-1]["replicas"][name]["torch"]
            print(f"{arm:<8}{name:<26}{med(arm, name, 'rss'):>8.0f}{med(arm, name, 'pss'):>8.0f}  {torch_loaded}")
        totals[arm] = {k: sum(med(arm, n, k) for n in names) for k in ("rss", "pss")}
        print(f"{arm:<8}{'total':<26}{totals[arm]['rss']:>8.0f}{totals[arm]['pss']:>8.0f}")
    ratio = {k: totals["shared"][k] / totals["split"][k] for k in ("rss", "pss")}
    print(f"shared / split: PSS {ratio['pss']:.2f}x, RSS {ratio['rss']:.2f}x (goal PSS <= {GOALS['pss_ratio']}x)")
    heads = [n for n in results["shared"][0]["replicas"] if n.startswith("Head-")]
    head_rss = max(med("shared", n, "rss") for n in heads)
    head_pss = max(med("shared", n, "pss") for n in heads)
    print(
        f"largest head: RSS {head_rss:.0f} / PSS {head_pss:.0f} MiB (goal <= {GOALS['head_rss']} / {GOALS['head_pss']}); "
        f"ingress: RSS {med('shared', 'Ingress', 'rss'):.0f} / PSS {med('shared', 'Ingress', 'pss'):.0f} MiB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
