"""A Tune experiment's plain-Python side: where it lives, its trial plan (checked before Ray starts),
the setup file ``--resume`` rebuilds it from, and its outputs (results.csv/.md, best_config.yaml,
plots, the console summary). :mod:`mtl_ray.ray.tune` runs the trials and hands the records here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mtl_ray.config import Config, config_to_dict
from mtl_ray.errors import ConfigError, MtlRayError
from mtl_ray.tuning.report import build_rows, markdown_table
from mtl_ray.tuning.space import parse_space
from mtl_ray.tuning.trials import TrialSpec, build_trials

SETUP_FILE = "mtl_tune_setup.json"  # base config + trial list: what `--resume` rebuilds the trainable from


def tune_storage(cfg: Config) -> str:
    """Where the experiment folder ``<storage>/<tune.name>`` goes: ``tune.storage_path``, else
    ``ray.storage_path`` (one storage setting for a cluster's train and tune runs), else
    ``train.output_dir``. A URI as given, a local path made absolute (Ray needs that)."""
    raw = cfg.tune.storage_path or cfg.ray.storage_path or cfg.train.output_dir
    return raw if "://" in raw else str(Path(raw).expanduser().resolve())


def experiment_paths(cfg: Config) -> tuple[str, Path]:
    """(storage, local experiment dir). Everything the experiment writes lives in ``<storage>/<tune.name>``
    (:func:`experiment_location`): Tune's state and checkpoints, each trial's folder in ``trials/`` and the
    driver's outputs. For a local storage the local dir *is* that folder; for a URI it is
    ``<train.output_dir>/<tune.name>``, where the driver writes its outputs before copying them to the URI
    (so they are also at hand locally, and ``--resume`` takes that folder as before)."""
    storage = tune_storage(cfg)
    if "://" in storage:
        return storage, Path(cfg.train.output_dir).expanduser().resolve() / cfg.tune.name
    return storage, Path(storage) / cfg.tune.name


def experiment_location(cfg: Config) -> str:
    """``<storage>/<tune.name>``: the experiment's one folder (a local path or a URI), printed by the driver."""
    return f"{tune_storage(cfg).rstrip('/')}/{cfg.tune.name}"


def num_encoder_layers(cfg: Config) -> int:
    """L of the encoder (read from its config.json; no weights loaded)."""
    from transformers import AutoConfig

    from mtl_ray.training.driver import tokenizer_location

    return int(AutoConfig.from_pretrained(tokenizer_location(cfg)).num_hidden_layers)


def supervised_tasks(cfg: Config) -> list[str]:
    from mtl_ray.tasks import get_task_type

    return sorted(t for t, tc in cfg.tasks.items() if get_task_type(tc.type).supervised)


def plan(cfg: Config, storage_path: str | None = None) -> tuple[dict[str, Any], list[TrialSpec]]:
    """Driver-side checks that need no Ray: the base config dict (absolute paths, the storage resolved
    into ``tune.storage_path``; ``storage_path``, e.g. ``--storage-path``, wins) and the trial list.
    Raises ConfigError for a bad space before anything starts."""
    from mtl_ray.training.driver import absolute_paths

    cfg = absolute_paths(cfg)
    base = config_to_dict(cfg)
    # the saved base names its storage: `--resume` finds the experiment without the flag
    base["tune"]["storage_path"] = storage_path or tune_storage(cfg)
    trials = build_trials(base, cfg.tune, supervised_tasks(cfg))
    return base, trials


def check_depths(trials: list[TrialSpec], base: dict[str, Any], num_layers: int) -> None:
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


def write_setup(out: Path, base: dict[str, Any], trials: list[TrialSpec], storage: str, num_layers: int) -> None:
    setup = {"base": base, "trials": [t.to_dict() for t in trials], "storage": storage, "num_layers": num_layers}
    (out / SETUP_FILE).write_text(json.dumps(setup, indent=2), encoding="utf-8")


def read_setup(path: Path) -> dict[str, Any]:
    file = path / SETUP_FILE
    if not file.is_file():
        raise MtlRayError(f"--resume {path}: not a tune experiment directory (no {SETUP_FILE})")
    return json.loads(file.read_text(encoding="utf-8"))


def write_outputs(records: list[dict[str, Any]], out: Path, experiment: str) -> dict[str, Any]:
    """results.csv, results.md, best_config.yaml, plots (written to ``out``) and the summary dict, whose
    paths name them in ``experiment``, the folder ``out`` is copied to (the same folder when local)."""
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

    def where(path: Path) -> str:  # the file's place in the experiment folder
        return f"{experiment.rstrip('/')}/{path.relative_to(out).as_posix()}"

    return {
        "experiment": experiment,
        "output_dir": experiment,  # everything of the experiment is in this one folder
        "local_output_dir": str(out),  # where the driver wrote its files (== output_dir unless a URI)
        "rows": rows,
        "best_trial": best["trial"] if best else None,
        "best_aggregate": best["aggregate"] if best else None,
        "best_delta_m_pct": best["delta_m_pct"] if best else None,
        "default_aggregate": default["aggregate"] if default else None,
        "best_checkpoint": best["checkpoint"] if best else None,
        "best_config": where(Path(best_yaml)) if best_yaml else None,
        "plots": [where(Path(p)) for p in plots],
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
    lines.append(f"run folder:      {summary['output_dir']} (trials/<trial>: metrics, TensorBoard, curves)")
    return "\n".join(lines)
