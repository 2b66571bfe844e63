"""How loud Ray and Serve are in the user-facing commands (``mtl-ray demo``, ``mtl-ray serve``).

Quiet (the default) means the terminal shows what the user asked for: the answers, our own progress
lines (rank 0's ``step ... loss`` and ``eval`` lines still reach the driver) and errors. What goes:

- the driver's ``ray`` / ``ray.serve`` INFO lines ("Started a local Ray instance", "Started Serve",
  "Deployed app ...") — WARNING and above still print;
- every Serve actor's log stream (controller, proxy, replicas: ~100 INFO lines per deploy and one
  access-log line per request). ``RAY_SERVE_LOG_TO_STDERR=0`` makes Serve write them to its log files
  only (``<ray session>/logs/serve/``), access logs included, so nothing is lost, only not echoed.

Verbose (``--verbose`` or ``MTL_RAY_VERBOSE=1``) leaves Ray's and Serve's defaults untouched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

VERBOSE_ENV = "MTL_RAY_VERBOSE"
SERVE_STDERR_ENV = "RAY_SERVE_LOG_TO_STDERR"  # read by every Serve process at import
_DRIVER_LOGGERS = ("ray", "ray.serve")


def verbose_requested(flag: bool = False) -> bool:
    """``--verbose`` or ``$MTL_RAY_VERBOSE`` set to anything but ``""``, ``0``, ``false``, ``no``."""
    env = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return flag or env not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class RayLogging:
    """Ray / Serve log settings for one command."""

    verbose: bool = False  # True: Ray's and Serve's own defaults, every log line on the terminal
    # False: no worker / actor output reaches this terminal at all (``ray.init(log_to_driver=False)``);
    # `mtl-ray serve` has nothing to show from them, the demo keeps it for rank 0's training progress
    worker_output: bool = True

    def init_kwargs(self) -> dict[str, Any]:
        """Extra ``ray.init`` arguments. The job's runtime env carries ``RAY_SERVE_LOG_TO_STDERR=0`` to the
        Serve controller, proxies and replicas this driver starts (a Serve already running on a joined
        cluster keeps its own setting)."""
        if self.verbose:
            return {}
        return {
            "logging_level": logging.WARNING,
            "log_to_driver": self.worker_output,
            "runtime_env": {"env_vars": {SERVE_STDERR_ENV: "0"}},
        }

    def serve_logging_config(self) -> dict[str, Any]:
        """``serve.start(logging_config=...)``: INFO with access logs, into Serve's log files."""
        return {"log_level": "INFO", "enable_access_log": True}

    def apply_to_driver(self) -> None:
        """Lower this process's Ray and Serve loggers to WARNING (call after ``import ray.serve``, which
        configures Serve's driver logger at import)."""
        if self.verbose:
            return
        for name in _DRIVER_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def serve_log_dir() -> str | None:
    """Where Serve's log files (controller, proxy, replicas, access logs) are: on this machine for an
    embedded Ray, on the head node for a joined cluster. None when Ray does not say."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker.global_worker.node
        return os.path.join(node.get_session_dir_path(), "logs", "serve")
    except (AttributeError, ImportError):  # Ray Client, or another Ray version
        return None


__all__ = ["RayLogging", "VERBOSE_ENV", "serve_log_dir", "verbose_requested"]
