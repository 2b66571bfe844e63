"""Offline validation of a Ray cluster-launcher YAML, the same schema check `ray up` runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mtl_ray.config import read_yaml_mapping
from mtl_ray.errors import ConfigError


def validate_cluster_config(path: str | Path) -> dict[str, Any]:
    """Validate ``path`` with Ray's own cluster schema; return the prepared config.

    Raises :class:`ConfigError` naming the offending key (``available_node_types.gpu_worker.node_config``).
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    p = Path(path)
    raw = read_yaml_mapping(p, "cluster config")
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    try:
        prepared = prepare_config(raw)
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise ConfigError(f"{p}: {where}: {exc.message}") from None
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return prepared
