"""Plain helpers of the integration tests: a local Ray (with Serve) for one module, Serve's CLI and
status, and stopping a server subprocess. Import them by name (``from ray_helpers import serve_cluster``):
this folder is on ``sys.path`` through its ``conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtl_ray.ray.local_cluster import free_port

SERVE_BIN = str(Path(sys.executable).parent / "serve")


@contextmanager
def local_ray(dashboard: bool = False, **init_kwargs: Any) -> Iterator[None]:
    """A local Ray of 4 logical CPUs in its own short temp dir (Ray's socket paths must stay short), shut
    down and removed afterwards. ``dashboard``: with the dashboard (Ray Train's placement-group cleaner
    queries the state API), it and the node on 127.0.0.1 only."""
    import ray

    if dashboard:
        loopback = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "_node_ip_address": "127.0.0.1"}
        init_kwargs = {**loopback, **init_kwargs}
    else:
        init_kwargs = {"include_dashboard": False, **init_kwargs}
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(address="local", num_cpus=4, _temp_dir=temp_dir, **init_kwargs)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def serve_cluster(tls: dict[str, str] | None = None, **local_ray_kwargs: Any) -> Iterator[dict[str, Any]]:
    """:func:`local_ray` with Serve's proxy on 127.0.0.1 at a free port (HTTPS with ``tls``:
    ``ssl_certfile`` / ``ssl_keyfile``); yields ``{"gcs": GCS address, "port": proxy port}``."""
    import ray
    from ray import serve

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    with local_ray(**local_ray_kwargs):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, **(tls or {})})
        try:
            yield {"gcs": ray.get_runtime_context().gcs_address, "port": port}
        finally:
            serve.shutdown()


def checkpoint_and_new_head(root: Path, name: str, head_name: str) -> tuple[Path, Path, Path]:
    """The tiny encoder (``root/encoder``), a checkpoint of it cut at k = 2 of 4 (``root/name``, so hidden
    states cross from the encoder deployment to the heads) and a replacement head for it: the same
    trunk, other head weights (``root/head_name``). Returns (encoder, checkpoint, new head)."""
    from serving_helpers import make_checkpoint  # tests/serving is on sys.path in the Serve test modules

    from mtl_ray.testing import make_tiny_encoder

    encoder = make_tiny_encoder(root / "encoder")
    checkpoint = make_checkpoint(root / name, encoder, sharing_depth=2)
    return encoder, checkpoint, make_checkpoint(root / head_name, encoder, sharing_depth=2, head_seed=7)


def wait_for_app(name: str, timeout_s: float = 150.0):
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and app.status in ("RUNNING", "DEPLOY_FAILED"):
            return app
        time.sleep(0.5)
    raise TimeoutError(f"app {name!r} not RUNNING after {timeout_s} s: {serve.status().applications.get(name)}")


def serve_run(config: Path, gcs_address: str) -> None:
    """`serve run FILE --non-blocking` in a subprocess: deploys declaratively (what `serve deploy` does)."""
    proc = subprocess.run(
        [SERVE_BIN, "run", str(config), "--non-blocking", "-a", gcs_address],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def replica_info(deployment: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name="mtl").info.remote().result(timeout_s=30)


def offer_head(config: Path, task: str, checkpoint: Path, out: Path, gcs_address: str, timeout_s: float) -> dict:
    """Deploy ``config`` again with ``Head-<task>``'s user_config pointing at ``checkpoint`` (written to
    ``out``), the way an operator replaces a head in place, and wait up to ``timeout_s`` for that head to
    refuse it; returns the head replica's info (``refused``: why, or empty if it did not refuse)."""
    import yaml

    conf = yaml.safe_load(config.read_text())
    head = next(d for d in conf["applications"][0]["deployments"] if d["name"] == f"Head-{task}")
    head["user_config"] = {"checkpoint": str(checkpoint)}
    out.write_text(yaml.safe_dump(conf))
    serve_run(out, gcs_address)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not replica_info(f"Head-{task}")["refused"]:
        time.sleep(0.3)
    return replica_info(f"Head-{task}")


def stop_process(proc: subprocess.Popen, sig: int, timeout_s: float) -> None:
    """Send ``sig`` (SIGINT: Ctrl-C, SIGTERM) and wait ``timeout_s`` for ``proc`` to exit; kill it if it has not."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
