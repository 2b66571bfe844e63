"""Ray Tune shell: one trial function over the plain-torch core, the search driver and resume.

Every trial runs :func:`tune_trial`: it applies its overrides to the base config and trains with the
core loop (``setup_run`` + ``MultiTaskTrainer`` + ``fit``) in the trial's own process, reporting
``tune.report({"step", "val/aggregate", "val/<task>/<metric>", ...}, checkpoint=...)`` at every
evaluation, so ASHA can stop it at a rung. With ``tune.workers_per_trial > 1`` the same function
instead builds its own ``TorchTrainer`` around ``mtl_ray.ray.train.train_loop_per_worker`` whose reports reach
Tune through ``TuneReportCallback`` (Ray 2.60 / Train V2 cannot tune a ``TorchTrainer`` directly).

The trial list (single-task baselines, the default config, then the search) is drawn in plain Python
(``mtl_ray.tuning.trials``, checked by ``mtl_ray.tuning.experiment.plan``) before Ray starts and handed to Tune as one grid axis, so trials run in that
order and a resumed experiment runs the same trials. With ``tune.search_alg: optuna`` the search is
adaptive and cannot be pre-drawn: :class:`~mtl_ray.ray.searcher.FixedThenSearch` hands Tune the same fixed trials first, then
``num_samples`` trials suggested by Ray Tune's ``OptunaSearch`` (TPE, seeded by ``tune.seed``) over
Tune distributions built from the space (:func:`tune_search_space`). It is one Tune experiment either
way: one trial function, one scheduler, one result grid, and ``Tuner.restore`` restores the searcher
(Optuna's study included) with the trials. Single-task baselines report under ``single/``:
ASHA ranks ``val/aggregate`` only, so it never compares them with multi-task trials, and they always
get the full budget (``TUNE_DISABLE_STRICT_METRIC_CHECKING`` lets them omit the scheduler's metric).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from mtl_ray.config import Config, config_from_dict, config_to_dict, dump_config
from mtl_ray.errors import MtlRayError
from mtl_ray.ray.searcher import optuna_search, quiet_optuna
from mtl_ray.ray.storage import STAGING_ROOT, RunFolder, check_writable, is_uri
from mtl_ray.tuning.experiment import (
    SETUP_FILE,
    check_depths,
    experiment_location,
    experiment_paths,
    num_encoder_layers,
    plan,
    read_setup,
    write_outputs,
    write_setup,
)
from mtl_ray.tuning.report import SINGLE_PREFIX
from mtl_ray.tuning.space import require_optuna
from mtl_ray.tuning.trials import TrialSpec, apply_trial

TUNE_ENV_DEFAULTS = {
    # single-task baselines leave out val/aggregate on purpose (ASHA must not rank them)
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


# =========================================================================== trial side


def tune_trial(params: dict[str, Any], base: dict[str, Any], experiment: dict[str, str]) -> None:
    """One trial (runs in a Tune actor). ``params["trial"]``: a :class:`TrialSpec` dict; ``base``: the
    experiment's base config dict with absolute paths (its ``tune`` section says how wide to run);
    ``experiment``: the experiment's :class:`RunFolder` (as a dict). The trial writes its files
    (``config.yaml``, ``metrics.jsonl``, ``tensorboard/``, ``training_curves.png``) to
    ``<experiment>/trials/<trial_id>`` (for a URI: staged on this node, copied at every report)."""
    trial = TrialSpec.from_dict(params["trial"])
    tune_section = base.get("tune") or {}
    folder = trial_folder(RunFolder.from_dict(experiment), trial.trial_id)
    data = apply_trial(base, trial)
    data["train"]["output_dir"] = folder.local
    cfg = config_from_dict(data)
    prefix = SINGLE_PREFIX if trial.kind == "single" else ""
    if int(tune_section.get("workers_per_trial", 1)) > 1:
        _fit_distributed(cfg, trial, tune_section, prefix, folder)
    else:
        _fit_local(cfg, float(tune_section.get("cpus_per_trial", 1.0)), prefix, folder)


def trial_folder(experiment: RunFolder, trial_id: str) -> RunFolder:
    """``<experiment>/trials/<trial_id>``: one trial's own files (its checkpoints are Tune's, in
    ``<experiment>/<trial_id>/``; a multi-worker trial's Train run is in ``trials/<trial_id>/ray/``)."""
    return experiment.child("trials", trial_id)


