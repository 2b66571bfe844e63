"""The typed serve config: what `mtl-ray serve` and the Serve app builder take.

    mtl-ray serve --checkpoint runs/x/best [--config serve.yaml] [--set encoder.num_cpus=2 ...]

Two kinds of settings, kept apart because Ray Serve treats them differently on redeploy:

* **app args** (checkpoint, tasks, precision, batching, limits, auth, added heads): they define what the
  replicas compute. In a Serve config file they sit under ``applications[].args``; changing them
  re-imports the app and restarts every replica (rolling).
* **per-deployment options** (:class:`DeploymentOptions`: replicas/autoscaling, CPUs/GPUs,
  ``max_ongoing_requests``) and each head's checkpoint (its ``user_config``). In a Serve config file
  they sit under ``applications[].deployments[]``; changing them updates only that deployment, and
  replacing a head's checkpoint reconfigures that head's live replicas without restarting anything.

Unknown keys and wrong types fail at start-up naming the key (pydantic, ``extra="forbid"``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import ConfigError
from mtl_ray.overrides import apply_overrides, read_yaml_mapping

Precision = Literal["fp32", "bf16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DeploymentOptions(_Strict):
    """Replicas and resources of one deployment. min = max replicas means a fixed count."""

    min_replicas: int = Field(1, ge=0)  # autoscaling lower bound (0 allows scale-to-zero)
    max_replicas: int = Field(1, ge=1)  # autoscaling upper bound
    target_ongoing_requests: float = Field(2.0, gt=0)  # per replica; above it Serve adds replicas
    num_cpus: float = Field(0.25, ge=0)  # logical CPUs reserved per replica; torch threads = max(1, round(num_cpus))
    num_gpus: float = Field(0.0, ge=0)  # GPUs per replica; > 0 puts the replica's model on CUDA
    max_ongoing_requests: int = Field(16, ge=1)  # concurrent requests a replica accepts (caps @serve.batch size)
    # custom Ray resources per replica: {"encoder_node": 0.01} places replicas only on nodes started with
    # that resource (`ray start --resources '{"encoder_node": 1}'`), e.g. the encoder on the GPU nodes
    resources: dict[str, float] = Field(default_factory=dict)
    # how often a stopping replica (a redeploy, a scale-down, shutdown) checks that its in-flight requests
    # are done (Serve's default: 2 s); Serve's graceful_shutdown_timeout_s (20 s) still bounds the wait
    graceful_shutdown_wait_loop_s: float = Field(0.25, gt=0)

    @field_validator("resources")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {name: amount for name, amount in v.items() if amount <= 0}
        if bad:
            raise ValueError(f"amounts must be > 0, got {bad}")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options`` (and keys of a Serve config's ``deployments[]``)."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.resources:
            actor["resources"] = dict(self.resources)
        return {
            "max_ongoing_requests": self.max_ongoing_requests,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "ray_actor_options": actor,
            "graceful_shutdown_wait_loop_s": self.graceful_shutdown_wait_loop_s,
        }


class IngressOptions(DeploymentOptions):
    """The FastAPI ingress: light, but it holds every in-flight request while heads answer."""

    max_ongoing_requests: int = Field(64, ge=1)


class EncoderOptions(DeploymentOptions):
    """The shared encoder: most of the compute. max_ongoing_requests must let a full batch gather."""

    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)


class HeadOptions(DeploymentOptions):
    """A task head: one small matmul when k = L, its own top layers when k < L."""

    max_ongoing_requests: int = Field(64, ge=1)


def torch_threads_for(num_cpus: float) -> int:
    """Intra-op threads for a replica that reserved ``num_cpus`` (fractional CPUs still get one)."""
    return max(1, math.floor(num_cpus + 0.5))


class BatchingConfig(_Strict):
    """Dynamic batching in the encoder (``@serve.batch``); sizes count texts, not requests."""

    max_batch_size: int = Field(32, ge=1)  # texts per encoder forward; the ingress splits bigger requests
    batch_wait_timeout_s: float = Field(0.01, ge=0)  # how long a partial batch waits for more texts
    # Batches one encoder replica computes at once, each with encoder.num_cpus / this many torch threads.
    # 1 = one multi-threaded forward at a time; num_cpus = independent single-threaded forwards, which
    # keeps all cores busy while the next batch gathers and degrades less when cores are shared.
    max_concurrent_batches: int = Field(1, ge=1)


class LimitsConfig(_Strict):
    """What one request may ask for; beyond these the answer is a 4xx, never a stuck server."""

    max_inputs_per_request: int = Field(64, ge=1)  # texts or pairs per POST /v1/predict
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # request body size
    # Characters kept per text before tokenizing (a guard against tokenizing megabytes; tokens beyond the
    # task's max_length are dropped anyway, and the response says when either cut happened).
    max_chars_per_text: int = Field(20_000, ge=64)


class AuthConfig(_Strict):
    """Optional API key (header ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``).

    The key is read on the ingress replica from an environment variable or a file, never from the
    checkpoint or the Serve config; when auth is configured but the key is missing, the deploy fails."""

    api_key_env: str | None = None  # name of an environment variable holding the key
    api_key_file: str | None = None  # path of a file holding the key (surrounding whitespace stripped)

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.api_key_env or self.api_key_file)


def read_api_key(auth: AuthConfig) -> str | None:
    """The configured key, or None when auth is off. Raises ConfigError when configured but absent."""
    if auth.api_key_env:
        key = os.environ.get(auth.api_key_env, "").strip()
        if not key:
            raise ConfigError(f"auth.api_key_env: environment variable {auth.api_key_env!r} is unset or empty")
        return key
    if auth.api_key_file:
        path = Path(auth.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"auth.api_key_file: cannot read {path}: {exc.strerror or exc}") from None
        if not key:
            raise ConfigError(f"auth.api_key_file: {path} is empty")
        return key
    return None


class EncryptionSettings(_Strict):
    """Where replicas find the key of encrypted checkpoints: a location, never the key (docs/security.md).
    Neither set: ``$MTL_RAY_CHECKPOINT_KEY`` is tried when a checkpoint is encrypted."""

    key_env: str | None = None  # name of an environment variable holding the base64 AES-256 key
    key_file: str | None = None  # path of a file holding it (e.g. a mounted Kubernetes secret)

    @field_validator("key_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return _absolute_path(v)  # replicas may run in another working directory

    @model_validator(mode="after")
    def _one_source(self) -> EncryptionSettings:
        if self.key_env and self.key_file:
            raise ValueError("give key_env or key_file, not both")
        return self


class SigningSettings(_Strict):
    """Provenance: with a trusted public key, checkpoints and heads not signed by it are refused."""

    trusted_public_key_file: str | None = None  # PEM Ed25519 public key (mtl-ray checkpoint keygen)

    @field_validator("trusted_public_key_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return _absolute_path(v)


def _absolute_path(v: str | None) -> str | None:
    return str(Path(v).expanduser().absolute()) if v else v


def checkpoint_keys(encryption: EncryptionSettings, signing: SigningSettings) -> CheckpointKeys:
    """The key locations replicas read checkpoints with; errors name them as Serve config keys."""
    return CheckpointKeys(
        key_env=encryption.key_env,
        key_file=encryption.key_file,
        trusted_public_key_file=signing.trusted_public_key_file,
        setting="",
    )


class HeadConfig(_Strict):
    """One task's head deployment: where its weights come from and its own replicas/resources."""

    # A checkpoint holding this task's head trained against the same encoder (shared weights are
    # checked to be identical); None -> the main checkpoint. For a task the main checkpoint lacks,
    # this adds the task.
    checkpoint: str | None = None
    options: HeadOptions | None = None  # None -> ServeConfig.head


