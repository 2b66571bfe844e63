"""The typed Serve app builder and the Serve config file it is deployed from.

    serve run mtl_ray.ray.serve.app:build_app checkpoint=/abs/path/to/checkpoint
    mtl-ray serve build --checkpoint PATH -o serve/config.yaml && serve run serve/config.yaml

:func:`build_app` verifies every checkpoint it will serve (manifest sizes + sha256) before binding
anything, so a tampered or truncated checkpoint fails the deploy with the file that is wrong.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from mtl_ray.errors import ConfigError
from mtl_ray.ray.serve.deployments import EncoderDeployment, HeadDeployment, IngressDeployment, head_name
from mtl_ray.serving.checkpoint_info import CheckpointInfo, read_checkpoint_info
from mtl_ray.serving.config import HeadAppConfig, HeadOptions, ServeConfig, serve_config_from_dict
from mtl_ray.serving.served_task import ServedTask
from mtl_ray.tasks.base import TaskSpec

IMPORT_PATH = "mtl_ray.ray.serve.app:build_app"
HEAD_APP_IMPORT_PATH = "mtl_ray.ray.serve.app:build_head_app"
APP_NAME = "mtl"
INGRESS, ENCODER = "Ingress", "Encoder"


def served_specs(cfg: ServeConfig, info: CheckpointInfo) -> dict[str, TaskSpec]:
    """The tasks to serve: the checkpoint's, plus tasks added by ``heads.<task>.checkpoint``,
    restricted to ``cfg.tasks``. Added heads' checkpoints are verified here. A training-only task (mlm)
    is never served: no head deployment, refused when named."""
    specs = {t: s for t, s in info.specs.items() if s.served}
    for task in [*(cfg.tasks or ()), *cfg.heads]:
        if task in info.specs and not info.specs[task].served:
            raise ConfigError(
                f"serve config: {task!r} is a {info.specs[task].type} training objective, not a served task; "
                f"served: {', '.join(sorted(specs))}"
            )
    for task, head in cfg.heads.items():
        if task not in specs:
            if not head.checkpoint:
                raise ConfigError(
                    f"serve config: heads.{task}: the checkpoint has no task {task!r}; give heads.{task}.checkpoint "
                    f"to add it (checkpoint tasks: {', '.join(sorted(info.specs))})"
                )
            added = read_checkpoint_info(head.checkpoint, keys=cfg.checkpoint_keys())
            if task not in added.specs:
                raise ConfigError(f"serve config: heads.{task}.checkpoint: {added.path} has no task {task!r}")
            specs[task] = added.specs[task]
    if cfg.tasks is not None:
        unknown = [t for t in cfg.tasks if t not in specs]
        if unknown or not cfg.tasks:
            raise ConfigError(
                f"serve config: tasks: unknown {unknown or '(empty list)'}; valid: {', '.join(sorted(specs))}"
            )
        specs = {t: specs[t] for t in cfg.tasks}
    for task in cfg.heads:
        if task not in specs:
            raise ConfigError(f"serve config: heads.{task}: not a served task; served: {', '.join(sorted(specs))}")
    return specs


def head_expect(spec: TaskSpec) -> dict[str, Any]:
    """What a head replica is told about its task: what a replacement must keep (type, max_length) and
    what the registry says about it (is_pair, supervised), so a lean head needs no registry (no torch)."""
    return {"type": spec.type, "max_length": spec.max_length, "is_pair": spec.is_pair, "supervised": spec.supervised}


def build_app(args: ServeConfig) -> Application:
    """Ingress -> Encoder -> one Head per task, each with its options from ``args``."""
    cfg = args if isinstance(args, ServeConfig) else serve_config_from_dict(dict(args))
    keys = cfg.checkpoint_keys()
    # verify (signature first, with a trusted key) before anything is bound or loaded
    info = read_checkpoint_info(cfg.checkpoint, keys=keys)
    specs = served_specs(cfg, info)
    for task in specs:
        if cfg.head_checkpoint(task) != cfg.checkpoint:
            read_checkpoint_info(cfg.head_checkpoint(task), keys=keys)  # fail the deploy now, not in a replica
    internal = {"logging_config": {"enable_access_log": cfg.log_internal_calls}}
    encoder = EncoderDeployment.options(name=ENCODER, **internal, **cfg.encoder.serve_options()).bind(
        cfg.checkpoint,
        cfg.precision,
        "auto",
        cfg.batching.max_batch_size,
        cfg.batching.batch_wait_timeout_s,
        cfg.batching.max_concurrent_batches,
        keys.as_dict(),
    )
    heads = {
        task: HeadDeployment.options(
            name=head_name(task),
            user_config={"checkpoint": cfg.head_checkpoint(task)},
            **internal,
            **cfg.head_options(task).serve_options(),
        ).bind(cfg.checkpoint, task, cfg.precision, "auto", head_expect(spec), keys.as_dict())
        for task, spec in specs.items()
    }
    return IngressDeployment.options(name=INGRESS, **cfg.ingress.serve_options()).bind(
        encoder,
        heads,
        {t: ServedTask.from_spec(s).to_dict() for t, s in specs.items()},
        str(info.tokenizer_dir),
        cfg.limits.model_dump(),
        cfg.auth.model_dump(),
        cfg.batching.max_batch_size,
        cfg.head_retries,
    )


def build_head_app(args: HeadAppConfig) -> Application:
    """One added task's head deployment as an app of its own (not exposed over HTTP)."""
    cfg = args if isinstance(args, HeadAppConfig) else HeadAppConfig.model_validate(dict(args))
    keys = cfg.checkpoint_keys()
    read_checkpoint_info(cfg.checkpoint, keys=keys)  # verified here; the head checks it shares these encoder weights
    head = read_checkpoint_info(cfg.head_checkpoint, keys=keys)
    if cfg.task not in head.specs:
        raise ConfigError(f"head app: {head.path} has no task {cfg.task!r}; it has: {', '.join(sorted(head.specs))}")
    spec = head.specs[cfg.task]
    return HeadDeployment.options(
        name=head_name(cfg.task),
        user_config={"checkpoint": cfg.head_checkpoint},
        logging_config={"enable_access_log": False},
        **HeadOptions().serve_options(),
    ).bind(cfg.checkpoint, cfg.task, cfg.precision, "auto", head_expect(spec), keys.as_dict())


