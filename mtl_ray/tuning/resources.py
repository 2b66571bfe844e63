"""How many trials run at once, and the check that a request fits the cluster (before any trial starts)."""

from __future__ import annotations

from typing import Any

from mtl_ray.errors import ConfigError


def trial_resources(tune_cfg: Any) -> dict[str, float]:
    """Resources one trial holds. A 1-worker trial is the plain loop in the trial's own process; a
    multi-worker trial holds 1 CPU for its driver function and starts ``workers_per_trial`` workers."""
    w = tune_cfg.workers_per_trial
    if w == 1:
        return {"CPU": tune_cfg.cpus_per_trial, "GPU": tune_cfg.gpus_per_trial}
    return {"CPU": 1.0 + w * tune_cfg.cpus_per_trial, "GPU": w * tune_cfg.gpus_per_trial}


def concurrent_trials(tune_cfg: Any, cluster: dict[str, float]) -> int:
    """``tune.max_concurrent_trials`` if the cluster fits that many trials at once, else the most that
    fit when it is unset. ConfigError when even one trial, or the requested number, does not fit."""
    need = trial_resources(tune_cfg)
    fits = []
    for key, amount in need.items():
        if amount <= 0:
            continue
        have = float(cluster.get(key, 0.0))
        fits.append(int(have // amount + 1e-9))
    most = min(fits) if fits else 1
    what = ", ".join(f"{v:g} {k}" for k, v in need.items() if v > 0)
    have = ", ".join(f"{float(cluster.get(k, 0.0)):g} {k}" for k, v in need.items() if v > 0)
    if most < 1:
        raise ConfigError(
            f"tune: one trial needs {what}, the Ray cluster has {have} "
            "(lower tune.cpus_per_trial / tune.gpus_per_trial / tune.workers_per_trial)"
        )
    wanted = tune_cfg.max_concurrent_trials
    if wanted is not None and wanted > most:
        raise ConfigError(
            f"tune.max_concurrent_trials: {wanted} trials × ({what}) do not fit the Ray cluster ({have}); "
            f"at most {most} at once"
        )
    return wanted if wanted is not None else most
