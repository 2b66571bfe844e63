"""Should a k < L head replica run its transformer layers in numpy instead of torch? Speed, equality
and process memory of the two, on real MiniLM layers (the last two, as a head of an app cut at k = 4).

    python bench/serve_numpy_tower.py [--n 32 --lengths 16 64 --calls 20]

Speed: median ms per call of the two layers + mean pooling on float32 hidden states (n, T, 384), one
thread each (a head replica's default), arms interleaved call by call. Memory: RSS and PSS of a fresh
process that imports what each arm's replica imports and holds the two layers' weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread for both arms (torch.set_num_threads(1) below)
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

NUMPY_PROC = """
import json, sys
import numpy as np, scipy.special, safetensors.numpy
w = {f"w{i}": np.ones((1536, 384), np.float32) for i in range(4)}  # ~ the two layers' 3.5 M params
print(json.dumps(open("/proc/self/smaps_rollup").read()))
"""
TORCH_PROC = """
import json, sys
import torch, transformers
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer
cfg = BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)
layers = torch.nn.ModuleList([BertLayer(cfg) for _ in range(2)]).eval()
print(json.dumps(open("/proc/self/smaps_rollup").read()))
"""


def _mib(rollup: str) -> dict[str, float]:
    out = {}
    for line in rollup.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(rest.split()[0]) / 1024
    return out


def process_memory(code: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return _mib(json.loads(proc.stdout.strip().splitlines()[-1]))


def numpy_layer(x: np.ndarray, add_mask: np.ndarray, w: dict[str, np.ndarray], heads: int, eps: float) -> np.ndarray:
    """HF BertLayer (eval) in numpy: x (n, T, H), add_mask (n, 1, 1, T) additive."""
    from scipy.special import erf

    n, t, h = x.shape
    d = h // heads

    def lin(a, name):
        return a @ w[name + ".weight"].T + w[name + ".bias"]

    def split(a):  # (n, T, H) -> (n, heads, T, d)
        return a.reshape(n, t, heads, d).transpose(0, 2, 1, 3)

    def norm(a, name):
        mu = a.mean(-1, keepdims=True)
        var = ((a - mu) ** 2).mean(-1, keepdims=True)
        return (a - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    q, k, v = (split(lin(x, f"attention.self.{p}")) for p in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(d)) + add_mask  # (n, heads, T, T)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(n, t, h)
    a = norm(lin(ctx, "attention.output.dense") + x, "attention.output.LayerNorm")
    inter = lin(a, "intermediate.dense")
    inter = 0.5 * inter * (1.0 + erf(inter / np.float32(np.sqrt(2.0))))
    return norm(lin(inter, "output.dense") + a, "output.LayerNorm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()

    import torch

    from mtl_ray.model.encoder import encoder_layers, load_encoder, run_layers
    from mtl_ray.model.pooling import mean_pool

    torch.set_num_threads(1)
    encoder, _ = load_encoder("builtin:all-MiniLM-L6-v2")
    encoder.eval()
    cfg = encoder.config
    layers = encoder_layers(encoder)[4:]  # a head of an app cut at k = 4 owns layers 5 and 6
    weights = [{k: v.detach().numpy().copy() for k, v in layer.state_dict().items()} for layer in layers]
    rng = np.random.default_rng(0)
    print(f"MiniLM layers 5-6 + mean pooling, n = {args.n}, 1 thread; median ms per call ({args.calls} calls)")
    print(f"{'T':>4}{'torch ms':>10}{'numpy ms':>10}{'max |diff|':>12}")
    for t in args.lengths:
        x = rng.normal(size=(args.n, t, cfg.hidden_size)).astype(np.float32)
        mask = np.ones((args.n, t), np.int64)
        mask[:, t * 3 // 4 :] = 0  # a quarter padding
        add = ((1 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
        from mtl_ray.model.encoder import attention_mask_4d

        times: dict[str, list[float]] = {"torch": [], "numpy": []}
        for _ in range(args.calls + 2):
            s = time.perf_counter()
            with torch.inference_mode():
                ref = mean_pool(run_layers(layers, xt, attention_mask_4d(cfg, xt, mt)), mt).numpy()
            times["torch"].append((time.perf_counter() - s) * 1000)
            s = time.perf_counter()
            h = x
            for w in weights:
                h = numpy_layer(h, add, w, cfg.num_attention_heads, cfg.layer_norm_eps)
            m = mask[..., None].astype(np.float32)
            got = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            times["numpy"].append((time.perf_counter() - s) * 1000)
        med = {k: statistics.median(v[2:]) for k, v in times.items()}
        print(f"{t:>4}{med['torch']:>10.1f}{med['numpy']:>10.1f}{float(np.abs(got - ref).max()):>12.2e}")
    np_mem, torch_mem = process_memory(NUMPY_PROC), process_memory(TORCH_PROC)
    print(f"process with numpy + scipy.special + weights: RSS {np_mem['rss']:.0f} / PSS {np_mem['pss']:.0f} MiB")
    print(
        f"process with torch + transformers + 2 BertLayers: RSS {torch_mem['rss']:.0f} / PSS {torch_mem['pss']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
