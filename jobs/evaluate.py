"""Ray Jobs entrypoint: evaluate a checkpoint on a split of its tasks' data and write the metrics.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        "$PWD"/.venv/bin/python jobs/evaluate.py --checkpoint /abs/runs/smoke/checkpoints/step-0000010 \
        --split test --output /abs/runs/smoke/eval-test.json

A missing or tampered checkpoint exits with status 2 and one ``error:`` line (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import mtl_ray  # noqa: F401
except ImportError:  # `python jobs/evaluate.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_ray.ray.job_env import job_parser, run_job


def evaluate(args: argparse.Namespace) -> int:
    from mtl_ray.checkpoint_cli import keys_from_args
    from mtl_ray.evaluate import evaluate_checkpoint
    from mtl_ray.training.metrics import format_table

    report = evaluate_checkpoint(args.checkpoint, args.split, args.overrides, keys=keys_from_args(args))
    print(format_table(report.metrics, report.baseline))
    print(f"aggregate: {report.aggregate:.4f}")
    if args.output:
        import fsspec

        with fsspec.open(args.output, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=2)
        print(f"metrics written to {args.output}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__file__, __doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--output", default=None, help="write the metrics JSON here (local path or fsspec URI)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the checkpoint's config (data.*)")
    from mtl_ray.checkpoint_cli import add_key_args  # needs `cryptography`: after the interpreter check

    add_key_args(p)  # --key-env / --key-file (encrypted checkpoints), --public-key (refuse unsigned ones)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_job(__file__, lambda: evaluate(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
