"""Ray Train shell around the plain-torch loop: ``train_loop_per_worker`` and the driver ``run_ray_training``.

Every worker runs the same core as ``mtl-ray train --no-ray`` (``setup_run``, ``MultiTaskTrainer``,
``fit``). TorchTrainer only starts the workers and the torch.distributed process group (gloo on CPU,
nccl on GPU); the model is *not* wrapped in DDP (no ``prepare_model``): every micro-batch trains one
task that all ranks agree on and ``training.distributed.allreduce_gradients`` averages exactly the
gradients that exist, so N workers compute what one process computes with an N-times larger batch.

Per evaluation every rank calls ``ray.train.report`` with the per-task validation metrics and the
aggregate (gathered over all ranks' shards of the split); rank 0 attaches a checkpoint in the
project's own format, and ``CheckpointConfig`` keeps the best ``ray.num_to_keep`` by
``val/aggregate``. After a worker failure Ray restarts the group and ``ray.train.get_checkpoint()``
hands back the last checkpoint: the run continues exactly where that checkpoint stood.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mtl_ray.config import Config, config_from_dict, config_to_dict, dump_config
from mtl_ray.errors import CheckpointError, ConfigError, MtlRayError

FAULT_STEP_ENV = "MTL_RAY_FAULT_AT_STEP"  # kill one worker once, right after this optimizer step
FAULT_RANK_ENV = "MTL_RAY_FAULT_RANK"  # which rank (default: the last one)
SCORE_ATTRIBUTE = "val/aggregate"
# Driver-side defaults Ray Train propagates to its controller and workers (a user's own setting wins):
RAY_TRAIN_ENV_DEFAULTS = {
    # the controller polls workers every 2 s by default; every report waits for a poll
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Train V2 re-routes print() through its logger *and* the redirected stream: every line twice,
    # and the bytecode that `dill` disassembles into a captured stdout (datasets fingerprinting) leaks
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


# =========================================================================== worker side


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs on every Ray Train worker. ``config``: ``{"config": <Config as dict>, "resume_from": path or
    None, "fault": {"step", "rank", "marker"} or None, "streamed": {task: shard key, size, labels, eval
    splits ref}}``. Rank 0 returns the run's results (test metrics, baselines, history, weight digests)."""
    import ray.train
    import ray.train.torch
    import torch

    from mtl_ray.training import distributed as dist_utils
    from mtl_ray.training.loop import MultiTaskTrainer, fit
    from mtl_ray.training.run import baselines, format_log_line

    _quiet_ray_train_reports()
    cfg = config_from_dict(config["config"])
    rank = ray.train.get_context().get_world_rank()
    # a worker reserves cpus_per_worker CPUs: use that many intra-op threads unless told otherwise
    torch.set_num_threads(cfg.train.num_threads or max(1, int(cfg.ray.cpus_per_worker)))
    setup, streams = _setup_worker_data(cfg, config.get("streamed") or {})
    trainer = MultiTaskTrainer(
        cfg,
        setup.model,
        setup.data,
        setup.tokenizer.pad_token_id,
        device=ray.train.torch.get_device(),
        train_streams=streams,
    )
    restored_from = _restore(trainer, cfg, config.get("resume_from"))
    recorder = _open_recorder(Path(cfg.train.output_dir), trainer.step) if rank == 0 else None
    if rank == 0 and restored_from:
        print(f"resumed at step {trainer.step} from {restored_from}", flush=True)
    fault = config.get("fault")
    first_step_at: list[float] = []

    def on_step(metrics: dict[str, float]) -> None:
        if not first_step_at:
            first_step_at.append(time.time())
        if fault and trainer.step == fault["step"] and rank == fault["rank"]:
            _inject_fault(Path(fault["marker"]), trainer.step)

    def on_log(metrics: dict[str, float]) -> None:
        if recorder is not None:
            recorder.log(metrics)
            print(format_log_line(metrics, cfg.train.max_steps), flush=True)

    def on_eval(step: int, per_task: dict[str, dict[str, float]], aggregate: float) -> None:
        _report_eval(cfg, trainer, setup.tokenizer, recorder, step, per_task, aggregate)

    start = time.perf_counter()
    fit(trainer, on_step=on_step, on_log=on_log, on_eval=on_eval)
    train_seconds = time.perf_counter() - start
    test = trainer.evaluate("test")  # every rank scores its share; gathered on all ranks
    digests = dist_utils.gather_objects(param_digest(trainer.model))
    if recorder is None:
        return None
    recorder.close()
    return {
        "steps": trainer.step,
        "examples_seen": trainer.examples_seen,
        "train_seconds": train_seconds,
        "first_step_unix": first_step_at[0] if first_step_at else None,
        "restored_from": restored_from,
        "test": test,
        "test_aggregate": trainer.aggregate(test) if test else None,
        "majority_baseline": baselines(setup.data, "test"),
        "history": recorder.history,
        "rank_param_digests": digests,
    }


