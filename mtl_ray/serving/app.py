"""Deprecated import path, kept so Serve configs written by mtl-ray 0.1 keep deploying.

``import_path: mtl_ray.serving.app:build_app`` now lives at ``mtl_ray.ray.serve.app:build_app``
(regenerate the file with ``mtl-ray serve build``). This module imports no Ray itself: the name is
resolved on first access, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

NEW_MODULE = "mtl_ray.ray.serve.app"


def __getattr__(name: str) -> Any:
    warnings.warn(
        f"mtl_ray.serving.app is deprecated: use {NEW_MODULE} (e.g. import_path: {NEW_MODULE}:build_app)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(NEW_MODULE), name)