def head_app_name(app_name: str, task: str) -> str:
    return f"{app_name}-head-{task}"


def serve_config(
    cfg: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> dict[str, Any]:
    """A Serve config (``serve run`` / ``serve deploy``) for ``cfg``.

    App ``args`` carry what the replicas compute (changing them restarts the app); the
    ``deployments`` section carries each deployment's replicas/resources and each head's checkpoint
    (``user_config``), so editing one of those updates only that deployment. A task the checkpoint
    lacks (``heads.<task>.checkpoint``) becomes an app of its own that the ingress routes to (its
    ``user_config.extra_heads``), so adding it later touches neither the encoder nor the other heads.
    ``ssl_certfile`` / ``ssl_keyfile``: HTTPS on Serve's proxy (``http_options``); only paths are written."""
    info = read_checkpoint_info(cfg.checkpoint, keys=cfg.checkpoint_keys())
    specs = served_specs(cfg, info)
    added = [t for t in specs if t not in info.specs]
    args = cfg.model_dump(mode="json", exclude={"ingress", "encoder", "head", "heads"})
    if cfg.tasks is not None:
        args["tasks"] = [t for t in cfg.tasks if t not in added]
    ingress = {"name": INGRESS, **cfg.ingress.serve_options()}
    if added:
        ingress["user_config"] = {"extra_heads": {t: head_app_name(app_name, t) for t in added}}

    def head_entry(t: str) -> dict[str, Any]:
        return {
            "name": head_name(t),
            "user_config": {"checkpoint": cfg.head_checkpoint(t)},
            **cfg.head_options(t).serve_options(),
        }

    applications: list[dict[str, Any]] = [
        {
            "name": app_name,
            "route_prefix": route_prefix,
            "import_path": IMPORT_PATH,
            "args": args,
            "deployments": [ingress, {"name": ENCODER, **cfg.encoder.serve_options()}]
            + [head_entry(t) for t in specs if t not in added],
        }
    ]
    for t in added:
        head_args = HeadAppConfig(
            checkpoint=cfg.checkpoint,
            task=t,
            head_checkpoint=cfg.head_checkpoint(t),
            precision=cfg.precision,
            encryption=cfg.encryption,
            signing=cfg.signing,
        )
        applications.append(
            {
                "name": head_app_name(app_name, t),
                "route_prefix": None,
                "import_path": HEAD_APP_IMPORT_PATH,
                "args": head_args.model_dump(mode="json"),
                "deployments": [head_entry(t)],
            }
        )
    http = {"host": host, "port": port, **https_options(ssl_certfile, ssl_keyfile)}
    return {"proxy_location": "HeadOnly", "http_options": http, "applications": applications}


def https_options(ssl_certfile: str | None, ssl_keyfile: str | None) -> dict[str, str]:
    """Serve ``http_options`` entries for HTTPS (both files or neither), as absolute paths."""
    from pathlib import Path

    if not ssl_certfile and not ssl_keyfile:
        return {}
    if not (ssl_certfile and ssl_keyfile):
        raise ConfigError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    out = {}
    for name, value in (("ssl_certfile", ssl_certfile), ("ssl_keyfile", ssl_keyfile)):
        path = Path(value).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"--{name.replace('_', '-')}: {path} does not exist")
        out[name] = str(path)
    return out


def serve_config_yaml(config: dict[str, Any], command: str) -> str:
    """The config as YAML, opening with the commands that produced and run it."""
    import yaml

    header = (
        f"# Generated by: {command}\n"
        "# Run locally:  serve run <this file>                       (starts a local Ray if none is running)\n"
        "# Deploy:       serve deploy <this file> -a http://127.0.0.1:8265\n"
        "# Replace one task's head in place: set its Head-<task> user_config.checkpoint to a checkpoint trained\n"
        "# against the same encoder and redeploy; only that deployment is reconfigured. Add a task: rebuild with\n"
        "# --set heads.<task>.checkpoint=PATH (a new app + the ingress's user_config; the encoder keeps running).\n"
        "# Editing `args` restarts every replica of that app; editing one deployment's options updates only it.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)
