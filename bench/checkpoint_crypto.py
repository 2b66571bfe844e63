"""What encryption at rest + signed manifests cost: save, load, Predictor load and Serve replica load,
encrypted + signed vs plain, on the real all-MiniLM-L6-v2 multi-task checkpoint. Arms interleaved
per round (order alternating), medians and ratios from the same run.

    python bench/checkpoint_crypto.py --rounds 7 [--checkpoint runs/bench-serve/ckpt] [--out runs/bench-crypto]

Without --checkpoint the model is built from the pinned encoder with four real tasks' heads at their
initial weights (their values do not matter for timing). "save" writes the model plus an AdamW-sized
training state (exp_avg, exp_avg_sq per parameter), as a training checkpoint does. "replica load" is
what the Serve encoder replica and the four head replicas do in __init__ (verify, decrypt, build the
modules), run in this process one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KEY_ENV = "MTL_RAY_BENCH_KEY"


def _model(checkpoint: str | None):
    """(model_state, meta, tokenizer) of the real MiniLM multi-task model."""
    import torch

    from mtl_ray.checkpoint import load_checkpoint
    from mtl_ray.training.checkpointing import model_from_checkpoint, model_meta

    if checkpoint:
        ck = load_checkpoint(checkpoint, load_training_state=False)
        model, _ = model_from_checkpoint(ck)
        from transformers import AutoTokenizer

        return model, ck.meta, AutoTokenizer.from_pretrained(str(ck.tokenizer_dir))
    from serve_common import bench_config

    from mtl_ray.training.builders import build_model, load_specs_and_splits

    torch.manual_seed(0)
    cfg = bench_config(Path("runs/bench-crypto/run"), 64, 64)
    specs, _ = load_specs_and_splits(cfg)
    model, tokenizer = build_model(cfg, specs)
    return model, model_meta(cfg, model), tokenizer


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoint", default=None, help="a plaintext MiniLM checkpoint (default: build from the encoder)"
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="runs/bench-crypto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from mtl_ray import crypto, signing
    from mtl_ray.checkpoint import load_checkpoint, save_checkpoint
    from mtl_ray.crypto import CheckpointKeys
    from mtl_ray.predictor import Predictor
    from mtl_ray.serving.parts import EncoderPart, HeadPart, read_checkpoint_info

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "keys").mkdir(parents=True, exist_ok=True)
    private, public = signing.generate_keypair()
    (out / "keys" / "signing.pem").write_bytes(private)
    (out / "keys" / "signing.pub.pem").write_bytes(public)
    os.environ[KEY_ENV] = crypto.generate_key()
    arms = {
        "plain": (CheckpointKeys(), CheckpointKeys()),
        "encrypted+signed": (
            CheckpointKeys(key_env=KEY_ENV, private_key_file=str(out / "keys" / "signing.pem")),
            CheckpointKeys(key_env=KEY_ENV, trusted_public_key_file=str(out / "keys" / "signing.pub.pem")),
        ),
    }

    model, meta, tokenizer = _model(args.checkpoint)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    adam = {
        "optimizer": {
            "state": {
                i: {"exp_avg": torch.randn(p.shape, generator=g), "exp_avg_sq": torch.rand(p.shape, generator=g)}
                for i, p in enumerate(model.parameters())
            }
        },
        "step": 100,
    }
    n_params = sum(p.numel() for p in model.parameters())
    tasks = sorted(model.specs)

    def one_round(path: Path, write: CheckpointKeys, read: CheckpointKeys) -> dict[str, float]:
        def replicas() -> None:
            read_checkpoint_info(path, keys=read)  # what build_app does before binding
            EncoderPart.from_checkpoint(path, keys=read)
            for task in tasks:
                HeadPart.from_checkpoint(path, task, keys=read)

        return {
            "save (model + AdamW state)": _timed(
                lambda: save_checkpoint(
                    path, model_state=state, meta=meta, training_state=adam, tokenizer=tokenizer, keys=write
                )
            ),
            "load_checkpoint (weights)": _timed(lambda: load_checkpoint(path, load_training_state=False, keys=read)),
            "load_checkpoint (+ training state)": _timed(lambda: load_checkpoint(path, keys=read)),
            "Predictor.from_checkpoint": _timed(lambda: Predictor.from_checkpoint(path, device="cpu", keys=read)),
            f"replica load (encoder + {len(tasks)} heads)": _timed(replicas),
        }

    times: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for arm in order:
            measured = one_round(out / f"ckpt-{arm.replace('+', '-')}", *arms[arm])
            for what, seconds in measured.items():
                times[arm].setdefault(what, []).append(seconds)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    sizes = {
        a: sum(f.stat().st_size for f in (out / f"ckpt-{a.replace('+', '-')}").rglob("*") if f.is_file()) for a in arms
    }
    rows = []
    for what in times["plain"]:
        plain, secure = times["plain"][what], times["encrypted+signed"][what]
        paired = [b / a for a, b in zip(plain, secure)]  # same round, back to back
        rows.append(
            {
                "what": what,
                "plain_s": statistics.median(plain),
                "secure_s": statistics.median(secure),
                "ratio_of_medians": statistics.median(secure) / statistics.median(plain),
                "ratio_of_minima": min(secure) / min(plain),  # the least disturbed run of each arm
                "median_paired_ratio": statistics.median(paired),
            }
        )
    result = {
        "params": n_params,
        "rounds": args.rounds,
        "threads": args.threads,
        "checkpoint_bytes": sizes,
        "rows": rows,
        "raw": times,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(
        f"\nMiniLM multi-task checkpoint: {n_params / 1e6:.1f} M params, {sizes['plain'] / 2**20:.1f} MiB plain, "
        f"{sizes['encrypted+signed'] / 2**20:.1f} MiB encrypted; median of {args.rounds} interleaved rounds"
    )
    print(f"{'median seconds':38s} {'plain':>9s} {'enc+signed':>11s} {'ratio':>7s} {'min/min':>8s} {'paired':>7s}")
    for row in rows:
        print(
            f"{row['what']:38s} {row['plain_s']:8.3f}s {row['secure_s']:10.3f}s {row['ratio_of_medians']:6.2f}x "
            f"{row['ratio_of_minima']:7.2f}x {row['median_paired_ratio']:6.2f}x"
        )


if __name__ == "__main__":
    main()
