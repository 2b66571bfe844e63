"""The Ray Jobs entrypoints' interpreter check (``mtl_ray.ray.job_env``), without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtl_ray.errors import MtlRayError
from mtl_ray.ray.job_env import check_job_interpreter, in_uploaded_working_dir

UPLOADED = "/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0123abcd/jobs/train.py"
REPO = Path(__file__).resolve().parents[1]


def test_an_interpreter_with_the_dependencies_passes():
    check_job_interpreter(UPLOADED, required=("json", "pytest"))


def test_missing_dependencies_in_an_uploaded_working_dir_explain_the_upload():
    assert in_uploaded_working_dir(UPLOADED) and not in_uploaded_working_dir(str(REPO / "jobs" / "train.py"))
    with pytest.raises(MtlRayError) as info:
        check_job_interpreter(UPLOADED, required=("json", "no_such_pkg_h16"), executable="/usr/bin/python3")
    msg = str(info.value)
    assert msg.startswith(
        "the job's interpreter /usr/bin/python3 cannot import no_such_pkg_h16: `--working-dir .` uploaded"
    )
    assert 'ray job submit ... -- "$PWD/.venv/bin/python" jobs/train.py' in msg
    assert "exits 127" in msg


def test_missing_dependencies_outside_a_job_name_the_interpreter():
    with pytest.raises(MtlRayError, match=r"cannot import no_such_pkg_h16: this interpreter does not have"):
        check_job_interpreter(str(REPO / "jobs" / "train.py"), required=("no_such_pkg_h16",))


JOB_ARGS = {
    "train.py": ["--config", "x.yaml"],
    "tune.py": ["--config", "x.yaml"],
    "add_task.py": ["--checkpoint", "ck", "--config", "x.yaml", "--output", "out"],
    "deploy.py": ["--checkpoint", "ck"],
    "evaluate.py": ["--checkpoint", "ck"],
}


def test_every_job_script_is_listed():
    assert sorted(JOB_ARGS) == sorted(p.name for p in (REPO / "jobs").glob("*.py"))


@pytest.mark.parametrize("script", sorted(JOB_ARGS))
def test_job_script_without_dependencies_prints_one_error_line(tmp_path, script):
    """A python that has none of the dependencies (-S -I: no site-packages) runs a jobs/ script from a
    copy of the repo the way a job does: one `error:` line, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-S", "-I", str(REPO / "jobs" / script), *JOB_ARGS[script]],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: the job's interpreter ") and "cannot import torch" in proc.stderr
    assert "Traceback" not in proc.stderr
