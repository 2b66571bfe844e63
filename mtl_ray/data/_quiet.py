"""Small shared helpers: silence `datasets` progress bars, give temp folders normal permissions."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Disable `datasets`' per-operation progress bars inside the block, then restore the setting."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def publishable(path: Path) -> None:
    """``mkdtemp``/``mkstemp`` make 0700/0600 entries; give one the umask's normal mode before
    renaming it into a cache that other users (or a shared cluster) may read."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)
