"""The grammar of ``tune.search_space`` (specs, sampling, the grid, Optuna parameters); the trial list is in ``trials.py``.

A space maps a config key (dotted, as in ``key=value`` overrides) to one spec::

    train.lr:              {loguniform: [1.0e-5, 3.0e-4]}
    model.sharing_depth:   {choice: [0, 3, 6]}
    train.temperature:     {uniform: [1.0, 5.0]}
    train.max_steps:       {randint: [100, 300]}          # ints, both ends included
    train.weighting:       {choice: [static, dwa]}
    tasks.*.loss_weight:   {simplex: true}                # or per task: tasks.rt_sentiment.loss_weight: {...}

``tasks.*.<key>`` applies the spec to every task independently (``simplex`` draws one point of the
simplex for all tasks together). For ``random`` and ``grid`` sampling is plain Python seeded by
``tune.seed``: the trial list is fixed before Ray starts, so a search is reproducible and an interrupted
one resumes the same trials. ``optuna`` (TPE) is adaptive: only the fixed trials (baselines, default)
are listed here; :func:`search_params` gives the flat parameters Optuna samples (the Ray shell turns
them into Tune distributions) and :func:`params_to_overrides` turns one suggestion back into overrides.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from mtl_ray.errors import ConfigError

SEARCH_ALGS = ("random", "grid", "optuna")
SPEC_KINDS = ("choice", "uniform", "loguniform", "randint", "simplex")
WILDCARD = "tasks.*."
# optuna: a simplex spec is one raw parameter u_t ~ uniform(SIMPLEX_LOW, 1) per task, named
# SIMPLEX_PARAM + "tasks.<t>.<key>"; the weights are -log(u_t) normalised (see params_to_overrides)
SIMPLEX_PARAM = "simplex:"
SIMPLEX_LOW = 1e-6
OPTUNA_MISSING = "tune.search_alg: optuna needs the optuna package: pip install 'mtl-ray[optuna]'"


@dataclass(frozen=True)
class ParamSpec:
    """One key's distribution."""

    key: str  # dotted config key; may hold the ``tasks.*.`` wildcard
    kind: str  # one of SPEC_KINDS
    values: tuple[Any, ...] = ()  # choice: the options; uniform / loguniform / randint: (low, high)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return self.values[rng.randrange(len(self.values))]
        low, high = self.values
        if self.kind == "uniform":
            return rng.uniform(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        if self.kind == "randint":
            return rng.randint(low, high)
        raise AssertionError(self.kind)  # simplex is sampled for all tasks together


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return value


def parse_space(space: dict[str, Any]) -> list[ParamSpec]:
    """Check the structure of every spec (kind, bounds, options); keys are checked by :func:`check_keys`."""
    out = []
    for key, spec in space.items():
        where = f"tune.search_space.{key}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"{where}: expected one of {{{', '.join(SPEC_KINDS)}}}: ..., got {spec!r}")
        ((kind, arg),) = spec.items()
        if kind not in SPEC_KINDS:
            raise ConfigError(f"{where}: unknown spec {kind!r}; valid: {', '.join(SPEC_KINDS)}")
        if kind == "simplex":
            if not (key.startswith(WILDCARD) and key.endswith(".loss_weight")):
                raise ConfigError(f"{where}: simplex applies to tasks.*.loss_weight only")
            if arg is not True:
                raise ConfigError(f"{where}: write simplex: true")
            out.append(ParamSpec(key, kind))
            continue
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}.choice: expected a non-empty list of options, got {arg!r}")
            out.append(ParamSpec(key, kind, tuple(arg)))
            continue
        if not isinstance(arg, list) or len(arg) != 2:
            raise ConfigError(f"{where}.{kind}: expected [low, high], got {arg!r}")
        low, high = (_number(v, f"{where}.{kind}") for v in arg)
        if low > high:
            raise ConfigError(f"{where}.{kind}: low {low} > high {high}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}.loguniform: bounds must be > 0, got {low}")
        if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{where}.randint: bounds must be integers, got {arg!r}")
        out.append(ParamSpec(key, kind, (low, high)))
    return out


def expand_key(key: str, value: Any, tasks: list[str]) -> dict[str, Any]:
    if key.startswith(WILDCARD):
        rest = key[len(WILDCARD) :]
        return {f"tasks.{t}.{rest}": value for t in tasks}
    return {key: value}


