"""Ray Jobs entrypoint: a Ray Tune search (the config's ``tune:`` section) on the cluster the job runs on.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        "$PWD"/.venv/bin/python jobs/tune.py --config configs/tune_smoke.yaml \
        train.output_dir=/abs/runs/tune-smoke --storage-path /abs/tune-results   # or s3://bucket/tune

    ray job submit ... -- "$PWD"/.venv/bin/python jobs/tune.py --resume /abs/tune-results/tune_smoke

Inside a job ``RAY_ADDRESS`` points at the cluster, so ``run_tune`` joins it. A config or data problem
exits with status 2 and one ``error:`` line (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import mtl_ray  # noqa: F401  (installed, or the job's working dir is on the path)
except ImportError:  # `python jobs/tune.py` from a checkout: the repo root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_ray.errors import MtlRayError
from mtl_ray.ray.job_env import add_address_arg, job_parser, run_job


def tune(args: argparse.Namespace) -> int:
    from mtl_ray.config import load_config
    from mtl_ray.ray.tune import run_tune
    from mtl_ray.tuning.experiment import format_summary

    if args.resume is None and args.config is None:
        raise MtlRayError("give --config or --resume")
    cfg = load_config(args.config, args.overrides) if args.resume is None else None
    summary = run_tune(cfg, address=args.address, resume=args.resume, storage_path=args.storage_path)
    print(format_summary(summary))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__file__, __doc__)
    p.add_argument("--config", "-c", default=None, help="YAML config with a tune: section")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tune.num_samples=4")
    p.add_argument("--resume", default=None, help="experiment directory of an interrupted search")
    p.add_argument("--storage-path", default=None, help="the experiment's storage: absolute path or URI (s3://, gs://)")
    add_address_arg(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_job(__file__, lambda: tune(args))


if __name__ == "__main__":
    sys.exit(main())
