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

import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from mtl_ray.config import Config, config_from_dict, config_to_dict, dump_config
from mtl_ray.errors import MtlRayError
from mtl_ray.ray.storage import RunFolder, check_writable
from mtl_ray.training.checkpointing import step_checkpoint_name
from mtl_ray.training.driver import (
    FAULT_RANK_ENV,
    FAULT_STEP_ENV,
    absolute_paths,
    check_task_data,
    fault_from_env,
    is_uri,
    param_digest,
    precheck_resume,
    prepare_assets,
    step_delay_from_env,
    storage_location,
    tokenizer_location,
)
from mtl_ray.training.recorder import SCORE_ATTRIBUTE

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

    from mtl_ray.training import distributed as dist_utils
    from mtl_ray.training.builders import build_trainer
    from mtl_ray.training.loop import fit
    from mtl_ray.training.run import EvalCheckpointer, format_log_line, open_recorder, set_torch_threads, test_results

    _quiet_ray_train_reports()
    cfg = config_from_dict(config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    set_torch_threads(cfg, cfg.ray.cpus_per_worker)  # a worker reserves cpus_per_worker CPUs
    setup, streams = _setup_worker_data(cfg, config.get("streamed") or {})
    trainer = build_trainer(
        cfg,
        setup.model,
        setup.data,
        setup.tokenizer.pad_token_id,
        device=ray.train.torch.get_device(),
        train_streams=streams,
        # the global batch is max workers' worth of slices whatever the current size (elastic runs)
        data_parallel_size=cfg.ray.max_workers,
    )
    restored_from = _restore(trainer, cfg, config.get("resume_from"))
    run = _run_folder(config, cfg)  # cfg.train.output_dir is run.local
    if rank == 0:
        run.pull("metrics.jsonl")  # a restart on another node continues the run's own log (URI storage)
    recorder = open_recorder(Path(cfg.train.output_dir), trainer.step) if rank == 0 else None
    if rank == 0 and restored_from:
        print(f"resumed at step {trainer.step} from {restored_from}", flush=True)
    if rank == 0 and cfg.ray.elastic:
        print(f"elastic: {world_size} workers of {cfg.ray.num_workers} from step {trainer.step}", flush=True)
    fault = config.get("fault")
    delay = config.get("delay")
    first_step_at: list[float] = []

    def on_step(metrics: dict[str, float]) -> None:
        if not first_step_at:
            first_step_at.append(time.time())
        if fault and trainer.step == fault["step"] and rank == fault["rank"]:
            _inject_fault(Path(fault["marker"]), trainer.step)
        if delay and (delay["while"] is None or os.path.exists(delay["while"])):
            time.sleep(delay["seconds"])  # test switch (training.driver.STEP_DELAY_ENV)

    def on_log(metrics: dict[str, float]) -> None:
        if recorder is not None:
            recorder.log({**metrics, "workers": world_size})  # which worker count ran the step
            print(format_log_line(metrics, cfg.train.max_steps), flush=True)

    checkpointer = EvalCheckpointer(
        cfg, trainer, setup.tokenizer, writer=rank == 0, recorder=recorder, publish=report_to_ray_train
    )

    def on_eval(step: int, per_task: dict[str, dict[str, float]], aggregate: float) -> None:
        checkpointer(step, per_task, aggregate)
        if recorder is not None:  # a URI storage gets the run's files after every evaluation
            run.push()

    start = time.perf_counter()
    fit(trainer, on_step=on_step, on_log=on_log, on_eval=on_eval)
    train_seconds = time.perf_counter() - start
    results = test_results(trainer, setup.data)  # every rank scores its share; gathered on all ranks
    digests = dist_utils.gather_objects(param_digest(trainer.model))
    node_ids = dist_utils.gather_objects(ray.get_runtime_context().get_node_id())  # where each rank ran
    if recorder is None:
        return None
    recorder.close()
    run.push()
    return {
        "steps": trainer.step,
        "examples_seen": trainer.examples_seen,
        "train_seconds": train_seconds,
        "first_step_unix": first_step_at[0] if first_step_at else None,
        "restored_from": restored_from,
        "world_size": world_size,
        **results,
        "history": recorder.history,
        "rank_param_digests": digests,
        "rank_node_ids": node_ids,
    }


def _run_folder(config: dict[str, Any], cfg: Config) -> RunFolder:
    """The run's folder from the driver; a caller without one (a Tune trial) writes to its output_dir."""
    if config.get("run"):
        return RunFolder.from_dict(config["run"])
    out = Path(cfg.train.output_dir)
    return RunFolder.create(str(out.parent), out.name)


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


def report_to_ray_train(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """:class:`~mtl_ray.training.run.EvalCheckpointer`'s ``publish`` on a Ray Train worker. Every rank
    reports (``ray.train.report`` is a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    name = step_checkpoint_name(int(metrics["step"]))
    if checkpoint is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)), checkpoint_dir_name=name)
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


# =========================================================================== driver side


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
    local Ray). Writes config.yaml, metrics.jsonl, TensorBoard, training_curves.png, summary.json and the
    checkpoints to one run folder, ``<storage>/<run name>`` (``summary["output_dir"]``; see
    :mod:`mtl_ray.ray.storage`), and returns the summary (``best_checkpoint`` is the best by ``val/aggregate``)."""
    from mtl_ray.ray.session import check_resources, ray_session, resolve_address
    from mtl_ray.training.run import write_run_outputs

    cfg = absolute_paths(cfg)
    storage = storage_location(cfg, storage_path)
    check_writable(storage)  # before Ray starts: a typo'd bucket or read-only mount fails in seconds
    # every output of the run (metrics, TensorBoard, curves, summary, config, checkpoints) in one folder
    run = RunFolder.create(storage, run_name(cfg))
    cfg = _with_output_dir(cfg, run.local)
    out = Path(run.local)
    if resume_from is not None:
        resume_from = resume_from if is_uri(resume_from) else str(Path(resume_from).expanduser().resolve())
        precheck_resume(resume_from, cfg)
    request = resource_request(cfg)
    fault = fault_from_env(out, cfg.ray.max_workers)
    apply_env_defaults()

    with ray_session(resolve_address(address, cfg.ray.address)):
        check_resources(request)
        prepare_assets(cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        run.push()
        print(f"run folder: {run.location}", flush=True)
        streamed = _plan_streaming(cfg)
        check_task_data(cfg, skip=set(streamed))
        trainer = _build_trainer(cfg, storage, resume_from, fault, streamed, run)
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
        "output_dir": run.location,
        "steps": value.get("steps"),
        "train_seconds": value.get("train_seconds"),
        "wall_seconds": wall,
        "time_to_first_step_s": (first - started) if first else None,
        "first_step_unix": first,  # the last attempt's first step (after a restart: the resumed one)
        "examples_seen": value.get("examples_seen"),
        "num_workers": cfg.ray.num_workers,  # an int, or [min, max] when elastic
        "final_num_workers": value.get("world_size"),  # the last attempt's worker count
        "global_batch_size": global_batch_size(cfg),
        "best_checkpoint": best.path if best is not None else None,
        "best_validation_aggregate": best_metrics.get(SCORE_ATTRIBUTE),
        "best_step": best_metrics.get("step"),
        "early_stopping": value.get("early_stopping"),
        "ray_run_path": result.path,
        "restored_from": value.get("restored_from"),
        "rank_param_digests": digests,
        "rank_node_ids": value.get("rank_node_ids", []),
        "test": value.get("test", {}),
        "test_aggregate": value.get("test_aggregate"),
        "majority_baseline": value.get("majority_baseline", {}),
    }
    write_run_outputs(out, summary, value.get("history", []))
    run.push()
    return summary


def global_batch_size(cfg: Config) -> int:
    """Examples per optimizer step: ``train.batch_size × max workers × train.grad_accum_steps``, whatever
    the current worker count of an elastic run (see :func:`mtl_ray.training.loop.slices_of_rank`)."""
    return cfg.train.batch_size * cfg.ray.max_workers * cfg.train.grad_accum_steps


def resource_request(cfg: Config) -> Any:
    """What the run needs before it can start: ``ray.num_workers`` (its min when elastic) workers."""
    from mtl_ray.ray.session import ResourceRequest

    per_worker = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        per_worker["GPU"] = 1.0
    # streaming: Ray Data tasks need CPUs the workers do not hold, or ingest deadlocks
    extra = {"CPU": cfg.ray.data_cpus} if cfg.ray.streaming else None
    key = f"ray.num_workers min {cfg.ray.min_workers} of {cfg.ray.num_workers}" if cfg.ray.elastic else ""
    return ResourceRequest(cfg.ray.min_workers, per_worker, extra, "kept free for Ray Data (ray.data_cpus)", key)


def run_name(cfg: Config) -> str:
    """``<output_dir name>-<date>-<time>-<6 hex>``: Ray Train's run name, the run folder's name."""
    return f"{Path(cfg.train.output_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _with_output_dir(cfg: Config, output_dir: str) -> Config:
    d = config_to_dict(cfg)
    d["train"]["output_dir"] = output_dir
    return config_from_dict(d)


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


def apply_env_defaults() -> None:
    """Ray Train's driver-side settings (a user's own environment wins); before any TorchTrainer."""
    for key, value in RAY_TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def build_torch_trainer(
    cfg: Config,
    *,
    name: str,
    storage: str,
    loop_config: dict[str, Any],
    num_to_keep: int,
    resources_per_worker: dict[str, float] | None = None,
    callbacks: list[Any] | None = None,
    max_failures: int = 0,
    rank_by_score: bool = True,
    **data_kwargs: Any,
) -> Any:
    """The one TorchTrainer of mtl-ray (``mtl-ray train`` and multi-worker Tune trials): ``cfg.ray``'s
    workers around :func:`train_loop_per_worker`, gloo on CPU / nccl on GPU, the best ``num_to_keep``
    checkpoints by ``val/aggregate`` (``rank_by_score=False``: the latest ones), Ray Train's own per-report
    logs off (our log line replaces them)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    apply_env_defaults()
    per_worker = resources_per_worker or {"CPU": cfg.ray.cpus_per_worker}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            # elastic [min, max]: Ray Train starts with as many as fit (>= min) and restarts the group from
            # the latest checkpoint when workers are lost or, every elastic_resize_interval_s, more fit
            num_workers=tuple(cfg.ray.num_workers) if cfg.ray.elastic else cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker=per_worker,
            placement_strategy=cfg.ray.placement_strategy,
            elastic_resize_monitor_interval_s=cfg.ray.elastic_resize_interval_s,
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep,
                checkpoint_score_attribute=SCORE_ATTRIBUTE if rank_by_score else None,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        **data_kwargs,
    )


def _build_trainer(
    cfg: Config,
    storage: str,
    resume_from: str | None,
    fault: dict[str, Any] | None,
    streamed: dict[str, Any],
    run: RunFolder,
) -> Any:
    stream_info = {
        t.name: {"key": t.key, "num_examples": t.num_examples, "label_names": t.label_names, "eval_ref": t.eval_ref}
        for t in streamed.values()
    }
    data_kwargs: dict[str, Any] = {}
    if streamed:
        from mtl_ray.ray.data import data_config

        data_kwargs = {"datasets": {t.key: t.dataset for t in streamed.values()}, "dataset_config": data_config(cfg)}
    return build_torch_trainer(
        cfg,
        name=run.location.rstrip("/").rsplit("/", 1)[-1],
        storage=storage,
        loop_config={
            "config": config_to_dict(cfg),
            "resume_from": resume_from,
            "fault": fault,
            "delay": step_delay_from_env(),
            "streamed": stream_info,
            "run": run.to_dict(),
        },
        num_to_keep=cfg.ray.num_to_keep,
        max_failures=cfg.ray.max_failures,
        **data_kwargs,
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
