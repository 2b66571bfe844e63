"""Ray Jobs against a real head started with `ray start --head --block`, the way users submit work:

    ray job submit --address http://127.0.0.1:<dash> --working-dir <repo> -- <venv python> jobs/X.py ...

Checks: a training job succeeds and leaves a verified checkpoint; a deploy job puts the Serve app on the
cluster, exits, and the app keeps answering (equal to the Predictor's answers); a bad config and a
tampered checkpoint fail their jobs with one `error:` line and no traceback.

The head runs on Ray's defaults, token auth on; the clients set the one extra thing docs/cluster.md
tells users to set (`RAY_AUTH_MODE=token`). The `ray job submit` commands of the train and deploy
jobs are read from docs/cluster.md and run as written (only `$A`, `$PY`, `$CFG`, `$RUNS`, `$CKPT` and
`$PORT` are this test's). The token lives in the test's temp dir (`RAY_AUTH_TOKEN_PATH`), so the
user's `~/.ray/auth_token` is neither read nor written. The head is stopped by SIGTERM to its own
`ray start --block` process — never `ray stop`, which would kill every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from string import Template

import httpx
import pytest
import yaml
from helpers import tiny_config_dict, write_tiny_tasks
from ray_helpers import stop_process

from mtl_ray.checkpoint import verify_checkpoint
from mtl_ray.predictor import Predictor
from mtl_ray.ray.local_cluster import free_port
from mtl_ray.testing import make_tiny_encoder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON = str(BIN / "python")
DOC = REPO / "docs" / "cluster.md"
DOC_MARK = "<!-- tests/integration/test_jobs.py runs the `ray job submit` commands of the next block -->"
# Ray's defaults: no auth setting of the caller's leaks in; RAY_AUTH_MODE=token is added per process
BASE_ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")},
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
TEXTS = ["good great fun film", "the worst boring plot"]


def doc_commands() -> dict[str, list[str]]:
    """docs/cluster.md's `ray job submit` commands (the block after ``DOC_MARK``) as argv, by submission id."""
    text = DOC.read_text(encoding="utf-8")
    assert DOC_MARK in text, f"{DOC}: the marked Ray Jobs block is gone"
    block = text.split(DOC_MARK, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = {}
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:3] == ["ray", "job", "submit"]:
            commands[argv[argv.index("--submission-id") + 1]] = argv
    return commands


class Head:
    def __init__(self, dashboard: str, gcs: str, env: dict[str, str]) -> None:
        self.dashboard = dashboard
        self.gcs = gcs
        self.env = env  # a client's environment: Ray's defaults + RAY_AUTH_MODE=token (+ the test's token path)

    def ray(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout, env=env or self.env, cwd=REPO
        )

    def _submit(self, job_id: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        # The job API answers before the head's dashboard agent has registered; until it has, a submit is
        # refused with "No available agent" (and no job is created), so that one is retried.
        deadline = time.monotonic() + 90
        while True:
            proc = self.ray(*argv, timeout=timeout)
            if "No available agent" not in proc.stderr or time.monotonic() > deadline:
                return proc
            time.sleep(2)

    def submit(self, script: str, *args: str, timeout: float = 420) -> tuple[str, subprocess.CompletedProcess]:
        job_id = f"test-{Path(script).stem}-{uuid.uuid4().hex[:8]}"
        argv = ["job", "submit", "--address", self.dashboard, "--working-dir", str(REPO), "--submission-id", job_id,
                "--", PYTHON, script, *args]  # fmt: skip
        return job_id, self._submit(job_id, argv, timeout)

    def submit_as_documented(self, job_id: str, timeout: float = 420, **values: str) -> subprocess.CompletedProcess:
        """Run docs/cluster.md's command for ``job_id`` from the repo root (its ``--working-dir .``)."""
        argv = [Template(arg).substitute(A=self.dashboard, PY=PYTHON, **values) for arg in doc_commands()[job_id]]
        return self._submit(job_id, argv[1:], timeout)

    def status(self, job_id: str) -> str:
        proc = self.ray("job", "status", "--address", self.dashboard, job_id)
        out = proc.stdout + proc.stderr  # Ray's CLI logger writes to stderr
        # running: "Status for job 'ID': RUNNING"; finished: "Job 'ID' succeeded" / "failed" / "was stopped"
        m = re.search(r"Status for job '[^']+': (\w+)|Job '[^']+' (succeeded|failed|was stopped)", out)
        if m is None:
            return out
        return m.group(1) or {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[m.group(2)]

    def logs(self, job_id: str) -> str:
        return self.ray("job", "logs", "--address", self.dashboard, job_id).stdout


@pytest.fixture(scope="module")
def head():
    dash, gcs_port, client = free_port(), free_port(), free_port()
    # The per-node agents default to fixed ports (52365 ...): another Ray on the machine holding them leaves
    # the head without a job agent ("No available agent to submit job"). Give them free ones too.
    agent_ports = [
        ("--dashboard-agent-listen-port", free_port()),
        ("--dashboard-agent-grpc-port", free_port()),
        ("--runtime-env-agent-port", free_port()),
        ("--metrics-export-port", free_port()),
    ]
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: unix socket paths are limited
    # what `ray get-auth-token --generate` writes to ~/.ray/auth_token, kept private to this test
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32), encoding="utf-8")
    client_env = {**BASE_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    # the head's SIGTERM drain waits up to 30 s for idle worker leases; a throwaway test head needs none
    head_env = {**client_env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block",
            "--port", str(gcs_port), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
            "--num-cpus", "4", "--temp-dir", temp_dir,
            "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
            *(str(x) for pair in agent_ports for x in pair),
        ],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir,
    )  # fmt: skip
    h = Head(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs_port}", client_env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            if h.ray("job", "list", "--address", h.dashboard, timeout=30).returncode == 0:
                break
            assert time.monotonic() < deadline, "Ray head's job API did not come up in 120 s"
            time.sleep(1)
        yield h
    finally:
        stop_process(proc, signal.SIGTERM, timeout_s=60)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    encoder = make_tiny_encoder(root / "encoder")
    files = write_tiny_tasks(root / "tasks")
    return root, encoder, files


