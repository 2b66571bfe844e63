"""Loss weightings behind one interface (:class:`LossWeighting`), registered by name.

| name | file | method |
|---|---|---|
| ``static`` | ``static.py`` | fixed ``loss_weight`` per task |
| ``uncertainty`` | ``uncertainty.py`` | Kendall, Gal & Cipolla 2018, learnable log-variances |
| ``dwa`` | ``dwa.py`` | Dynamic Weight Average, Liu, Johns & Davison 2019 |
"""

from __future__ import annotations

from collections.abc import Mapping

from mtl_ray.config import TrainConfig
from mtl_ray.errors import ConfigError
from mtl_ray.training.weighting.base import LossWeighting
from mtl_ray.training.weighting.dwa import DynamicWeightAverage
from mtl_ray.training.weighting.static import StaticWeighting
from mtl_ray.training.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
}


def build_weighting(name: str, static_weights: Mapping[str, float], cfg: TrainConfig) -> LossWeighting:
    """The weighting ``name`` over the tasks of ``static_weights`` (task -> config ``loss_weight``)."""
    if name not in WEIGHTINGS:
        raise ConfigError(f"train.weighting: unknown weighting {name!r}; valid: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[name].from_config(static_weights, cfg)


__all__ = [
    "WEIGHTINGS",
    "DynamicWeightAverage",
    "LossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "build_weighting",
]
