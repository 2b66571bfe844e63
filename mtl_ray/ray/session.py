"""Joining or starting Ray, and checking that a request fits the cluster (shared by Train, Tune, Serve).

Two failure modes this module turns into a clear :class:`MtlRayError` within seconds instead of a
silent wait: an address nobody listens on (``ray.init`` would retry its GCS connection for about a
minute), and a request for more workers / CPUs / GPUs than the cluster has (Ray would queue the
placement group forever).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mtl_ray.errors import MtlRayError

ADDRESS_ENV = "RAY_ADDRESS"
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001
CONNECT_TIMEOUT_S = 3.0


def resolve_address(*candidates: str | None) -> str | None:
    """The first non-empty of ``candidates`` (e.g. ``--address``, ``ray.address``), else ``$RAY_ADDRESS``,
    else None (start an embedded local Ray)."""
    for value in (*candidates, os.environ.get(ADDRESS_ENV)):
        if value and value.strip():
            return value.strip()
    return None


def _host_port(address: str) -> tuple[str, int]:
    if address.startswith(("http://", "https://")):
        raise MtlRayError(
            f"Ray address {address!r} is a dashboard / Ray Jobs address; submit with "
            "`ray job submit --address <it> -- python jobs/train.py ...`, or point RAY_ADDRESS / --address "
            f"at the cluster's GCS address (host:{DEFAULT_GCS_PORT}) or ray://host:{DEFAULT_CLIENT_PORT}"
        )
    if address.startswith("ray://"):
        parts = urlsplit(address)
        return parts.hostname or "", parts.port or DEFAULT_CLIENT_PORT
    parts = urlsplit("//" + address)
    try:
        port = parts.port or DEFAULT_GCS_PORT
    except ValueError:
        raise MtlRayError(f"Ray address {address!r}: not host:port or ray://host:port") from None
    if not parts.hostname:
        raise MtlRayError(f"Ray address {address!r}: not host:port or ray://host:port")
    return parts.hostname, port


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout_s`` when no Ray cluster answers at ``address``.

    A GCS address (``host:port``) gets one gRPC call (``GetClusterId``): a refused or silent port, and
    a port where something other than Ray answers (a proxy, a web server), are told apart from a
    cluster that answers (with or without asking for its auth token, which ``ray.init`` then
    handles). ``ray://`` (Ray Client) gets a TCP connect. ``"auto"`` / ``"local"`` are left to
    ``ray.init``.
    """
    if address in ("auto", "local"):
        return
    host, port = _host_port(address)
    where = f"(address from --address, ray.address or ${ADDRESS_ENV}; unset all three to start an embedded local Ray)"
    if address.startswith("ray://"):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            raise MtlRayError(
                f"cannot reach a Ray cluster at {address!r} ({host}:{port}: {exc.strerror or exc}); is it up? {where}"
            ) from None
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s
        )
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return  # a Ray GCS that wants a token: ray.init reads it ($RAY_AUTH_MODE=token)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise MtlRayError(
                f"cannot reach a Ray cluster at {address!r} ({exc.details()}); is it up? {where}"
            ) from None
        raise MtlRayError(
            f"{address!r} answers, but not as a Ray cluster's GCS ({code.name}: {exc.details()}); "
            f"wrong host or port? The GCS listens on {DEFAULT_GCS_PORT} by default. {where}"
        ) from None
    finally:
        channel.close()


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None, init_kwargs: dict[str, Any] | None = None
) -> Iterator[bool]:
    """Use the Ray this process is already connected to, else join ``address``, else start a local one.

    ``init_kwargs`` go to ``ray.init`` as they are (e.g. :meth:`mtl_ray.ray.logs.RayLogging.init_kwargs`).
    Yields True when this call started or joined Ray (and shuts it down on exit), False when Ray was
    already initialised by the caller (a test fixture, a notebook), which then owns its lifetime.
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    if address is None:
        # A private single-node Ray on loopback. The dashboard stays on: Ray Train's placement-group
        # cleaner asks the state API (served by the dashboard) whether a run's controller is alive.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            **(init_kwargs or {}),
        )
    else:
        check_reachable(address)
        try:
            ray.init(address=address, **(init_kwargs or {}))
        except ConnectionError as exc:
            raise MtlRayError(f"cannot connect to Ray at {address!r}: {exc}") from None
    try:
        yield True
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class ResourceRequest:
    """What a run needs: ``num_workers`` actors of ``per_worker`` resources, plus ``extra`` elsewhere."""

    num_workers: int
    per_worker: dict[str, float]
    extra: dict[str, float] | None = None  # e.g. CPUs kept free for Ray Data tasks
    extra_reason: str = ""
    workers_key: str = ""  # where num_workers comes from, e.g. "ray.num_workers min 3 of [3, 4]"

    def total(self) -> dict[str, float]:
        out = {k: v * self.num_workers for k, v in self.per_worker.items()}
        for k, v in (self.extra or {}).items():
            out[k] = out.get(k, 0.0) + v
        return out


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_resources(request: ResourceRequest, cluster: dict[str, Any] | None = None, nodes: list | None = None) -> None:
    """Raise :class:`MtlRayError` naming what is missing when ``request`` cannot fit the cluster.

    Checks the cluster's totals and that one worker's bundle fits on at least one alive node
    (a worker cannot span nodes). Pass ``cluster`` / ``nodes`` to check without Ray (tests).
    """
    if cluster is None or nodes is None:
        import ray

        cluster = ray.cluster_resources() if cluster is None else cluster
        nodes = [n for n in ray.nodes() if n.get("Alive")] if nodes is None else nodes
    problems = []
    for key, need in request.total().items():
        have = float(cluster.get(key, 0.0))
        if need > have + 1e-9:
            what = f"{request.num_workers} workers × {_fmt(request.per_worker.get(key, 0.0))} {key}"
            if request.workers_key:
                what = f"{request.workers_key}: {what}"
            if request.extra and key in request.extra:
                what += f" + {_fmt(request.extra[key])} {key} {request.extra_reason}".rstrip()
            problems.append(f"{key}: needs {_fmt(need)} ({what}), the cluster has {_fmt(have)}")
    if not problems and nodes:
        for key, need in request.per_worker.items():
            biggest = max(float(n.get("Resources", {}).get(key, 0.0)) for n in nodes)
            if need > biggest + 1e-9:
                problems.append(f"{key}: one worker needs {_fmt(need)}, the largest node has {_fmt(biggest)}")
    if problems:
        raise MtlRayError(
            "the Ray cluster cannot fit this run: "
            + "; ".join(problems)
            + " (lower ray.num_workers / ray.cpus_per_worker, set ray.use_gpu=false, or use a bigger cluster)"
        )
