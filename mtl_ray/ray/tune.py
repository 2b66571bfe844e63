"""Ray Tune shell: one trial function over the plain-torch core, the search driver and resume.

Every trial runs :func:`tune_trial`: it applies its overrides to the base config and trains with the
core loop (``setup_run`` + ``MultiTaskTrainer`` + ``fit``) in the trial's own process, reporting
``tune.report({"step", "val/aggregate", "val/<task>/<metric>", ...}, checkpoint=...)`` at every
evaluation, so ASHA can stop it at a rung. With ``tune.workers_per_trial > 1`` the same function
instead builds its own ``TorchTrainer`` around ``mtl_ray.ray.train.train_loop_per_worker`` whose reports reach
Tune through ``TuneReportCallback`` (Ray 2.60 / Train V2 cannot tune a ``TorchTrainer`` directly).

The trial list (single-task baselines, the default config, then the search) is drawn in plain Python
(``mtl_ray.tuning.space``) before Ray starts and handed to Tune as one grid axis, so trials run in that
order and a resumed experiment runs the same trials. With ``tune.search_alg: optuna`` the search is
adaptive and cannot be pre-drawn: :class:`FixedThenSearch` hands Tune the same fixed trials first, then
``num_samples`` trials suggested by Ray Tune's ``OptunaSearch`` (TPE, seeded by ``tune.seed``) over
Tune distributions built from the space (:func:`tune_search_space`). It is one Tune experiment either
way: one trial function, one scheduler, one result grid, and ``Tuner.restore`` restores the searcher
(Optuna's study included) with the trials. Single-task baselines report under ``single/``:
ASHA ranks ``val/aggregate`` only, so it never compares them with multi-task trials, and they always
get the full budget (``TUNE_DISABLE_STRICT_METRIC_CHECKING`` lets them omit the scheduler's metric).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import Searcher

from mtl_ray.config import Config, config_from_dict, config_to_dict
from mtl_ray.errors import ConfigError, MtlRayError
from mtl_ray.tuning.report import SINGLE_PREFIX, build_rows, markdown_table
from mtl_ray.tuning.space import ParamSpec, params_to_overrides, parse_space, require_optuna, search_params
from mtl_ray.tuning.trials import TrialSpec, apply_trial, build_trials

SETUP_FILE = "mtl_tune_setup.json"  # base config + trial list: what `--resume` rebuilds the trainable from
TUNE_ENV_DEFAULTS = {
    # single-task baselines leave out val/aggregate on purpose (ASHA must not rank them)
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


# =========================================================================== trial side


def tune_trial(params: dict[str, Any], base: dict[str, Any], trials_dir: str) -> None:
    """One trial (runs in a Tune actor). ``params["trial"]``: a :class:`TrialSpec` dict; ``base``: the
    experiment's base config dict with absolute paths (its ``tune`` section says how wide to run);
    ``trials_dir``: where each trial's ``train.output_dir`` goes (``<trials_dir>/<trial_id>``)."""
    trial = TrialSpec.from_dict(params["trial"])
    tune_section = base.get("tune") or {}
    data = apply_trial(base, trial)
    data["train"]["output_dir"] = str(Path(trials_dir) / trial.trial_id)
    cfg = config_from_dict(data)
    prefix = SINGLE_PREFIX if trial.kind == "single" else ""
    if int(tune_section.get("workers_per_trial", 1)) > 1:
        _fit_distributed(cfg, trial, tune_section, prefix)
    else:
        _fit_local(cfg, float(tune_section.get("cpus_per_trial", 1.0)), prefix)


def _prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {(prefix + k if k.startswith("val/") else k): v for k, v in metrics.items()}


def _fit_local(cfg: Config, cpus: float, prefix: str) -> None:
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

    def publish(metrics: dict[str, Any], path: Path | None) -> None:
        assert path is not None  # one process: it always writes
        tune.report(_prefixed(metrics, prefix), checkpoint=tune.Checkpoint.from_directory(str(path)))

    recorder = open_recorder(Path(cfg.train.output_dir), trainer.step)  # the trial's own metrics.jsonl
    extra = {"model/sharing_depth": trainer.model.sharing_depth, "model/num_layers": trainer.model.num_layers}
    fit(
        trainer,
        on_eval=EvalCheckpointer(cfg, trainer, setup.tokenizer, recorder=recorder, publish=publish, extra=extra),
    )
    recorder.close()


def _fit_distributed(cfg: Config, trial: TrialSpec, tune_section: dict[str, Any], prefix: str) -> None:
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
    trainer = build_torch_trainer(
        cfg,
        name=f"{trial.trial_id}-{tune.get_context().get_trial_id()}",
        storage=str(Path(cfg.train.output_dir) / "ray"),
        loop_config={"config": config_to_dict(cfg), "resume_from": None, "fault": None, "streamed": {}},
        num_to_keep=1,
        rank_by_score=False,  # keep the latest: a restored trial continues from where it stood
        resources_per_worker=per_worker,
        callbacks=[_PrefixedTuneReportCallback(prefix)],
    )
    trainer.fit()