class ServeConfig(_Strict):
    """Everything the Serve app is built from (``build_app(args)``)."""

    checkpoint: str  # an mtl-ray checkpoint directory; its manifest is verified before any weight loads
    tasks: list[str] | None = None  # tasks to serve; None -> every task of the checkpoint (+ added heads)
    precision: Precision = "fp32"  # transformer layers in fp32, bf16, or int8 (dynamic quantization of Linear)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)  # key of encrypted checkpoints
    signing: SigningSettings = Field(default_factory=SigningSettings)  # trusted key: refuse unsigned checkpoints
    ingress: IngressOptions = Field(default_factory=IngressOptions)
    encoder: EncoderOptions = Field(default_factory=EncoderOptions)
    head: HeadOptions = Field(default_factory=HeadOptions)  # every head, unless heads.<task>.options
    heads: dict[str, HeadConfig] = Field(default_factory=dict)  # per-task overrides, keyed by task name
    head_retries: int = Field(1, ge=0)  # extra attempts of a head/encoder call whose replica died mid-request
    # Per-call access log lines of the encoder and head replicas (the ingress logs every HTTP request
    # regardless). Off by default: at 5 internal calls per request they cost CPU and say little.
    log_internal_calls: bool = False

    @field_validator("checkpoint")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # replicas may run in another working directory: resolve now
        return str(Path(v).expanduser().absolute()) if "://" not in v else v

    def checkpoint_keys(self) -> CheckpointKeys:
        return checkpoint_keys(self.encryption, self.signing)

    def head_options(self, task: str) -> DeploymentOptions:
        override = self.heads.get(task)
        return override.options if override is not None and override.options is not None else self.head

    def head_checkpoint(self, task: str) -> str:
        override = self.heads.get(task)
        if override is not None and override.checkpoint:
            return str(Path(override.checkpoint).expanduser().absolute())
        return self.checkpoint


class HeadAppConfig(_Strict):
    """A task added after deploy, served by its own Serve app (``build_head_app``) so that adding it
    leaves the running app's encoder and heads untouched; the main app's ingress routes to it."""

    checkpoint: str  # the checkpoint the main app serves: the head must share its encoder weights
    task: str  # the added task's name
    head_checkpoint: str  # a checkpoint holding the task's head, trained against that encoder
    precision: Precision = "fp32"
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)  # as ServeConfig.encryption
    signing: SigningSettings = Field(default_factory=SigningSettings)  # as ServeConfig.signing

    def checkpoint_keys(self) -> CheckpointKeys:
        return checkpoint_keys(self.encryption, self.signing)

    @field_validator("checkpoint", "head_checkpoint")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return str(Path(v).expanduser().absolute())


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def serve_config_from_dict(data: dict[str, Any]) -> ServeConfig:
    """Validate plain data into a :class:`ServeConfig`; errors name the key (``serve.encoder.num_cpus: ...``)."""
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"serve config: {_format_validation_error(exc)}") from None


def load_serve_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None, **fields: Any
) -> ServeConfig:
    """YAML file (optional) + ``key=value`` overrides + explicit fields (CLI flags; None ones skipped)."""
    data = read_yaml_mapping(path, what="serve config") if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    data.update({k: v for k, v in fields.items() if v is not None})
    return serve_config_from_dict(data)