def sample_overrides(specs: list[ParamSpec], tasks: list[str], rng: random.Random) -> dict[str, Any]:
    """One draw of every spec; wildcard keys expanded to one value per task (each drawn independently)."""
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.kind == "simplex":
            # uniform on the simplex = normalised Exp(1) draws (Dirichlet(1, ..., 1)); scaled by the
            # number of tasks so the equal-weight point is 1.0 each, the static weighting's default
            draws = [rng.expovariate(1.0) for _ in tasks]
            rest = spec.key[len(WILDCARD) :]
            out.update({f"tasks.{t}.{rest}": w for t, w in zip(tasks, _simplex_weights(draws))})
        elif spec.key.startswith(WILDCARD):
            for t in tasks:
                out.update(expand_key(spec.key.replace(WILDCARD, f"tasks.{t}.", 1), spec.sample(rng), tasks))
        else:
            out[spec.key] = spec.sample(rng)
    return out


def _simplex_weights(draws: list[float]) -> list[float]:
    """Exp(1) draws -> weights on the simplex scaled to sum to ``len(draws)`` (equal weights are 1.0)."""
    total = sum(draws)
    if total <= 0:  # every draw 0 (optuna: every u_t == 1): no preference, equal weights
        return [1.0] * len(draws)
    return [len(draws) * d / total for d in draws]


def search_params(specs: list[ParamSpec], tasks: list[str]) -> dict[str, ParamSpec]:
    """The flat parameters an adaptive searcher (optuna) samples: parameter name -> spec of kind choice,
    uniform, loguniform or randint (both ends included). Wildcard keys expand to one parameter per task
    (``tasks.<t>.<key>``, each searched independently, as random search draws them); ``simplex`` becomes
    one ``uniform(SIMPLEX_LOW, 1)`` parameter ``simplex:tasks.<t>.<key>`` per task, mapped to weights by
    :func:`params_to_overrides`. A later spec for the same key replaces an earlier one, as in sampling."""
    out: dict[str, ParamSpec] = {}
    for spec in specs:
        if spec.kind == "simplex":
            rest = spec.key[len(WILDCARD) :]
            for t in tasks:
                name = f"{SIMPLEX_PARAM}tasks.{t}.{rest}"
                out[name] = ParamSpec(name, "uniform", (SIMPLEX_LOW, 1.0))
        else:
            for key in expand_key(spec.key, None, tasks):
                out[key] = ParamSpec(key, spec.kind, spec.values)
    return out


def params_to_overrides(specs: list[ParamSpec], tasks: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """One suggestion of :func:`search_params`'s parameters -> the trial's overrides. A simplex becomes
    weights ``len(tasks) * e_t / sum(e)`` with ``e_t = -log(u_t)``: the same normalised Exp(1) draws as
    :func:`sample_overrides`, so a uniform ``u`` (random sampling, TPE's start-up trials) gives weights
    uniform on the simplex, exactly as random search draws them. randint values come back as ints."""
    flat = search_params(specs, tasks)
    missing = sorted(set(flat) - set(params))
    if missing:
        raise ConfigError(f"tune: the suggestion lacks parameters {', '.join(missing)}")
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.kind == "simplex":
            rest = spec.key[len(WILDCARD) :]
            keys = [f"tasks.{t}.{rest}" for t in tasks]
            draws = [-math.log(min(max(float(params[SIMPLEX_PARAM + k]), SIMPLEX_LOW), 1.0)) for k in keys]
            out.update(dict(zip(keys, _simplex_weights(draws))))
        else:
            for key in expand_key(spec.key, None, tasks):
                value = params[key]
                out[key] = int(value) if spec.kind == "randint" else value
    return out


def require_optuna() -> None:
    """ConfigError (before any trial starts) when ``search_alg: optuna`` cannot import optuna."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(OPTUNA_MISSING) from None


def grid_overrides(specs: list[ParamSpec], tasks: list[str]) -> list[dict[str, Any]]:
    """Every combination of the choice specs (grid search), in declaration order."""
    for spec in specs:
        if spec.kind != "choice":
            raise ConfigError(f"tune.search_space.{spec.key}: search_alg=grid needs choice specs only, got {spec.kind}")
    combos = itertools.product(*(spec.values for spec in specs))
    out = []
    for combo in combos:
        overrides: dict[str, Any] = {}
        for spec, value in zip(specs, combo):
            overrides.update(expand_key(spec.key, value, tasks))
        out.append(overrides)
    return out


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """``key=value`` strings that ``apply_overrides`` parses back to the same values (YAML flow style)."""
    import yaml

    return [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in overrides.items()
    ]
