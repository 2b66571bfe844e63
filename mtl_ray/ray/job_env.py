"""What a Ray Jobs entrypoint (``jobs/*.py``) checks about its own interpreter before doing anything,
and the frame every entrypoint shares (its parser's name, ``--address``, the ``error:`` line and exit 2).

``ray job submit --working-dir . -- python jobs/train.py ...`` uploads the repository *without* its
``.gitignore``d ``.venv/`` (and ``runs/``, ``.git/``): the job's ``mtl_ray`` package then comes from
the upload, but torch, transformers and ray must come from the interpreter. A ``python`` on the
head's PATH that lacks them would fail with an ImportError traceback deep in an import; this check
says what happened and what to type instead. (A *relative* interpreter such as ``.venv/bin/python``
never starts at all: the job's shell exits 127 with ``.venv/bin/python: not found`` before any script
runs — the message below explains that case too, for the user who then tries a bare ``python``.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mtl_ray.errors import MtlRayError

REQUIRED = ("torch", "transformers", "ray", "safetensors")
WORKING_DIR_MARK = "_ray_pkg_"  # Ray Jobs unpacks --working-dir into .../working_dir_files/_ray_pkg_<hash>/


def in_uploaded_working_dir(script: str) -> bool:
    """True when ``script`` runs from Ray's unpacked copy of ``--working-dir``."""
    return WORKING_DIR_MARK in script


def check_job_interpreter(script: str, required: Sequence[str] = REQUIRED, executable: str | None = None) -> None:
    """Raise :class:`MtlRayError` naming the interpreter and the missing packages, and explaining the
    working-dir upload, when this interpreter cannot run mtl-ray."""
    missing = [name for name in required if importlib.util.find_spec(name) is None]
    if not missing:
        return
    exe = executable or sys.executable
    where = (
        "`--working-dir .` uploaded the repository without its .gitignored .venv/, so the job got the "
        "package's source but not its dependencies"
        if in_uploaded_working_dir(script)
        else "this interpreter does not have mtl-ray's dependencies installed"
    )
    raise MtlRayError(
        f"the job's interpreter {exe} cannot import {', '.join(missing)}: {where}. Submit with an absolute "
        'interpreter path that exists on the cluster\'s nodes, e.g. `ray job submit ... -- "$PWD/.venv/bin/python" '
        "jobs/train.py ...` (a relative `.venv/bin/python` is not uploaded either: the job exits 127, "
        "'not found'), or install mtl-ray into the nodes' python (cluster.yaml setup_commands)"
    )


def job_parser(script: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of the entrypoint ``script``: prog ``jobs/<name>.py``, described by the first
    paragraph of its docstring ``doc``."""
    return argparse.ArgumentParser(prog=f"jobs/{Path(script).name}", description=doc.split("\n\n")[0])


def add_address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, set by Ray Jobs)")


def run_job(script: str, body: Callable[[], int]) -> int:
    """An entrypoint's ``main``: check the interpreter, then ``body()``, whose
    return value is the exit status. A config, data or checkpoint problem (:class:`MtlRayError`) prints
    one ``error:`` line on stderr and exits 2, with no traceback."""
    try:
        check_job_interpreter(script)  # a bare `python` without the deps: say why, no traceback
        return body()
    except MtlRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_address_arg", "check_job_interpreter", "in_uploaded_working_dir", "job_parser", "run_job"]
