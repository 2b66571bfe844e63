"""One folder per Ray run in ``storage_path``: checkpoints *and* everything else the run writes.

Ray Train keeps a run's checkpoints in ``<storage_path>/<run name>/``; :class:`RunFolder` puts the
metrics log, TensorBoard events, curves, summary and the config copy next to them, so a run's outputs
outlive the job, the node and Ray's temporary working-dir copy. ``storage_path`` is a local path
(shared by every node, e.g. NFS, for a multi-node run) or any URI ``pyarrow.fs.FileSystem.from_uri``
accepts (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, ``file://``) — the same rule as Ray Train's.

For a URI, rank 0 and the driver write into a local staging folder (same path on every node) and
:meth:`RunFolder.push` copies it to the URI after every evaluation and at the end; a restarted
attempt on another node first pulls the run's ``metrics.jsonl`` back (:meth:`RunFolder.pull`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl_ray.errors import StorageError

STAGING_ROOT = "mtl-ray-runs"  # under the node's temp dir: where a URI run's files are written first
# Ray Train writes the checkpoints itself; push() leaves them (and Ray's own bookkeeping) alone
_NOT_PUSHED = ("step-", "checkpoint_", ".")


def is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(location: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path in it)`` for a URI; raises :class:`StorageError` naming it."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowException, OSError, ValueError) as exc:
        raise StorageError(
            f"storage_path {location!r} is not reachable: pyarrow's filesystems cannot open it ({exc})"
        ) from None


def check_writable(storage: str) -> None:
    """Create ``storage`` if needed, write and delete a probe file; fail naming the path and why.

    Run on the driver before any worker starts, so a typo'd bucket or a read-only mount fails in
    seconds, not after the first evaluation."""
    probe = f".mtl-ray-write-probe-{uuid.uuid4().hex[:8]}"
    if not is_uri(storage):
        path = Path(storage)
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / probe).write_bytes(b"ok")
            (path / probe).unlink()
        except OSError as exc:
            raise StorageError(
                f"storage_path {storage!r} is not writable ({exc.strerror or exc}); "
                "set --storage-path / ray.storage_path to a folder (or URI) this user can write"
            ) from None
        return
    fs, root = _filesystem(storage)
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root.rstrip('/')}/{probe}") as f:
            f.write(b"ok")
        fs.delete_file(f"{root.rstrip('/')}/{probe}")
    except OSError as exc:
        raise StorageError(
            f"storage_path {storage!r} is not reachable or not writable ({exc}); "
            "check the URI, the credentials and that the bucket exists"
        ) from None


@dataclass(frozen=True)
class RunFolder:
    """Where one run lives (``location``) and where this process writes its files (``local``)."""

    location: str  # <storage_path>/<run name>: an absolute local path or a URI
    local: str  # == location for local storage; a staging folder on this node for a URI

    @classmethod
    def create(cls, storage: str, name: str) -> RunFolder:
        if is_uri(storage):
            staging = Path(tempfile.gettempdir()) / STAGING_ROOT / name
            return cls(f"{storage.rstrip('/')}/{name}", str(staging))
        path = str(Path(storage) / name)
        return cls(path, path)

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> RunFolder:
        return cls(d["location"], d["local"])

    def to_dict(self) -> dict[str, str]:
        return {"location": self.location, "local": self.local}

    @property
    def remote(self) -> bool:
        return self.location != self.local

    def child(self, *parts: str) -> RunFolder:
        """A folder inside this run (a Tune trial's inside its experiment). Call it where the child
        writes: for a URI its staging folder is under *this* node's temp dir (a trial may run on
        another node than the driver), named after the child's location so that two experiments of
        the same name in different storages never share one."""
        rel = "/".join(parts)
        if not self.remote:
            path = str(Path(self.local, *parts))
            return RunFolder(path, path)
        location = f"{self.location.rstrip('/')}/{rel}"
        parent = self.location.rstrip("/").rsplit("/", 1)[-1]
        digest = hashlib.sha256(location.encode()).hexdigest()[:8]
        return RunFolder(location, str(Path(tempfile.gettempdir(), STAGING_ROOT, f"{parent}-{digest}", *parts)))

    def address(self, path: str) -> str:
        """A path inside this run in the storage's filesystem (what Ray's ``Checkpoint.path`` holds: no
        scheme, e.g. ``bucket/runs/x/...`` for ``s3://bucket/runs/x``) as a location a user can open."""
        if not self.remote or "://" in path:
            return path
        root = _filesystem(self.location)[1].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return self.location.rstrip("/") + path[len(root) :]
        return path

    def push(self, skip: tuple[str, ...] = ()) -> None:
        """Copy the staged files (not the checkpoints: Ray Train / Tune upload those) to the URI;
        ``skip``: top-level names left alone too (an experiment's ``trials``, pushed by each trial)."""
        if not self.remote:
            return
        import pyarrow.fs

        fs, root = _filesystem(self.location)
        local = Path(self.local)
        for path in sorted(local.rglob("*")):
            rel = path.relative_to(local)
            if not path.is_file() or rel.parts[0].startswith(_NOT_PUSHED) or rel.parts[0] in skip:
                continue
            target = f"{root.rstrip('/')}/{rel.as_posix()}"
            fs.create_dir(os.path.dirname(target), recursive=True)
            pyarrow.fs.copy_files(str(path), target, destination_filesystem=fs)

    def pull(self, *names: str) -> None:
        """Fetch ``names`` (files directly in the run folder) from the URI into the staging folder,
        where present: a restarted attempt continues the run's own metrics log."""
        if not self.remote:
            return
        import pyarrow.fs

        fs, root = _filesystem(self.location)
        Path(self.local).mkdir(parents=True, exist_ok=True)
        for name in names:
            source = f"{root.rstrip('/')}/{name}"
            if fs.get_file_info(source).type == pyarrow.fs.FileType.File:
                pyarrow.fs.copy_files(source, str(Path(self.local) / name), source_filesystem=fs)


__all__ = ["RunFolder", "check_writable", "is_uri"]
