"""The ASHA scheduler a search gets: rungs below the budget, no stop at a trial's last step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mtl_ray.config import config_from_dict

pytest.importorskip("ray")


def _cfg(max_steps: int, grace: int, rf: float = 2.0, scheduler: str = "asha"):
    return config_from_dict(
        {
            "tasks": {"a": {"type": "classification", "source": "a.csv"}},
            "model": {"encoder": "enc"},
            "train": {"max_steps": max_steps, "eval_every": 5},
            "tune": {
                "search_space": {"train.lr": {"choice": [1e-4]}},
                "scheduler": scheduler,
                "grace_period": grace,
                "reduction_factor": rf,
            },
        }
    )


def _run(sched, reports: dict[str, list[tuple[int, float]]]) -> dict[str, str]:
    """Feed each trial's (step, aggregate) reports in turn (round robin); the action at each trial's last one."""
    trials = {name: SimpleNamespace(trial_id=name) for name in reports}
    for trial in trials.values():
        sched.on_trial_add(None, trial)
    last: dict[str, str] = {}
    for i in range(max(len(r) for r in reports.values())):
        for name, series in reports.items():
            if i < len(series):
                step, score = series[i]
                last[name] = sched.on_trial_result(None, trials[name], {"step": step, "val/aggregate": score})
    return last


def test_asha_stops_at_rungs_but_never_at_the_last_step():
    from ray.tune.schedulers import TrialScheduler

    from mtl_ray.ray.tune import _scheduler

    sched = _scheduler(_cfg(max_steps=20, grace=5))
    # a is the best at every rung; b survives the rungs at 5 and 10, then scores far below a at its last
    # step (20): stock ASHA would stop both there (see below), killing the trials at their final report
    got = _run(
        sched,
        {
            "a": [(5, 0.9), (10, 0.9), (20, 0.9)],
            "b": [(5, 0.95), (10, 0.95), (20, 0.1)],
            "c": [(5, 0.1)],  # below the rung-5 cut: stopped early
        },
    )
    assert got == {"a": TrialScheduler.CONTINUE, "b": TrialScheduler.CONTINUE, "c": TrialScheduler.STOP}


def test_stock_asha_would_stop_at_the_last_step():
    """What the scheduler avoids (so the test above can fail): stock ASHA stops every trial that reaches
    max_t = max_steps, and even with stop_last_trials=False its rung at max_t stops b there."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    reports = {"a": [(5, 0.9), (10, 0.9), (20, 0.9)], "b": [(5, 0.95), (10, 0.95), (20, 0.1)]}
    kw = {"time_attr": "step", "metric": "val/aggregate", "mode": "max", "max_t": 20, "grace_period": 5}
    assert _run(ASHAScheduler(**kw), reports) == {"a": TrialScheduler.STOP, "b": TrialScheduler.STOP}
    got = _run(ASHAScheduler(**kw, stop_last_trials=False), reports)
    assert got == {"a": TrialScheduler.CONTINUE, "b": TrialScheduler.STOP}


def test_no_scheduler():
    from mtl_ray.ray.tune import _scheduler

    assert _scheduler(_cfg(max_steps=20, grace=5, scheduler="none")) is None
