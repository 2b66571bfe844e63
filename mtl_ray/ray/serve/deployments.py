"""Ray Serve deployments: thin wrappers that hold a :mod:`~mtl_ray.serving.parts` piece each.

    HTTP -> IngressDeployment (FastAPI: auth, validation, tokenization)
              ├─ EncoderDeployment.encode        (@serve.batch over texts from concurrent requests)
              └─ HeadDeployment[task].predict    (one deployment per task, called concurrently)

All logic lives in plain classes (:class:`~mtl_ray.serving.gateway.Gateway`,
:class:`~mtl_ray.serving.parts.EncoderPart`, :class:`~mtl_ray.serving.lean_head.LeanHead`,
:class:`~mtl_ray.serving.parts.HeadPart`) that unit tests use without a cluster. Deployment options
(replicas, autoscaling, CPUs) are set by the app builder.

This module imports no torch: the ingress never does, and a k = L head whose task type has a numpy
form (:mod:`~mtl_ray.serving.lean_head`) neither; the encoder and k < L heads import it when they load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from mtl_ray.crypto import CheckpointKeys
from mtl_ray.serving.checkpoint_info import read_checkpoint_info
from mtl_ray.serving.config import AuthConfig, LimitsConfig, read_api_key, torch_threads_for
from mtl_ray.serving.gateway import Gateway
from mtl_ray.serving.http_api import build_http_api
from mtl_ray.serving.lean_head import LeanHead, has_lean_head
from mtl_ray.serving.served_task import ServedTask
from mtl_ray.serving.text_tokenizer import CheckpointTokenizer
from mtl_ray.serving.wire import Encoded, TokenBatch, count_inputs

logger = logging.getLogger("ray.serve")

# Placeholders: the replica's real values are set in __init__ from the app config.
_DEFAULT_BATCH, _DEFAULT_WAIT_S = 32, 0.01


def head_name(task: str) -> str:
    """Deployment name of ``task``'s head (task names hold only letters, digits, '_' and '-')."""
    return f"Head-{task}"


def _set_torch_threads(concurrent: int = 1) -> int:
    """Intra-op threads: the replica's reserved CPUs shared by its ``concurrent`` forwards (at least
    one; Ray sets OMP_NUM_THREADS=1 for fractional replicas, so this is always set explicitly)."""
    import ray
    import torch

    if not ray.is_initialized():  # the class used directly (unit tests): leave torch as it is
        return torch.get_num_threads()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = torch_threads_for(cpus / concurrent)
    torch.set_num_threads(threads)
    return threads


def _replica_info(**extra: Any) -> dict[str, Any]:
    ctx = serve.get_replica_context()
    return {
        "deployment": ctx.deployment,
        "replica": ctx.replica_id.unique_id,
        "pid": os.getpid(),
        "torch_loaded": "torch" in sys.modules,  # lean replicas (ingress, k = L heads) keep this False
        **extra,
    }