def write_config(workspace, name: str, **extra) -> Path:
    root, encoder, files = workspace
    d = tiny_config_dict(encoder, files, root / name / "out", max_steps=4, eval_every=2, log_every=2)
    d["ray"] = {"num_workers": 1, "cpus_per_worker": 1}
    d.update(extra)
    path = root / name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    return path


def _explain(job_id: str, proc: subprocess.CompletedProcess, head: Head) -> str:
    logs = head.logs(job_id)[-4000:]
    return f"rc={proc.returncode}\n--- submit stderr ---\n{proc.stderr[-2000:]}\n--- logs ---\n{logs}"


@pytest.fixture(scope="module")
def trained(head, workspace):
    root = workspace[0]
    config = write_config(workspace, "train")
    job_id = "doc-train"
    proc = head.submit_as_documented(job_id, CFG=str(config), RUNS=str(root / "ray-results"))
    assert proc.returncode == 0, _explain(job_id, proc, head)
    assert head.status(job_id) == "SUCCEEDED", _explain(job_id, proc, head)
    m = re.search(r"^run folder: +(\S+)$", head.logs(job_id), re.M)
    assert m, _explain(job_id, proc, head)
    return json.loads((Path(m.group(1)) / "summary.json").read_text())


def test_submit_without_token_mode_is_refused(head):
    """The failure docs/cluster.md's one extra step avoids: Ray's CLI does not send the token by itself."""
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
    proc = head.ray("job", "list", "--address", head.dashboard, env=env)
    assert proc.returncode != 0
    assert "authentication token" in (proc.stdout + proc.stderr).lower(), proc.stderr[-2000:]


def test_train_job_keeps_every_output_in_the_run_folder(workspace, trained):
    root = workspace[0]
    run = Path(trained["output_dir"])
    assert run.parent == root / "ray-results" and "_ray_pkg_" not in str(run)
    assert {"metrics.jsonl", "summary.json", "training_curves.png", "config.yaml", "tensorboard"} <= {
        p.name for p in run.iterdir()
    }
    assert Path(trained["best_checkpoint"]).parent == run
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [2, 4]
    assert not (root / "train" / "out" / "metrics.jsonl").exists()  # train.output_dir is not where a Ray run writes


def test_train_then_deploy_job_serves_the_checkpoint(head, trained):
    best = trained["best_checkpoint"]
    assert trained["steps"] == 4
    assert best and Path(best).is_dir()
    verify_checkpoint(best)

    port = free_port()
    job_id = "doc-deploy"
    proc = head.submit_as_documented(job_id, CKPT=best, PORT=str(port))
    assert proc.returncode == 0, _explain(job_id, proc, head)
    assert head.status(job_id) == "SUCCEEDED", _explain(job_id, proc, head)
    assert f"serving at http://127.0.0.1:{port}/v1/predict" in head.logs(job_id)
    try:
        # the job's driver has exited; the app lives on in the cluster
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client:
            assert client.get(f"{base}/healthz").status_code == 200
            tasks = client.get(f"{base}/v1/tasks").json()["tasks"]
            text_tasks = [t["name"] for t in tasks if t["input"] == "texts"]
            assert sorted(text_tasks) == ["score", "sentiment"]
            r = client.post(f"{base}/v1/predict", json={"texts": TEXTS})
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
        assert sorted(got) == sorted(text_tasks)
        assert all(len(got[t]) == len(TEXTS) for t in text_tasks)
        ref = Predictor.from_checkpoint(best, device="cpu").predict(texts=TEXTS, tasks=["sentiment"])["sentiment"]
        for a, b in zip(got["sentiment"], ref):
            assert a["label"] == b["label"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    finally:
        shut = subprocess.run(
            [str(BIN / "serve"), "shutdown", "-y", "-a", head.dashboard],
            capture_output=True, text=True, timeout=120, env=head.env,
        )  # fmt: skip
        assert shut.returncode == 0, shut.stderr[-2000:]


def test_bad_config_job_fails_with_one_error_line(head, workspace):
    config = write_config(workspace, "bad", bogus_section={"x": 1})
    start = time.monotonic()
    job_id, proc = head.submit("jobs/train.py", "--config", str(config), timeout=180)
    elapsed = time.monotonic() - start
    assert head.status(job_id) == "FAILED", _explain(job_id, proc, head)
    logs = head.logs(job_id)
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown key" in errors[0], logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    assert elapsed < 120, elapsed


def test_deploy_job_refuses_a_tampered_checkpoint(head, trained, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(trained["best_checkpoint"], bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    job_id, proc = head.submit("jobs/deploy.py", "--checkpoint", str(bad), "--port", str(free_port()), timeout=180)
    assert head.status(job_id) == "FAILED", _explain(job_id, proc, head)
    logs = head.logs(job_id)
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sha256" in errors[0], logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
