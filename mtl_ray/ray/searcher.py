"""Adaptive search for Ray Tune: the fixed trials (baselines, default) first, then Optuna's suggestions.

:class:`FixedThenSearch` hands Tune the pre-drawn fixed trials, then ``num_samples`` trials suggested
by Ray Tune's ``OptunaSearch`` (TPE, seeded by ``tune.seed``) over Tune distributions built from the
space (:func:`tune_search_space`). ``Tuner.restore`` restores it (Optuna's study included).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from mtl_ray.tuning.space import ParamSpec, params_to_overrides, parse_space, search_params
from mtl_ray.tuning.trials import TrialSpec


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


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per created study / trial


def optuna_search(tune_cfg: Any, base: dict[str, Any], fixed: list[TrialSpec], concurrency: int) -> Any:
    """``ConcurrencyLimiter(FixedThenSearch(OptunaSearch(TPE, seed=tune.seed)))`` over the space."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    quiet_optuna()
    tasks = sorted(base["tasks"])
    space = OptunaSearch.convert_search_space(tune_search_space(parse_space(tune_cfg.search_space), tasks))
    inner = OptunaSearch(space=space, metric=tune_cfg.metric, mode="max", seed=tune_cfg.seed)
    searcher = FixedThenSearch(inner, [t.to_dict() for t in fixed], tune_cfg.search_space, tasks, tune_cfg.metric)
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)
