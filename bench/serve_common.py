"""Shared by the serving benchmarks: a real 4-task MiniLM checkpoint and a bounded HTTP load generator.

    python bench/serve_common.py --out runs/bench-serve/ckpt     # builds the checkpoint (≈2-3 min on 2 cores)

The checkpoint is the pinned all-MiniLM-L6-v2 (k = L = 6, mean pooling) with four real single-text
tasks — rt_sentiment (2 classes), bbc_topic (5), tweet_sentiment (3), tweet_valence (regression) —
whose heads are linear probes fitted on frozen pooled vectors of a train slice (no encoder
fine-tuning: 2 CPU cores cannot fine-tune four tasks in benchmark time). Heads are real and their
test-split scores are meaningful, so precision deltas (fp32 / bf16 / int8) are measured on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

TASKS = {
    "rt_sentiment": {"type": "classification", "source": "builtin:rt_sentiment"},
    "bbc_topic": {"type": "classification", "source": "builtin:bbc_topic"},
    "tweet_sentiment": {"type": "classification", "source": "builtin:tweet_sentiment"},
    "tweet_valence": {"type": "regression", "source": "builtin:tweet_valence"},
}
MAX_LENGTH = 64
ENCODER = "builtin:all-MiniLM-L6-v2"


def bench_config(out_dir: Path, train_examples: int, eval_examples: int):
    from mtl_ray.config import config_from_dict

    tasks = {
        name: {**t, "max_length": MAX_LENGTH, "max_train_examples": train_examples, "max_eval_examples": eval_examples}
        for name, t in TASKS.items()
    }
    return config_from_dict(
        {"tasks": tasks, "model": {"encoder": ENCODER}, "train": {"output_dir": str(out_dir), "device": "cpu"}}
    )


def _pooled(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 64):
    import torch

    from mtl_ray.data.tokenize import collate

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=MAX_LENGTH)
            feats = [{k: enc[k][j] for k in enc} for j in range(len(enc["input_ids"]))]
            b = collate(feats, tokenizer.pad_token_id)
            hidden = model.encode_shared(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            out.append(model.pool(hidden, b["attention_mask"]))
    return torch.cat(out)  # (N, H)


def _fit_head(head: Any, x, y, classification: bool, steps: int = 300) -> None:
    """Fit the head's Linear on fixed features (full-batch LBFGS, light L2)."""
    import torch
    import torch.nn.functional as F

    proj = head.proj
    mean, std = (y.mean(), y.std()) if not classification else (0.0, 1.0)
    opt = torch.optim.LBFGS(proj.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        out = proj(x)
        if classification:
            loss = F.cross_entropy(out, y)
        else:
            loss = F.mse_loss(out.squeeze(-1), (y - mean) / std)
        loss = loss + 1e-3 * proj.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if not classification:  # fold the target standardisation into the layer
        with torch.no_grad():
            proj.weight.mul_(std)
            proj.bias.mul_(std).add_(mean)


def build_checkpoint(out: Path, train_examples: int = 1500, eval_examples: int = 600) -> Path:
    import torch

    from mtl_ray.training.builders import build_model, load_specs_and_splits
    from mtl_ray.training.checkpointing import save_training_checkpoint

    torch.manual_seed(0)
    cfg = bench_config(out.parent / "run", train_examples, eval_examples)
    specs, raw = load_specs_and_splits(cfg)
    model, tokenizer = build_model(cfg, specs)
    model.eval()
    for name, spec in specs.items():
        t0 = time.perf_counter()
        train = raw[name]["train"]
        x = _pooled(model, tokenizer, list(train["text"]))
        classification = spec.type == "classification"
        y = torch.tensor(train["label"], dtype=torch.long if classification else torch.float32)
        with torch.enable_grad():
            _fit_head(model.heads[name], x, y, classification)
        print(
            f"{name}: head fitted on {len(train)} frozen pooled vectors in {time.perf_counter() - t0:.0f} s", flush=True
        )
    meta = {"note": "linear-probe heads on frozen all-MiniLM-L6-v2 pooled vectors (bench/serve_common.py)"}
    return save_training_checkpoint(out, cfg, model, tokenizer, None, metrics=meta)


def test_texts(n: int, task: str = "rt_sentiment") -> list[str]:
    """Real texts for load: the test split of a built-in task (never seen by the fitted heads)."""
    from mtl_ray.config import DataConfig, TaskConfig
    from mtl_ray.data.sources import load_task_splits

    splits, _ = load_task_splits(TaskConfig(name=task, **TASKS[task]), DataConfig())
    texts = list(splits["test"]["text"])
    return (texts * (n // len(texts) + 1))[:n]


def start_local_serve() -> int:
    """A private local Ray on 127.0.0.1 (4 logical CPUs) with Serve's HTTP proxy on a free port; returns the port."""
    import socket
    import tempfile

    import ray
    from ray import serve

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(
        address="local", num_cpus=4, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_mib(pid: int) -> dict[str, float]:
    """RSS and PSS of a process in MiB, from /proc/<pid>/smaps_rollup. PSS splits each shared page among
    the processes mapping it, so the PSS of every process of an app adds up to what the app costs."""
    out = {"rss": float("nan"), "pss": float("nan")}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (contention-proof: what the work itself cost)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def http_load(
    url: str,
    make_body,
    *,
    concurrency: int,
    duration_s: float,
    headers: dict[str, str] | None = None,
    on_result=None,
) -> dict[str, Any]:
    """``concurrency`` clients POSTing back to back for ``duration_s`` (bounded); latencies in ms."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    texts_done = 0
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal texts_done
        k = 0
        while time.monotonic() < deadline:
            body, n = make_body(i, k)
            k += 1
            start = time.monotonic()
            try:
                r = await http.post(url, json=body, headers=headers)
                ok, code = r.status_code == 200, str(r.status_code)
            except httpx.HTTPError as exc:
                ok, code = False, type(exc).__name__
            end = time.monotonic()
            if on_result is not None:
                on_result(end, ok, code, end - start)
            if ok:
                latencies.append((end - start) * 1000)
                texts_done += n
            else:
                errors[code] = errors.get(code, 0) + 1

    start = time.monotonic()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(concurrency)))
    elapsed = time.monotonic() - start
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {
        "texts_per_s": texts_done / elapsed,
        "requests": len(lat),
        "errors": errors,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": pct(0.99),
        "elapsed_s": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-serve/ckpt")
    ap.add_argument("--train-examples", type=int, default=1500)
    ap.add_argument("--eval-examples", type=int, default=600)
    args = ap.parse_args()
    print(build_checkpoint(Path(args.out), args.train_examples, args.eval_examples))


if __name__ == "__main__":
    main()