def _quiet_ray_train_reports() -> None:
    """Ray Train V2 logs every report with all its metrics at INFO on every worker, through a logger
    named after its source file (so LoggingConfig does not reach it); our own lines say it shorter."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: keep its logs
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _setup_worker_data(cfg: Config, streamed: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Data + model on this worker: in-memory tasks loaded here, streamed tasks from Ray Data shards."""
    from mtl_ray.training.run import setup_run

    if not streamed:
        return setup_run(cfg), {}
    from mtl_ray.ray.data import worker_inputs

    preloaded, streams = worker_inputs(cfg, streamed)
    return setup_run(cfg, preloaded), streams


def _restore(trainer: Any, cfg: Config, resume_from: str | None) -> str | None:
    """Ray's own checkpoint after a worker failure wins over the explicit ``--resume`` path."""
    import ray.train

    from mtl_ray.training.run import restore_trainer

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray.train.Checkpoint(resume_from)  # a local path or a storage URI
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        restore_trainer(trainer, cfg, path)
    return str(checkpoint.path)


def _open_recorder(out: Path, step: int) -> Any:
    """Rank 0's metrics.jsonl + TensorBoard writer. A (re)started run keeps the records up to the step
    it starts from and drops the rest, so the history never holds a step twice; a fresh run (step 0)
    starts an empty history."""
    from mtl_ray.training.run import RunRecorder

    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.jsonl"
    kept: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("step", 0) <= step:
                    kept.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    recorder = RunRecorder(out, purge_step=step + 1 if step > 0 else None)
    recorder.history.extend(kept)
    return recorder


