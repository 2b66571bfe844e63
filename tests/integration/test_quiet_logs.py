"""`mtl-ray serve` and `mtl-ray demo` as a user runs them: the terminal shows the answers, progress and
errors; Ray's and Serve's INFO logs go to Serve's log files (access logs included); `--verbose` /
`MTL_RAY_VERBOSE=1` brings them back. Each test runs the real command in a subprocess (its own
embedded Ray on loopback)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import tiny_config_dict, write_tiny_tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "serving") not in sys.path:
    sys.path.insert(0, str(TESTS / "serving"))

from ray_helpers import stop_process  # noqa: E402
from serving_helpers import make_checkpoint  # noqa: E402

from mtl_ray.ray.local_cluster import free_port  # noqa: E402
from mtl_ray.testing import make_tiny_encoder  # noqa: E402

MTL_RAY = str(Path(sys.executable).parent / "mtl-ray")
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MTL_RAY_VERBOSE": ""}
# what Serve's controller / proxy / replicas and the driver's Ray loggers print at INFO
NOISE = re.compile(r"ServeController|ProxyActor|ServeReplica|Started Serve|Started a local Ray| INFO ")
# Ray's driver prints every task error of its job, and serve.shutdown()'s controller ends its own
# graceful_shutdown task by exiting: one such line at Ctrl-C is Ray's, not a log we can route to a file
SHUTDOWN_ERROR = "Task ServeController.graceful_shutdown failed"


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line) and SHUTDOWN_ERROR not in line]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quiet")
    return make_checkpoint(root / "ck", make_tiny_encoder(root / "encoder"), sharing_depth=2)


def serve_once(checkpoint: Path, tmp_path: Path, *extra: str, env: dict | None = None) -> tuple[str, str]:
    """Start `mtl-ray serve`, answer one predict request, stop it with SIGINT; return (stdout, stderr)."""
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(
            [MTL_RAY, "serve", "--checkpoint", str(checkpoint), "--port", str(port), "--num-cpus", "4", *extra],
            stdout=fo, stderr=fe, env=env or ENV, cwd=tmp_path,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, err.read_text()[-3000:]
                if "serving " in out.read_text():  # printed once serve.run has returned: every replica is up
                    break
                assert time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(1)
            r = httpx.post(f"{base}/v1/predict", json={"texts": ["good great fun film"]}, timeout=60)
            assert r.status_code == 200 and "sentiment" in r.json()["predictions"], r.text
        finally:
            stop_process(proc, signal.SIGINT, timeout_s=90)
    return out.read_text(), err.read_text()


def test_serve_is_quiet_and_keeps_access_logs_in_files(checkpoint, tmp_path):
    stdout, stderr = serve_once(checkpoint, tmp_path)
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    noisy = noise(stdout + stderr)
    assert noisy == [], "\n".join(noisy[:20])
    assert any(line.startswith(f"serving {checkpoint} at http://127.0.0.1:") for line in lines), lines
    m = re.search(r"Serve logs \(access logs included\): (\S+);", stdout)
    assert m, stdout
    logs = Path(m.group(1))
    # the request's access-log line is in the ingress replica's log file, not on the terminal
    ingress = [p for p in logs.glob("replica_mtl_Ingress_*.log") if "POST /v1/predict 200" in p.read_text()]
    assert ingress, sorted(p.name for p in logs.iterdir())
    # one security warning of Ray's own may remain; nothing close to Serve's ~30 INFO lines per deploy
    assert len(lines) <= 5, lines


def test_serve_verbose_env_brings_serve_logs_back(checkpoint, tmp_path):
    stdout, stderr = serve_once(checkpoint, tmp_path, env={**ENV, "MTL_RAY_VERBOSE": "1"})
    text = stdout + stderr
    assert "Started Serve" in text and "ServeController" in text, text[-3000:]
    assert "Serve logs (access logs included)" not in stdout


def test_demo_shows_progress_and_answers_only(tmp_path):
    conftest_dict = _tiny_config(tmp_path)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(conftest_dict), encoding="utf-8")
    proc = subprocess.run(
        [MTL_RAY, "demo", "--config", str(config), "--port", str(free_port())],
        capture_output=True, text=True, timeout=400, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    noisy = noise(text)
    assert noisy == [], "\n".join(noisy[:20])
    for expected in ("[1/4]", "[2/4]", "eval step 4:", "[3/4]", "[4/4] sample answers", "sentiment", "demo finished"):
        assert expected in text, (expected, text[-3000:])


def _tiny_config(tmp_path: Path) -> dict:
    files = write_tiny_tasks(tmp_path / "tasks")
    encoder = make_tiny_encoder(tmp_path / "encoder")
    d = tiny_config_dict(encoder, files, tmp_path / "out", max_steps=4, eval_every=4, log_every=2)
    d["ray"] = {"num_workers": 1, "cpus_per_worker": 1}
    return d
