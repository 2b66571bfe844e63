"""Serving precision: fp32 vs bf16 vs int8 (dynamic quantization) from the same checkpoint.

    python bench/serve_common.py --out runs/bench-serve/ckpt      # once
    python bench/serve_precision.py --checkpoint runs/bench-serve/ckpt

Runs exactly the code a Serve replica runs (EncoderPart + HeadPart, in-process), on each task's test
split, and prints per precision: the size of the loaded modules, encoder texts/s (batch 32), test
metrics and their delta to fp32, and how often the predicted label differs from fp32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def evaluate(checkpoint: str, precision: str, data: dict, batch_size: int) -> dict:
    import torch
    from scipy.stats import pearsonr
    from transformers import AutoTokenizer

    from mtl_ray.serving.parts import EncoderPart, HeadPart, module_nbytes, read_checkpoint_info, tokenize

    info = read_checkpoint_info(checkpoint)
    encoder = EncoderPart.from_checkpoint(checkpoint, precision)
    heads = {t: HeadPart.from_checkpoint(checkpoint, t, precision) for t in data}
    tokenizer = AutoTokenizer.from_pretrained(str(info.tokenizer_dir))
    size = module_nbytes(encoder.shared) + sum(module_nbytes(h.tower) for h in heads.values())
    out: dict = {"precision": precision, "size_mib": size / 2**20, "tasks": {}}
    encode_s, n_texts = 0.0, 0
    torch.manual_seed(0)
    for task, (texts, labels) in data.items():
        preds = []
        for i in range(0, len(texts), batch_size):
            batch, _ = tokenize(tokenizer, texts[i : i + batch_size], False, info.specs[task].max_length)
            t0 = time.perf_counter()
            (enc,) = encoder.encode([batch])
            encode_s += time.perf_counter() - t0
            n_texts += len(batch)
            preds += heads[task].predict(enc)
        if info.specs[task].type == "classification":
            names = info.specs[task].label_names
            got = [names.index(p["label"]) for p in preds]
            out["tasks"][task] = {"metric": "accuracy", "value": float(np.mean(np.array(got) == labels)), "pred": got}
        else:
            got = [p["value"] for p in preds]
            out["tasks"][task] = {"metric": "pearson", "value": float(pearsonr(got, labels)[0]), "pred": got}
    out["encoder_texts_per_s"] = n_texts / encode_s
    return out


def encoder_speed(checkpoint: str, precision: str, data: dict, n: int = 256, batch_size: int = 32) -> float:
    from transformers import AutoTokenizer

    from mtl_ray.serving.parts import EncoderPart, read_checkpoint_info, tokenize

    info = read_checkpoint_info(checkpoint, verify=False)
    tokenizer = AutoTokenizer.from_pretrained(str(info.tokenizer_dir))
    texts = next(iter(data.values()))[0][:n]
    batches = [tokenize(tokenizer, texts[i : i + batch_size], False, 64)[0] for i in range(0, len(texts), batch_size)]
    encoder = EncoderPart.from_checkpoint(checkpoint, precision)
    encoder.encode(batches[:1])
    t0 = time.perf_counter()
    for b in batches:
        encoder.encode([b])
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench-serve/ckpt")
    ap.add_argument("--eval-examples", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from mtl_ray.config import config_from_dict
    from mtl_ray.serving.parts import read_checkpoint_info
    from mtl_ray.training.builders import load_specs_and_splits

    torch.set_num_threads(args.threads)
    info = read_checkpoint_info(args.checkpoint)
    from mtl_ray.checkpoint import load_meta

    cfg = config_from_dict(load_meta(args.checkpoint)["config"])
    for task in cfg.tasks.values():
        task.max_eval_examples = args.eval_examples
    _, raw = load_specs_and_splits(cfg)
    data = {t: (list(raw[t]["test"]["text"]), np.array(raw[t]["test"]["label"])) for t in info.specs}
    results = [evaluate(args.checkpoint, p, data, args.batch_size) for p in ("fp32", "bf16", "int8")]
    # speed again, interleaved and after warm-up (the first pass above includes one-time costs)
    for r in results:
        r["encoder_texts_per_s"] = max(r["encoder_texts_per_s"], encoder_speed(args.checkpoint, r["precision"], data))
    ref = results[0]
    print(f"test split, up to {args.eval_examples} examples per task; batch {args.batch_size}; {args.threads} threads")
    header = f"{'precision':<10}{'size MiB':>10}{'enc texts/s':>13}"
    for t in data:
        header += f"{'  ' + t + ' (' + ref['tasks'][t]['metric'] + ')':>36}"
    print(header)
    for r in results:
        row = f"{r['precision']:<10}{r['size_mib']:>10.1f}{r['encoder_texts_per_s']:>13.1f}"
        for t in data:
            v, v0 = r["tasks"][t]["value"], ref["tasks"][t]["value"]
            a, b = np.array(r["tasks"][t]["pred"]), np.array(ref["tasks"][t]["pred"])
            changed = np.mean(a != b) if ref["tasks"][t]["metric"] == "accuracy" else np.max(np.abs(a - b))
            tag = "flip" if ref["tasks"][t]["metric"] == "accuracy" else "max|Δ|"
            row += f"{f'{v:.4f} ({v - v0:+.4f}; {tag} {changed:.3f})':>36}"
        print(row)
    print("n per task:", {t: len(d[0]) for t, d in data.items()})


if __name__ == "__main__":
    main()