class _PrefixedTuneReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that renames ``val/*`` metrics for single-task baselines (see module doc)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        super().after_report(run_context, [_prefixed(m, self._prefix) for m in metrics], checkpoint)


# =========================================================================== adaptive search (optuna)


def tune_search_space(specs: list[ParamSpec], tasks: list[str]) -> dict[str, Any]:
    """The space's flat parameters (:func:`~mtl_ray.tuning.space.search_params`) as Tune distributions:
    choice -> ``tune.choice``, uniform -> ``tune.uniform``, loguniform -> ``tune.loguniform``, randint
    ``[low, high]`` (both ends included) -> ``tune.randint(low, high + 1)`` (Tune excludes the upper end)."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, param in search_params(specs, tasks).items():
        if param.kind == "choice":
            out[name] = tune.choice(list(param.values))
        elif param.kind == "uniform":
            out[name] = tune.uniform(*param.values)
        elif param.kind == "loguniform":
            out[name] = tune.loguniform(*param.values)
        elif param.kind == "randint":
            low, high = param.values
            out[name] = tune.randint(low, high + 1)
        else:  # search_params leaves no other kind
            raise AssertionError(param.kind)
    return out


class FixedThenSearch(Searcher):
    """Tune searcher: first the pre-drawn fixed trials (baselines, the default config) in list order,
    then whatever ``searcher`` (an ``OptunaSearch``) suggests, each suggestion turned into a
    ``search-NNN`` :class:`TrialSpec` whose overrides are :func:`params_to_overrides` of it (the raw
    suggestion stays in the trial config under ``search``). Results of fixed trials never reach the
    inner searcher: baselines score another metric and the default is not a point of the space.

    Tune saves this wrapper's counters with ``get_state`` and the inner searcher (Optuna's study) with
    its own ``save``; ``Tuner.restore`` brings both back, so a resumed search continues the numbering
    and the study."""

    def __init__(
        self,
        searcher: Searcher,
        fixed: list[dict[str, Any]],
        search_space: dict[str, Any],
        tasks: list[str],
        metric: str,
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searcher = searcher  # the attribute name Tune's save / restore walk wrappers by
        self._fixed = list(fixed)
        self._space = dict(search_space)
        self._tasks = list(tasks)
        self._handed = 0  # suggestions handed out, fixed ones included
        self._fixed_ids: set[str] = set()  # Tune trial ids of the fixed trials

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._handed < len(self._fixed):
            spec = self._fixed[self._handed]
            self._handed += 1
            self._fixed_ids.add(trial_id)
            return {"trial": dict(spec)}
        params = self.searcher.suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            return params
        n = self._handed - len(self._fixed)
        self._handed += 1
        overrides = params_to_overrides(parse_space(self._space), self._tasks, params)
        return {"trial": TrialSpec(f"search-{n:03d}", "search", overrides).to_dict(), "search": dict(params)}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self._fixed_ids:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._fixed_ids:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per created study / trial


def optuna_search(tune_cfg: Any, base: dict[str, Any], fixed: list[TrialSpec], concurrency: int) -> Any:
    """``ConcurrencyLimiter(FixedThenSearch(OptunaSearch(TPE, seed=tune.seed)))`` over the space."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    _quiet_optuna()
    tasks = sorted(base["tasks"])
    space = OptunaSearch.convert_search_space(tune_search_space(parse_space(tune_cfg.search_space), tasks))
    inner = OptunaSearch(space=space, metric=tune_cfg.metric, mode="max", seed=tune_cfg.seed)
    searcher = FixedThenSearch(inner, [t.to_dict() for t in fixed], tune_cfg.search_space, tasks, tune_cfg.metric)
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


# =========================================================================== driver side


def _trial_name(trial: Any) -> str:
    return str(trial.config["trial"]["trial_id"])


def experiment_paths(cfg: Config) -> tuple[str, Path]:
    """(Tune storage path, local outputs dir). Storage: ``tune.storage_path`` (absolute path or URI),
    else ``train.output_dir``; the experiment lives at ``<storage>/<tune.name>``. Outputs (tables, plots,
    best config) go to that directory when it is local, else to ``<train.output_dir>/<tune.name>``."""
    raw = cfg.tune.storage_path or cfg.train.output_dir
    if "://" in raw:
        return raw, Path(cfg.train.output_dir).expanduser().resolve() / cfg.tune.name
    storage = Path(raw).expanduser().resolve()
    return str(storage), storage / cfg.tune.name


def num_encoder_layers(cfg: Config) -> int:
    """L of the encoder (read from its config.json; no weights loaded)."""
    from transformers import AutoConfig

    from mtl_ray.ray.train import tokenizer_location

    return int(AutoConfig.from_pretrained(tokenizer_location(cfg)).num_hidden_layers)


def supervised_tasks(cfg: Config) -> list[str]:
    from mtl_ray.tasks import get_task_type

    return sorted(t for t, tc in cfg.tasks.items() if get_task_type(tc.type).supervised)


def plan(cfg: Config) -> tuple[dict[str, Any], list[TrialSpec]]:
    """Driver-side checks that need no Ray: the base config dict (absolute paths, outputs under the
    experiment dir) and the trial list. Raises ConfigError for a bad space before anything starts."""
    from mtl_ray.ray.train import absolute_paths

    cfg = absolute_paths(cfg)
    base = config_to_dict(cfg)
    trials = build_trials(base, cfg.tune, supervised_tasks(cfg))
    return base, trials


def _check_depths(trials: list[TrialSpec], base: dict[str, Any], num_layers: int) -> None:
    """Every sharing depth a trial can take lies in [0, L]: the listed trials' and, for an adaptive
    search whose trials are not drawn yet, every option / both ends of the space's spec."""
    depths = [trial.overrides.get("model.sharing_depth", base["model"].get("sharing_depth")) for trial in trials]
    for spec in parse_space((base.get("tune") or {}).get("search_space") or {}):
        if spec.key == "model.sharing_depth" and spec.kind in ("choice", "randint", "uniform"):
            depths += list(spec.values)
    for k in depths:
        if k is not None and not 0 <= int(k) <= num_layers:
            raise ConfigError(
                f"tune.search_space.model.sharing_depth: {k} is outside [0, {num_layers}] for this encoder"
            )


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


def _trainable(base: dict[str, Any], tune_section: dict[str, Any], trials_dir: Path) -> Any:
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
    return tune.with_resources(tune.with_parameters(tune_trial, base=base, trials_dir=str(trials_dir)), resources)


def run_tune(
    cfg: Config | None,
    address: str | None = None,
    *,
    resume: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Run ``cfg``'s search (or with ``resume``, an experiment directory: continue that one; ``cfg`` is
    then ignored). Returns the summary written to ``summary.json``:
    rows (sorted by aggregate), best trial, best checkpoint, best config YAML, plots."""
    from ray import tune

    from mtl_ray.ray.session import ray_session, resolve_address
    from mtl_ray.ray.train import check_task_data, prepare_assets
    from mtl_ray.tuning.resources import concurrent_trials

    if resume is not None:
        setup = _read_setup(Path(resume))
        base, trials = setup["base"], [TrialSpec.from_dict(t) for t in setup["trials"]]
        cfg = config_from_dict(base)
        if cfg.tune.search_alg == "optuna":
            require_optuna()  # Tune unpickles the Optuna study with the searcher
    elif cfg is None:
        raise MtlRayError("run_tune: give a config or resume=<experiment dir>")
    else:
        base, trials = plan(cfg)
        cfg = config_from_dict(base)
    storage, out = experiment_paths(cfg)
    num_layers = num_encoder_layers(cfg) if not cfg.model.encoder.startswith("builtin:") else None
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)

    with ray_session(resolve_address(address, cfg.ray.address), num_cpus=num_cpus):
        import ray

        concurrency = concurrent_trials(cfg.tune, ray.cluster_resources())
        prepare_assets(cfg)
        if num_layers is None:
            num_layers = num_encoder_layers(cfg)
        _check_depths(trials, base, num_layers)
        check_task_data(cfg, skip=set())
        out.mkdir(parents=True, exist_ok=True)
        _write_setup(out, base, trials, storage, num_layers)
        trainable = _trainable(base, base["tune"], out / "trials")
        experiment = f"{storage.rstrip('/')}/{cfg.tune.name}"
        adaptive = cfg.tune.search_alg == "optuna"
        searched = f" + {cfg.tune.num_samples} suggested by optuna (TPE)" if adaptive else ""
        print(
            f"tune: {len(trials)} trials ({sum(t.kind == 'single' for t in trials)} single-task baselines){searched}, "
            f"{concurrency} at a time, scheduler={cfg.tune.scheduler}; experiment: {experiment}",
            flush=True,
        )
        started = time.time()
        if resume is not None:
            if adaptive:
                _quiet_optuna()
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
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
    records = _records(grid, base, cfg.train.max_steps, num_layers)
    summary = write_outputs(records, out, experiment)
    summary["wall_seconds"] = wall
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def _write_setup(out: Path, base: dict[str, Any], trials: list[TrialSpec], storage: str, num_layers: int) -> None:
    setup = {"base": base, "trials": [t.to_dict() for t in trials], "storage": storage, "num_layers": num_layers}
    (out / SETUP_FILE).write_text(json.dumps(setup, indent=2), encoding="utf-8")


def _read_setup(path: Path) -> dict[str, Any]:
    file = path / SETUP_FILE
    if not file.is_file():
        raise MtlRayError(f"--resume {path}: not a tune experiment directory (no {SETUP_FILE})")
    return json.loads(file.read_text(encoding="utf-8"))


def _records(grid: Any, base: dict[str, Any], max_steps: int, num_layers: int) -> list[dict[str, Any]]:
    """Plain per-trial records (see ``mtl_ray.tuning.report``) from Tune's ResultGrid."""
    records = []
    for result in grid:
        trial = TrialSpec.from_dict(result.config["trial"])
        config = apply_trial(base, trial)
        metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
        metrics.setdefault("model/num_layers", num_layers)
        records.append(
            {
                "trial": trial.to_dict(),
                "search_params": result.config.get("search"),  # optuna: the raw suggestion, else None
                "config": config,
                "metrics": metrics,
                # a multi-worker trial's checkpoint stays in its Train run; its path comes as a metric
                "checkpoint": result.checkpoint.path
                if result.checkpoint is not None
                else metrics.get("checkpoint_path"),
                "max_steps": max_steps,
                "error": str(result.error).splitlines()[0][:200] if result.error else None,
            }
        )
    order = {t: i for i, t in enumerate(r["trial"]["trial_id"] for r in records)}
    return sorted(records, key=lambda r: order[r["trial"]["trial_id"]])


def write_outputs(records: list[dict[str, Any]], out: Path, experiment: str) -> dict[str, Any]:
    """results.csv, results.md, best_config.yaml, plots and the summary dict."""
    from mtl_ray.tuning.plots import plot_search
    from mtl_ray.tuning.report import best_row, export_best_config, write_csv

    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.json").write_text(json.dumps(records, indent=2, default=str), encoding="utf-8")
    rows = build_rows(records)
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(markdown_table(rows) + "\n", encoding="utf-8")
    best = best_row(rows)
    best_yaml = None
    if best is not None:
        record = next(r for r in records if r["trial"]["trial_id"] == best["trial"])
        export = dict(record["config"])
        export["train"] = {**export["train"], "output_dir": str(out / "best_run")}
        best_yaml = export_best_config({**record, "config": export}, out / "best_config.yaml")
    plots = plot_search(rows, out)
    default = next((r for r in rows if r["kind"] == "default"), None)
    return {
        "experiment": experiment,
        "output_dir": str(out),
        "rows": rows,
        "best_trial": best["trial"] if best else None,
        "best_aggregate": best["aggregate"] if best else None,
        "best_delta_m_pct": best["delta_m_pct"] if best else None,
        "default_aggregate": default["aggregate"] if default else None,
        "best_checkpoint": best["checkpoint"] if best else None,
        "best_config": str(best_yaml) if best_yaml else None,
        "plots": [str(p) for p in plots],
        "num_stopped_early": sum(1 for r in rows if r["stopped_early"]),
        "total_trial_steps": sum(r["steps"] for r in rows),
    }


def format_summary(summary: dict[str, Any], top: int = 5) -> str:
    """The top-``top`` table (multi-task trials, then the baselines) and where the outputs are."""
    rows = summary["rows"]
    mtl = [r for r in rows if r["kind"] != "single"]
    single = [r for r in rows if r["kind"] == "single"]
    lines = [f"\nTop {min(top, len(mtl))} of {len(mtl)} multi-task trials (validation; Δm% vs the single-task rows):"]
    lines.append(markdown_table(mtl[:top] + single, paths=False))
    best = summary.get("best_aggregate")
    if best is not None and not math.isnan(best):
        lines.append(
            f"\nbest: {summary['best_trial']} aggregate={best:.4f}"
            + (f" (default config: {summary['default_aggregate']:.4f})" if summary.get("default_aggregate") else "")
        )
    lines.append(
        f"stopped early by ASHA: {summary['num_stopped_early']}; trial-steps spent: {summary['total_trial_steps']}"
    )
    lines.append(f"best checkpoint: {summary.get('best_checkpoint')}")
    lines.append(f"best config:     {summary.get('best_config')}")
    lines.append(f"results:         {summary['output_dir']}/results.md (and .csv, plots *.png)")
    return "\n".join(lines)


__all__ = [
    "tune_trial",
    "run_tune",
    "plan",
    "format_summary",
    "write_outputs",
    "experiment_paths",
    "tune_search_space",
    "FixedThenSearch",
    "optuna_search",
]