@serve.deployment(name="Encoder")
class EncoderDeployment:
    """Embeddings + shared layers, dynamically batched across requests (batch size counts texts)."""

    def __init__(
        self,
        checkpoint: str,
        precision: str = "fp32",
        device: str = "auto",
        max_batch_size: int = _DEFAULT_BATCH,
        batch_wait_timeout_s: float = _DEFAULT_WAIT_S,
        max_concurrent_batches: int = 1,
        keys: dict[str, Any] | None = None,
    ):
        from mtl_ray.serving.parts import EncoderPart  # torch: the encoder runs the transformer

        self.threads = _set_torch_threads(max_concurrent_batches)
        # verifies the manifest (and the signature, with a trusted key) first; decrypts in memory
        self.part = EncoderPart.from_checkpoint(checkpoint, precision, device, CheckpointKeys(**(keys or {})))
        self.encode_batch.set_max_batch_size(max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # Serve has no setter for this one; its lazy queue reads the attribute when the first request
        # arrives, so setting it here (before any request) takes effect.
        self.encode_batch.set_max_batch_size.__self__.max_concurrent_batches = max_concurrent_batches
        self.max_concurrent_batches = max_concurrent_batches
        self.batches = 0
        self.texts = 0

    @serve.batch(max_batch_size=_DEFAULT_BATCH, batch_wait_timeout_s=_DEFAULT_WAIT_S, batch_size_fn=count_inputs)
    async def encode_batch(self, batches: list[TokenBatch]) -> list[Encoded]:
        self.batches += 1
        self.texts += count_inputs(batches)
        # In a thread: the event loop keeps queueing the next batch while torch computes this one.
        return await asyncio.to_thread(self.part.encode, batches)

    async def encode(self, batch: TokenBatch) -> Encoded:
        return await self.encode_batch(batch)

    def info(self) -> dict[str, Any]:
        return _replica_info(
            checkpoint=self.part.checkpoint,
            precision=self.part.precision,
            pooled=self.part.pooling is not None,
            loaded_at=self.part.loaded_at,
            torch_threads=self.threads,
            max_concurrent_batches=self.max_concurrent_batches,
            batches=self.batches,
            texts=self.texts,
        )


@serve.deployment(name="Head")
class HeadDeployment:
    """One task's layers k+1..L + head. Its weights come from ``user_config={"checkpoint": path}``
    (default: the served checkpoint); changing that reconfigures live replicas in place, so a head is
    replaced without restarting anything else. The new checkpoint is verified and checked to share
    the served encoder's weights before the swap. A replica that cannot load its first head fails
    (so does the deploy); a refused *replacement* keeps the previous head serving, logs the reason at
    ERROR and reports it in ``info()["refused"]``.

    With k = L and a task type that has a numpy form, the head is a :class:`LeanHead` and the replica
    never imports torch; otherwise (k < L: the task's own transformer layers) a torch ``HeadPart``.
    ``expect`` ({"type", "max_length", "is_pair", "supervised"}): the served task as the builder resolved it."""

    def __init__(
        self,
        checkpoint: str,
        task: str,
        precision: str = "fp32",
        device: str = "auto",
        expect: dict | None = None,
        keys: dict[str, Any] | None = None,
    ):
        self.keys = CheckpointKeys(**(keys or {}))  # key locations: every checkpoint this head loads
        self.threads: int | None = None  # torch threads, set when a torch head loads
        self.reference = checkpoint  # what the encoder serves
        self.task = task
        self.precision = precision
        self.device = device
        self.expect = expect
        self.part: Any = None  # LeanHead | HeadPart, loaded by reconfigure (Serve calls it right after __init__)
        self.refused: str | None = None  # the last replacement checkpoint refused, and why

    def _load(self, path: str) -> Any:
        info = read_checkpoint_info(path, verify=False)  # meta.json only; the loader verifies everything
        task_type = info.spec_dicts.get(self.task, {}).get("type", "")
        if info.hard_shared and has_lean_head(task_type):
            return LeanHead.from_checkpoint(
                path, self.task, reference=self.reference, expect=self.expect, keys=self.keys
            )
        from mtl_ray.serving.parts import HeadPart  # torch: the task owns transformer layers

        if self.threads is None:
            self.threads = _set_torch_threads()
        return HeadPart.from_checkpoint(
            path, self.task, self.precision, self.device, reference=self.reference, expect=self.expect, keys=self.keys
        )

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        user_config = dict(user_config or {})
        unknown = sorted(set(user_config) - {"checkpoint"})
        if unknown:
            raise ValueError(f"Head-{self.task} user_config: unknown keys {unknown}; expected 'checkpoint'")
        path = user_config.get("checkpoint") or self.reference
        if self.part is not None and self.part.checkpoint == os.path.abspath(path):
            return
        try:  # built fully before the swap: requests in flight finish on the old head
            part = self._load(path)
        except Exception as exc:
            if self.part is None:  # nothing to fall back to: fail the replica (and the deploy), saying why
                raise
            # Refusing by raising would take this task down (Serve replaces the replica, which fails the
            # same way, and requests wait); keep serving the previous head and say so loudly instead.
            self.refused = str(exc)
            logger.error("Head-%s: refused new checkpoint, still serving %s: %s", self.task, self.part.checkpoint, exc)
            return
        self.part, self.refused = part, None

    def _loaded(self) -> Any:
        if self.part is None:  # a config that dropped user_config: Serve never called reconfigure
            self.reconfigure(None)
        assert self.part is not None
        return self.part

    async def predict(self, encoded: Encoded) -> list[dict[str, Any]]:
        part = self._loaded()
        if encoded.pooled is not None:  # k = L: one small matmul, cheaper than a thread hop
            return part.predict(encoded)
        return await asyncio.to_thread(part.predict, encoded)

    def spec(self) -> dict[str, Any]:
        """The served task (:class:`ServedTask` as a dict): labels may change with a replaced head."""
        part = self._loaded()
        return part.task.to_dict() if isinstance(part, LeanHead) else ServedTask.from_spec(part.spec).to_dict()

    def info(self) -> dict[str, Any]:
        part = self._loaded()
        return _replica_info(
            task=self.task,
            checkpoint=part.checkpoint,
            loaded_at=part.loaded_at,
            labels=self.spec()["label_names"],
            head="numpy" if isinstance(part, LeanHead) else "torch",
            refused=self.refused,
        )


class HandleBackend:
    """The gateway's :class:`~mtl_ray.serving.gateway.Backend` over deployment handles."""

    def __init__(self, encoder: DeploymentHandle, heads: dict[str, DeploymentHandle]):
        self.encoder = encoder
        self.heads = heads
        self.resolved = 0  # encoder results this ingress read itself (only after a failed head call)

    def submit_encode(self, batch: TokenBatch) -> DeploymentResponse:
        return self.encoder.encode.remote(batch)

    async def resolve(self, pending: DeploymentResponse) -> Encoded:
        self.resolved += 1
        return await pending

    async def predict(self, task: str, pending: DeploymentResponse) -> list[dict[str, Any]]:
        # One hop: Serve hands the head the encoder's result by object reference; the head reads the
        # arrays straight from the object store and this ingress never holds them.
        try:
            return await self.heads[task].predict.remote(pending)
        except RayServeException as exc:
            # The encoder died before its result was computed: Serve wraps Ray's ActorDiedError ("an
            # upstream actor died"); re-raise that, so the gateway retries the encoder as a dead replica.
            if isinstance(exc.__cause__, RayActorError):
                raise exc.__cause__ from None
            raise

    async def spec(self, task: str) -> dict[str, Any]:
        return await self.heads[task].spec.remote()


@serve.deployment(name="Ingress")
@serve.ingress()
class IngressDeployment:
    """FastAPI ingress (routes in :func:`~mtl_ray.serving.http_api.build_http_api`)."""

    def __init__(
        self,
        encoder: DeploymentHandle,
        heads: dict[str, DeploymentHandle],
        specs: dict[str, dict[str, Any]],
        tokenizer_dir: str,
        limits: dict[str, Any],
        auth: dict[str, Any],
        max_batch_size: int,
        retries: int = 1,
    ):
        api_key = read_api_key(AuthConfig(**auth))  # configured but missing -> this replica fails to start
        self.gateway = Gateway(
            {name: ServedTask.from_dict(d) for name, d in specs.items()},
            CheckpointTokenizer.from_dir(tokenizer_dir),  # tokenizers only: no transformers, no torch
            HandleBackend(encoder, heads),
            LimitsConfig(**limits),
            max_batch_size=max_batch_size,
            api_key=api_key,
            retries=retries,
            retryable=(RayActorError,),  # a replica died mid-call (ActorDiedError / ActorUnavailableError)
        )

        self.extra_heads: dict[str, str] = {}  # task -> the Serve app holding its head (added tasks)
        self._pending: set[str] = set()  # added tasks whose attach has not started yet
        self._attaching: dict[str, asyncio.Task] = {}
        self.gateway.on_request = self._start_pending

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """``{"extra_heads": {task: app_name}}``: tasks added after deploy, each served by the head
        deployment of its own Serve app (``build_head_app``). Adding one touches only this ingress's
        routing table and the new app: the encoder and the other heads keep running as they are. A
        task is served once its head answers; until then it is an unknown task (422)."""
        user_config = dict(user_config or {})
        unknown = sorted(set(user_config) - {"extra_heads"})
        if unknown:
            raise ValueError(f"Ingress user_config: unknown keys {unknown}; expected 'extra_heads'")
        wanted = dict(user_config.get("extra_heads") or {})
        for task, app_name in wanted.items():
            if not isinstance(task, str) or not isinstance(app_name, str):
                raise ValueError(f"Ingress user_config.extra_heads: expected {{task: app name}}, got {wanted!r}")
            if task in self.gateway.specs and task not in self.extra_heads:
                raise ValueError(f"Ingress user_config.extra_heads: {task!r} is already served by this app")
        for task in set(self.extra_heads) - set(wanted):
            self.gateway.remove_task(task)
            self.extra_heads.pop(task)
            self._pending.discard(task)
        for task, app_name in wanted.items():
            if self.extra_heads.get(task) != app_name:
                self.extra_heads[task] = app_name
                self._pending.add(task)
        # Attaching waits for the new app; it runs as a task on the loop that serves requests (an
        # in-place reconfigure runs on a loop whose tasks do not outlive the call), started by the
        # next request or /healthz probe.

    def _start_pending(self) -> None:
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        for task in sorted(self._pending):
            previous = self._attaching.pop(task, None)
            if previous is not None:
                previous.cancel()
            self._attaching[task] = loop.create_task(self._attach(task, self.extra_heads[task]))
        self._pending.clear()

    async def _attach(self, task: str, app_name: str, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:  # both raise until the app exists and its head answers
                handle = serve.get_deployment_handle(head_name(task), app_name=app_name)
                spec = ServedTask.from_dict(await asyncio.wait_for(handle.spec.remote(), timeout=10))
                break
            except Exception as exc:  # still deploying (or failed: then the task stays unserved)
                logger.info("added task %r: head in app %r not answering yet (%s)", task, app_name, exc)
                await asyncio.sleep(1.0)
        else:
            logger.error("added task %r: its head in app %r never answered; not serving it", task, app_name)
            return
        self.gateway.backend.heads[task] = handle
        self.gateway.add_task(task, spec)
        logger.info("serving added task %r from app %r", task, app_name)

    def __serve_build_asgi_app__(self):
        return build_http_api(self.gateway)

    def info(self) -> dict[str, Any]:
        return _replica_info(
            tasks=sorted(self.gateway.specs),
            extra_heads=dict(self.extra_heads),
            attaching={t: ("done" if a.done() else "running") for t, a in self._attaching.items()},
            pending=sorted(self._pending),
            auth=self.gateway.api_key is not None,
            encoder_results_read=self.gateway.backend.resolved,  # 0 unless a head call failed: one hop
        )
