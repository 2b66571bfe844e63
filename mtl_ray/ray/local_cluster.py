"""Two Ray nodes on one machine (``ray.cluster_utils.Cluster``), for the integration tests and the
two-node benchmark: each node its own raylet, CPUs and a custom resource naming it (``node_a`` on the
head, ``node_b`` on the worker), loopback only, free ports for the GCS and the per-node agents, token
auth off (a private throwaway cluster), and its address kept out of ``/tmp/ray/ray_current_cluster``
so no ``ray.init(address="auto")`` of another user on the machine joins it.

Set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before ``ray`` is first imported (Ray reads it at import):
otherwise Ray resolves the node's address to the machine's network interface, not 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HEAD_RESOURCE = "node_a"
WORKER_RESOURCE = "node_b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(resource: str, temp_dir: str, num_cpus: int) -> dict[str, Any]:
    return {
        "num_cpus": num_cpus,
        "resources": {resource: 1.0},
        "node_ip_address": "127.0.0.1",
        "temp_dir": temp_dir,
        # the per-node agents default to fixed ports (52365, ...) another Ray on the machine may hold
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
    }


def committed_checkpoints(storage: str) -> list[str]:
    """Checkpoint folder names Ray Train has committed in any run under ``storage`` (a local path), from
    its ``checkpoint_manager_snapshot.json``. A ``step-*`` folder appears before its commit: a node lost
    in between restarts the run from the previous checkpoint, so fault tests wait for this instead."""
    import glob
    import json

    names: list[str] = []
    for path in glob.glob(os.path.join(storage, "*", "checkpoint_manager_snapshot.json")):
        try:
            with open(path, encoding="utf-8") as f:
                snapshot = json.load(f)
        except (OSError, ValueError):  # being rewritten
            continue
        names += [r.get("checkpoint_dir_name", "") for r in snapshot.get("checkpoint_results", [])]
    return sorted(n for n in names if n)


@dataclass
class TwoNodes:
    cluster: Any  # ray.cluster_utils.Cluster
    head: Any  # ray._private.node.Node of the head (resource node_a)
    worker: Any  # the worker node (resource node_b); None once removed
    num_cpus: int  # per node
    temp_dir: str  # the nodes' shared Ray temp dir (sessions, logs, sockets)

    def remove_worker(self) -> None:
        """Kill every process of the worker node at once (SIGKILL), as a lost machine."""
        self.cluster.remove_node(self.worker, allow_graceful=False)
        self.worker = None

    def add_worker(self) -> None:
        """Start a fresh worker node (new node id, resource node_b). From any thread: Ray's node object
        installs a SIGTERM handler, which Python allows only on the main thread, so a watcher thread
        (while the main thread runs a training) skips it; the cluster's shutdown still stops the node."""
        import threading

        import ray._private.utils

        install = ray._private.utils.set_sigterm_handler
        if threading.current_thread() is not threading.main_thread():
            ray._private.utils.set_sigterm_handler = lambda *a, **k: None
        try:
            self.worker = self.cluster.add_node(**_node_args(WORKER_RESOURCE, self.temp_dir, self.num_cpus))
        finally:
            ray._private.utils.set_sigterm_handler = install
        self.cluster.wait_for_nodes()


@contextlib.contextmanager
def two_node_cluster(num_cpus: int = 2) -> Iterator[TwoNodes]:
    """Start the two nodes, connect this process to them (``ray.init``), tear all down on exit."""
    import ray
    import ray._private.utils
    from ray.cluster_utils import Cluster

    gcs_port = free_port()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    # RAY_ADDRESS before any node starts: every raylet and worker inherits it, so what Ray resolves as
    # "auto" inside the cluster (Ray Train's placement-group cleaner does) is this cluster, not
    # whichever other Ray of the machine wrote /tmp/ray/ray_current_cluster last
    os.environ.update(
        RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_ADDRESS=f"127.0.0.1:{gcs_port}"
    )
    write_address = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda *a, **k: None
    temp_dir = tempfile.mkdtemp(prefix="r2n-", dir="/tmp")  # short: unix socket paths are limited
    head_args = {
        **_node_args(HEAD_RESOURCE, temp_dir, num_cpus),
        "gcs_server_port": gcs_port,
        "include_dashboard": True,  # Ray Train's placement-group cleaner asks the state API
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
    }
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        worker = cluster.add_node(**_node_args(WORKER_RESOURCE, temp_dir, num_cpus))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield TwoNodes(cluster, cluster.head_node, worker, num_cpus, temp_dir)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray._private.utils.write_ray_address = write_address
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp_dir, ignore_errors=True)


__all__ = ["HEAD_RESOURCE", "WORKER_RESOURCE", "TwoNodes", "committed_checkpoints", "free_port", "two_node_cluster"]