def _start_trial_folder(folder: RunFolder, cfg: Config, restored: bool) -> None:
    """A restored trial continues its own log (fetched from a URI); a fresh one on a URI starts from an
    empty staging folder. Then the trial's config copy."""
    if folder.remote:
        if restored:
            folder.pull("metrics.jsonl")
        else:
            shutil.rmtree(folder.local, ignore_errors=True)
    Path(folder.local).mkdir(parents=True, exist_ok=True)
    (Path(folder.local) / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    folder.push()


def _save_trial_files(folder: RunFolder, history: list[dict[str, Any]]) -> None:
    """The trial's curves so far, then its folder to the storage; before each report, since ASHA may
    stop the trial at any report and a stopped trial runs no code after it."""
    from mtl_ray.training.plots import plot_history

    plot_history(history, Path(folder.local) / "training_curves.png")
    folder.push()


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {(prefix + k if k.startswith("val/") else k): v for k, v in metrics.items()}


def _fit_local(cfg: Config, cpus: float, prefix: str, folder: RunFolder) -> None:
    """The plain loop in this process; a restored trial continues from Tune's checkpoint."""
    from ray import tune

    from mtl_ray.training.builders import build_trainer
    from mtl_ray.training.loop import fit
    from mtl_ray.training.run import EvalCheckpointer, open_recorder, restore_trainer, set_torch_threads, setup_run

    set_torch_threads(cfg, cpus)
    setup = setup_run(cfg)
    trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            restore_trainer(trainer, cfg, path)
    _start_trial_folder(folder, cfg, restored=checkpoint is not None)
    recorder = open_recorder(Path(cfg.train.output_dir), trainer.step)  # the trial's own metrics.jsonl

    def publish(metrics: dict[str, Any], path: Path | None) -> None:
        assert path is not None  # one process: it always writes
        recorder.flush()
        _save_trial_files(folder, recorder.history)
        tune.report(_prefixed(metrics, prefix), checkpoint=tune.Checkpoint.from_directory(str(path)))

    extra = {"model/sharing_depth": trainer.model.sharing_depth, "model/num_layers": trainer.model.num_layers}
    fit(
        trainer,
        on_eval=EvalCheckpointer(cfg, trainer, setup.tokenizer, recorder=recorder, publish=publish, extra=extra),
    )
    recorder.close()
    _save_trial_files(folder, recorder.history)


def _fit_distributed(
    cfg: Config, trial: TrialSpec, tune_section: dict[str, Any], prefix: str, folder: RunFolder
) -> None:
    """A TorchTrainer of ``workers_per_trial`` workers running the Ray Train worker loop; its reports
    reach Tune through the callback, which puts the checkpoint's path in the metrics
    (``checkpoint_path``) instead of handing Tune the checkpoint (the records read it from there).

    The Train run is named after the Tune trial's id (stable across ``Tuner.restore``): a trial that a
    resumed experiment restarts finds its own run's checkpoints (Train V2 restores the latest one of a
    run of the same name and storage) and continues from there; a new experiment has new trial ids."""
    from ray import tune

    from mtl_ray.ray.train import build_torch_trainer

    workers = int(tune_section["workers_per_trial"])
    gpus = float(tune_section.get("gpus_per_trial", 0.0))
    cpus = float(tune_section.get("cpus_per_trial", 1.0))
    per_worker = {"CPU": cpus}
    if gpus > 0:
        per_worker["GPU"] = gpus
    # the trial's own run: its saved config says how wide it trained (workers size their torch threads by it)
    cfg.ray.num_workers, cfg.ray.cpus_per_worker, cfg.ray.use_gpu = workers, cpus, gpus > 0
    _start_trial_folder(folder, cfg, restored=False)  # rank 0 continues metrics.jsonl from its checkpoint
    trainer = build_torch_trainer(
        cfg,
        name=f"{trial.trial_id}-{tune.get_context().get_trial_id()}",
        storage=f"{folder.location}/ray",  # the trial's Train run, in the experiment folder (or its URI)
        # rank 0 writes the trial's metrics.jsonl / TensorBoard into the trial folder and pushes it
        loop_config={
            "config": config_to_dict(cfg),
            "resume_from": None,
            "fault": None,
            "streamed": {},
            "run": folder.to_dict(),
        },
        num_to_keep=1,
        rank_by_score=False,  # keep the latest: a restored trial continues from where it stood
        resources_per_worker=per_worker,
        callbacks=[_PrefixedTuneReportCallback(prefix)],
    )
    trainer.fit()
    folder.pull("metrics.jsonl")  # rank 0 may have run on another node
    _save_trial_files(folder, _read_history(Path(folder.local) / "metrics.jsonl"))


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class _PrefixedTuneReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that renames ``val/*`` metrics for single-task baselines (see module doc)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        super().after_report(run_context, [_prefixed(m, self._prefix) for m in metrics], checkpoint)


# =========================================================================== adaptive search (optuna)


# =========================================================================== driver side


def _trial_name(trial: Any) -> str:
    return str(trial.config["trial"]["trial_id"])


def _scheduler(cfg: Config) -> Any:
    """ASHA over ``step``: rungs at ``grace_period · reduction_factor^i`` below ``train.max_steps``.

    No decision is taken at the last step (``max_t`` just below it, ``stop_last_trials=False``): a
    trial that has run its budget ends by itself instead of being stopped at its final report. The
    scores are the same either way, but a stop kills the trial's actor, and a multi-worker trial
    killed that way leaves its Train run's placement group to Ray Train's cleaner instead of
    releasing it when its run ends."""
    if cfg.tune.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    grace = min(cfg.tune.grace_period or cfg.train.eval_every, cfg.train.max_steps)
    return ASHAScheduler(
        time_attr="step",
        metric=cfg.tune.metric,
        mode="max",
        max_t=max(grace, cfg.train.max_steps - 1),
        grace_period=grace,
        reduction_factor=cfg.tune.reduction_factor,
        stop_last_trials=False,
    )


def _trainable(base: dict[str, Any], tune_section: dict[str, Any], experiment: RunFolder) -> Any:
    from ray import tune

    from mtl_ray.tuning.resources import trial_resources

    class _Section:  # trial_resources reads attributes
        def __init__(self, d: dict[str, Any]) -> None:
            self.__dict__.update(d)

    need = trial_resources(_Section(tune_section))
    resources = {"cpu": need["CPU"], "gpu": need["GPU"]}
    if int(tune_section.get("workers_per_trial", 1)) > 1:
        # the trial function only drives its TorchTrainer, whose workers reserve their own resources
        resources = {"cpu": 1.0, "gpu": 0.0}
    trial_fn = tune.with_parameters(tune_trial, base=base, experiment=experiment.to_dict())
    return tune.with_resources(trial_fn, resources)


def run_tune(
    cfg: Config | None,
    address: str | None = None,
    *,
    resume: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Run ``cfg``'s search (or with ``resume``, an experiment directory or its URI: continue that one;
    ``cfg`` is then ignored). Everything goes to one folder, ``<storage>/<tune.name>`` (``storage_path``,
    else ``tune.storage_path``, ``ray.storage_path``, ``train.output_dir``), printed at the start and
    returned as ``summary["output_dir"]``. Returns the summary written to ``summary.json``:
    rows (sorted by aggregate), best trial, best checkpoint, best config YAML, plots."""
    from ray import tune

    from mtl_ray.ray.session import ray_session, resolve_address
    from mtl_ray.training.driver import check_task_data, prepare_assets
    from mtl_ray.tuning.resources import concurrent_trials

    if resume is not None:
        setup = _read_resume_setup(resume)
        base, trials = setup["base"], [TrialSpec.from_dict(t) for t in setup["trials"]]
        base["tune"]["storage_path"] = setup["storage"]  # where it ran (older setups left it to the fallbacks)
        cfg = config_from_dict(base)
        if cfg.tune.search_alg == "optuna":
            require_optuna()  # Tune unpickles the Optuna study with the searcher
    elif cfg is None:
        raise MtlRayError("run_tune: give a config or resume=<experiment dir>")
    else:
        base, trials = plan(cfg, storage_path)
        cfg = config_from_dict(base)
    storage, out = experiment_paths(cfg)
    check_writable(storage)  # before Ray starts: a typo'd bucket or read-only mount fails in seconds
    experiment = RunFolder(experiment_location(cfg), str(out))
    num_layers = num_encoder_layers(cfg) if not cfg.model.encoder.startswith("builtin:") else None
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)

    with ray_session(resolve_address(address, cfg.ray.address), num_cpus=num_cpus):
        import ray

        concurrency = concurrent_trials(cfg.tune, ray.cluster_resources())
        prepare_assets(cfg)
        if num_layers is None:
            num_layers = num_encoder_layers(cfg)
        check_depths(trials, base, num_layers)
        check_task_data(cfg, skip=set())
        out.mkdir(parents=True, exist_ok=True)
        write_setup(out, base, trials, storage, num_layers)
        experiment.push(skip=("trials",))  # each trial pushes its own folder
        print(f"run folder: {experiment.location}", flush=True)
        trainable = _trainable(base, base["tune"], experiment)
        adaptive = cfg.tune.search_alg == "optuna"
        searched = f" + {cfg.tune.num_samples} suggested by optuna (TPE)" if adaptive else ""
        print(
            f"tune: {len(trials)} trials ({sum(t.kind == 'single' for t in trials)} single-task baselines){searched}, "
            f"{concurrency} at a time, scheduler={cfg.tune.scheduler}",
            flush=True,
        )
        started = time.time()
        if resume is not None:
            if adaptive:
                quiet_optuna()
            tuner = tune.Tuner.restore(
                experiment.location, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            if adaptive:  # fixed trials, then num_samples suggestions (the limiter caps concurrency)
                search: dict[str, Any] = {
                    "search_alg": optuna_search(cfg.tune, base, trials, concurrency),
                    "num_samples": len(trials) + cfg.tune.num_samples,
                }
                param_space = None
            else:
                search = {"num_samples": 1, "max_concurrent_trials": concurrency}
                param_space = {"trial": tune.grid_search([t.to_dict() for t in trials])}
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    scheduler=_scheduler(cfg),
                    trial_dirname_creator=_trial_name,
                    trial_name_creator=_trial_name,
                    **search,
                ),
                run_config=tune.RunConfig(
                    name=cfg.tune.name,
                    storage_path=storage,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=verbose,
                ),
            )
        grid = tuner.fit()
        wall = time.time() - started
    records = _records(grid, base, cfg.train.max_steps, num_layers, experiment)
    summary = write_outputs(records, out, experiment.location)
    summary["wall_seconds"] = wall
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    experiment.push(skip=("trials",))
    return summary


def _read_resume_setup(resume: str) -> dict[str, Any]:
    """The setup file of the experiment to resume: in a local folder, or fetched from its URI."""
    if not is_uri(resume):
        return read_setup(Path(resume))
    digest = hashlib.sha256(resume.encode()).hexdigest()[:8]
    staged = RunFolder(resume.rstrip("/"), str(Path(tempfile.gettempdir(), STAGING_ROOT, f"resume-{digest}")))
    (Path(staged.local) / SETUP_FILE).unlink(missing_ok=True)  # never an earlier pull's copy
    staged.pull(SETUP_FILE)
    if not (Path(staged.local) / SETUP_FILE).is_file():
        raise MtlRayError(f"--resume {resume}: not a tune experiment directory (no {SETUP_FILE})")
    return read_setup(Path(staged.local))


def _records(
    grid: Any, base: dict[str, Any], max_steps: int, num_layers: int, experiment: RunFolder
) -> list[dict[str, Any]]:
    """Plain per-trial records (see ``mtl_ray.tuning.report``) from Tune's ResultGrid; checkpoint
    paths as locations in the experiment folder (a URI for a URI storage)."""
    records = []
    for result in grid:
        trial = TrialSpec.from_dict(result.config["trial"])
        config = apply_trial(base, trial)
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
        metrics.setdefault("model/num_layers", num_layers)
        # a multi-worker trial's checkpoint stays in its Train run; its path comes as a metric
        checkpoint = result.checkpoint.path if result.checkpoint is not None else metrics.get("checkpoint_path")
        records.append(
            {
                "trial": trial.to_dict(),
                "search_params": result.config.get("search"),  # optuna: the raw suggestion, else None
                "config": config,
                "metrics": metrics,
                "checkpoint": experiment.address(checkpoint) if checkpoint else None,
                "max_steps": max_steps,
                "error": str(result.error).splitlines()[0][:200] if result.error else None,
            }
        )
    order = {t: i for i, t in enumerate(r["trial"]["trial_id"] for r in records)}
    return sorted(records, key=lambda r: order[r["trial"]["trial_id"]])


__all__ = ["tune_trial", "run_tune"]