def _report_eval(
    cfg: Config,
    trainer: Any,
    tokenizer: Any,
    recorder: Any,
    step: int,
    per_task: dict[str, dict[str, float]],
    aggregate: float,
) -> None:
    """Every rank reports (``ray.train.report`` is a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    from mtl_ray.training.checkpointing import save_training_checkpoint
    from mtl_ray.training.run import flatten_metrics

    metrics = {"step": step, SCORE_ATTRIBUTE: aggregate, **flatten_metrics(per_task, "val")}
    name = f"step-{step:07d}"
    if recorder is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    recorder.log(metrics)
    print(f"eval step {step}: aggregate={aggregate:.4f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtl-ray-ckpt-", ignore_cleanup_errors=True) as tmp:
        path = save_training_checkpoint(
            Path(tmp) / name,
            cfg,
            trainer.model,
            tokenizer,
            trainer.state_dict(),
            {"validation": per_task, "aggregate": aggregate},
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)), checkpoint_dir_name=name)
    # A report is only a queued message until the controller's next poll: a worker that dies before
    # then takes the checkpoint with it and the restart begins at step 0. Wait until it is committed
    # (at most one poll interval, once per evaluation) so a failure always resumes from it.
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _inject_fault(marker: Path, step: int) -> None:
    """Kill this worker process (SIGKILL, as a crashed node would) the first time only."""
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(f"killed pid {os.getpid()} after step {step}\n")
        f.flush()
        os.fsync(f.fileno())
    print(f"fault injection: killing this worker (pid {os.getpid()}) after step {step}", flush=True)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def param_digest(model: Any) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# =========================================================================== driver side


def fault_from_env(out: Path, num_workers: int) -> dict[str, Any] | None:
    """``MTL_RAY_FAULT_AT_STEP=s`` [``MTL_RAY_FAULT_RANK=r``]: kill rank r once after step s; the marker
    file in ``out`` makes the restarted attempt run through."""
    raw = os.environ.get(FAULT_STEP_ENV, "").strip()
    if not raw:
        return None
    try:
        step = int(raw)
        rank = int(os.environ.get(FAULT_RANK_ENV, str(num_workers - 1)))
    except ValueError:
        raise ConfigError(f"{FAULT_STEP_ENV} / {FAULT_RANK_ENV}: expected integers, got {raw!r}") from None
    if step < 1 or not 0 <= rank < num_workers:
        raise ConfigError(f"{FAULT_STEP_ENV}={step} / {FAULT_RANK_ENV}={rank}: need step >= 1 and 0 <= rank < workers")
    return {"step": step, "rank": rank, "marker": str(out / f".fault-injected-step-{step}-rank-{rank}")}


def _is_uri(path: str) -> bool:
    return "://" in path


def absolute_paths(cfg: Config) -> Config:
    """The config with local paths made absolute (workers may start in another directory)."""
    d = config_to_dict(cfg)
    d["train"]["output_dir"] = str(Path(cfg.train.output_dir).expanduser().resolve())
    d["data"]["cache_dir"] = str(cfg.data.resolved_cache_dir())
    for task in d["tasks"].values():
        src = task["source"]
        if not src.startswith("builtin:") and not _is_uri(src) and Path(src).expanduser().exists():
            task["source"] = str(Path(src).expanduser().resolve())
    if d["model"].get("init_from") and not _is_uri(d["model"]["init_from"]):
        d["model"]["init_from"] = str(Path(d["model"]["init_from"]).expanduser().resolve())
    enc = d["model"]["encoder"]
    if not enc.startswith("builtin:") and Path(enc).expanduser().exists():
        d["model"]["encoder"] = str(Path(enc).expanduser().resolve())
    return config_from_dict(d)


def storage_location(cfg: Config, storage_path: str | None) -> str:
    """Ray Train storage: a URI as given, a local path made absolute (Ray needs that)."""
    path = storage_path or cfg.ray.storage_path or str(Path(cfg.train.output_dir) / "ray")
    return path if _is_uri(path) else str(Path(path).expanduser().resolve())


def precheck_resume(path: str, cfg: Config) -> None:
    """Cheap driver-side check of a ``--resume`` checkpoint (task names, encoder, sharing depth) so a
    mismatch fails before any worker starts; workers repeat the full check."""
    if _is_uri(path):
        return
    from mtl_ray.checkpoint import load_meta

    meta = load_meta(path)
    saved_tasks = sorted(meta.get("specs", {}))
    if saved_tasks != sorted(cfg.tasks):
        raise CheckpointError(f"{path}: trained tasks {saved_tasks}, this config has {sorted(cfg.tasks)}")
    saved_model = meta.get("config", {}).get("model", {})
    for key in ("encoder", "sharing_depth"):
        if saved_model.get(key) != getattr(cfg.model, key):
            raise CheckpointError(
                f"{path}: model.{key} is {saved_model.get(key)!r} in the checkpoint, {getattr(cfg.model, key)!r} here"
            )


def prepare_assets(cfg: Config) -> None:
    """Fetch / build the built-in corpora and encoder once on the driver (idempotent), so workers on
    this node find them ready instead of racing to build them."""
    builtin = sorted({t.source.split(":", 1)[1] for t in cfg.tasks.values() if t.source.startswith("builtin:")})
    if builtin:
        from mtl_ray.data.prepare import prepare_builtin

        prepare_builtin(builtin, cfg.data, progress=False)
    if cfg.model.encoder.startswith("builtin:"):
        from mtl_ray.data.assets import encoder_dir

        encoder_dir(cfg.data.resolved_cache_dir(), progress=False)


def check_task_data(cfg: Config, skip: set[str]) -> None:
    """Read every in-memory task once on the driver, so a missing file or column fails here in
    seconds (a worker would fail the same way ``ray.max_failures`` + 1 times). Every worker holds
    these tasks in memory anyway; streamed tasks (``skip``) are checked by their own planning."""
    from mtl_ray.data.sources import load_task_splits

    for name in sorted(set(cfg.tasks) - skip):
        load_task_splits(cfg.tasks[name], cfg.data)


def _user_error(exc: BaseException) -> MtlRayError | None:
    """The project error (config, data, checkpoint) that made a worker fail, if that is what happened."""
    failures = getattr(exc, "worker_failures", None) or {}
    seen: set[int] = set()
    stack: list[BaseException] = list(failures.values())
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, MtlRayError):
            # a RayTaskError "as instance of cause" subclasses the user's error; prefer the original
            return cause if isinstance(cause, MtlRayError) else e
        for nxt in (cause, e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return None


def run_ray_training(
    cfg: Config,
    resume_from: str | None = None,
    address: str | None = None,
    *,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` with Ray Train (joins ``address`` / ``ray.address`` / ``$RAY_ADDRESS``, else starts a
    local Ray). Writes metrics.jsonl, TensorBoard, training_curves.png and summary.json to
    ``train.output_dir`` and returns the summary (``best_checkpoint`` is the best by ``val/aggregate``)."""
    from mtl_ray.ray.session import ResourceRequest, check_resources, ray_session, resolve_address
    from mtl_ray.training.run import write_run_outputs

    cfg = absolute_paths(cfg)
    out = Path(cfg.train.output_dir)
    storage = storage_location(cfg, storage_path)
    if resume_from is not None:
        resume_from = resume_from if _is_uri(resume_from) else str(Path(resume_from).expanduser().resolve())
        precheck_resume(resume_from, cfg)
    per_worker = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        per_worker["GPU"] = 1.0
    # streaming: Ray Data tasks need CPUs the workers do not hold, or ingest deadlocks
    extra = {"CPU": cfg.ray.data_cpus} if cfg.ray.streaming else None
    request = ResourceRequest(cfg.ray.num_workers, per_worker, extra, "kept free for Ray Data (ray.data_cpus)")
    fault = fault_from_env(out, cfg.ray.num_workers)
    for key, value in RAY_TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)

    with ray_session(resolve_address(address, cfg.ray.address)):
        check_resources(request)
        prepare_assets(cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        streamed = _plan_streaming(cfg)
        check_task_data(cfg, skip=set(streamed))
        trainer = _build_trainer(cfg, storage, resume_from, fault, streamed)
        started = time.time()
        result = _fit(trainer)
        wall = time.time() - started

    value = result.return_value or {}
    best = result.get_best_checkpoint(SCORE_ATTRIBUTE, "max") if result.best_checkpoints else None
    best_metrics = next((m for c, m in result.best_checkpoints or [] if best is not None and c.path == best.path), {})
    digests = value.get("rank_param_digests", [])
    if len(set(digests)) > 1:
        print(f"warning: ranks ended with different weights (digests {digests})", file=sys.stderr)
    first = value.get("first_step_unix")
    summary = {
        "output_dir": str(out),
        "steps": value.get("steps"),
        "train_seconds": value.get("train_seconds"),
        "wall_seconds": wall,
        "time_to_first_step_s": (first - started) if first else None,
        "examples_seen": value.get("examples_seen"),
        "num_workers": cfg.ray.num_workers,
        "global_batch_size": cfg.train.batch_size * cfg.ray.num_workers * cfg.train.grad_accum_steps,
        "best_checkpoint": best.path if best is not None else None,
        "best_validation_aggregate": best_metrics.get(SCORE_ATTRIBUTE),
        "ray_run_path": result.path,
        "restored_from": value.get("restored_from"),
        "rank_param_digests": digests,
        "test": value.get("test", {}),
        "test_aggregate": value.get("test_aggregate"),
        "majority_baseline": value.get("majority_baseline", {}),
    }
    return write_run_outputs(out, summary, value.get("history", []))


def _plan_streaming(cfg: Config) -> dict[str, Any]:
    """Ray Data pipelines of the streamed tasks (``ray.streaming``), planned on the driver."""
    if not cfg.ray.streaming:
        return {}
    from mtl_ray.ray.data import plan_streaming

    streamed = plan_streaming(cfg, tokenizer_location(cfg))
    others = sorted(set(cfg.tasks) - set(streamed))
    print(
        f"streaming through Ray Data: {', '.join(streamed) or 'no task'}"
        + (f"; loaded in memory on every worker: {', '.join(others)}" if others else ""),
        flush=True,
    )
    return streamed


def tokenizer_location(cfg: Config) -> str:
    """Where Ray Data tasks load the tokenizer from: the extracted built-in, a folder, or a hub name."""
    if cfg.model.encoder.startswith("builtin:"):
        from mtl_ray.data.assets import encoder_dir

        return str(encoder_dir(cfg.data.resolved_cache_dir(), progress=False))
    return cfg.model.encoder


def _build_trainer(
    cfg: Config, storage: str, resume_from: str | None, fault: dict[str, Any] | None, streamed: dict[str, Any]
) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = Path(cfg.train.output_dir)
    name = f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    stream_info = {
        t.name: {"key": t.key, "num_examples": t.num_examples, "label_names": t.label_names, "eval_ref": t.eval_ref}
        for t in streamed.values()
    }
    data_kwargs: dict[str, Any] = {}
    if streamed:
        from mtl_ray.ray.data import data_config

        data_kwargs = {"datasets": {t.key: t.dataset for t in streamed.values()}, "dataset_config": data_config(cfg)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config_to_dict(cfg),
            "resume_from": resume_from,
            "fault": fault,
            "streamed": stream_info,
        },
        **data_kwargs,
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.ray.num_to_keep,
                checkpoint_score_attribute=SCORE_ATTRIBUTE,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            # our own per-interval line replaces Ray Train's per-report INFO logs
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def _fit(trainer: Any) -> Any:
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        user = _user_error(exc)
        if user is not None:
            raise type(user)(str(user)) from None
        raise


__all__ = [
    "train_loop_per_worker",
    "run_ray_training",
    "fault_from_env",
    "param_digest",
    "FAULT_STEP_ENV",
    "FAULT_RANK_ENV",
]
