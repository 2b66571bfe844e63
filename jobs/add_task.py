"""Ray Jobs entrypoint: add a task to a trained model (its tower on the frozen trunk) with Ray Train.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        "$PWD"/.venv/bin/python jobs/add_task.py --checkpoint /abs/runs/builtin/best \
        --config /abs/my_task.yaml -o /abs/runs/my_task [--replace] [key=value ...]

Paths should be absolute: a job runs in a temporary copy of the working directory. The head
checkpoint is written to ``OUT/best``; with ``--storage-path`` (a shared folder or a URI) the run folder
there holds the training outputs, the summary and a copy of the head (``<run folder>/best``). A config, data or checkpoint problem exits with status 2 and
one ``error:`` line (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import mtl_ray  # noqa: F401  (installed, or the job's working dir is on the path)
except ImportError:  # `python jobs/add_task.py` from a checkout: the repo root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_ray.ray.job_env import add_address_arg, job_parser, run_job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__file__, __doc__)
    p.add_argument("--checkpoint", required=True, help="the base checkpoint (absolute path)")
    p.add_argument("--config", "-c", required=True, help="YAML with the new task(s) and training options")
    p.add_argument("--output", "-o", required=True, help="run directory (absolute); the head goes to OUT/best")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=200")
    p.add_argument("--replace", action="store_true", help="train a new head for a task the base already has")
    p.add_argument("--storage-path", default=None, help="Ray Train storage: absolute path or URI")
    add_address_arg(p)
    return p.parse_args(argv)


def add_task(args: argparse.Namespace) -> int:
    from mtl_ray.add_task import add_task_from_args

    summary = add_task_from_args(args)
    if summary.get("run_head_checkpoint"):  # a --storage-path outside OUT: the run folder has a copy
        print(f"\nrun folder:      {summary['output_dir']} (head: {summary['run_head_checkpoint']})")
    print(f"\nhead checkpoint: {summary['head_checkpoint']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_job(__file__, lambda: add_task(args))


if __name__ == "__main__":
    sys.exit(main())
