"""Ray Jobs entrypoint: multi-task training with Ray Train on the cluster the job runs on.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        "$PWD"/.venv/bin/python jobs/train.py --config configs/smoke.yaml \
        train.output_dir=/abs/runs/smoke ray.num_workers=2 --storage-path /abs/ray-results

Inside a job ``RAY_ADDRESS`` points at the cluster, so ``run_ray_training`` joins it. A config, data
or checkpoint problem exits with status 2 and one ``error:`` line (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import mtl_ray  # noqa: F401  (installed, or the job's working dir is on the path)
except ImportError:  # `python jobs/train.py` from a checkout: the repo root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_ray.ray.job_env import add_address_arg, job_parser, run_job


def train(args: argparse.Namespace) -> int:
    from mtl_ray.config import load_config
    from mtl_ray.ray.train import run_ray_training

    cfg = load_config(args.config, args.overrides)
    summary = run_ray_training(cfg, resume_from=args.resume, address=args.address, storage_path=args.storage_path)
    print(f"\nbest checkpoint: {summary['best_checkpoint']}")
    print(f"run folder:      {summary['output_dir']}")  # metrics, TensorBoard, curves, summary, checkpoints
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__file__, __doc__)
    p.add_argument("--config", "-c", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. ray.num_workers=2")
    p.add_argument("--storage-path", default=None, help="Ray Train storage: absolute path or URI (s3://, gs://)")
    p.add_argument("--resume", default=None, help="checkpoint directory or URI to resume from")
    add_address_arg(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_job(__file__, lambda: train(args))


if __name__ == "__main__":
    sys.exit(main())
