"""Rewriting a checkpoint's protection: encrypt, decrypt, rekey (:func:`rewrite_checkpoint`) and sign
(:func:`sign_checkpoint`) — what ``mtl-ray checkpoint encrypt | decrypt | rekey | sign`` run.

Both are atomic in the way :func:`mtl_ray.checkpoint.save_checkpoint` is: output is assembled in a
``.tmp-*`` sibling and renamed into place, so an interruption leaves the original intact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from mtl_ray import signing
from mtl_ray.checkpoint import (
    ENCRYPTED_FILES,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    _fsync_dir,
    _install,
    _is_replaceable,
    _read_manifest_doc,
    _write_bytes,
    _Writer,
    checkpoint_key,
    read_file_plain,
    verify_checkpoint,
)
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError


def rewrite_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    read_keys: CheckpointKeys | None = None,
    write_keys: CheckpointKeys | None = None,
) -> Path:
    """Copy a verified checkpoint to ``dst`` (default: replace ``src``) with the tensors decrypted by
    ``read_keys`` and re-encrypted for ``write_keys`` (plaintext when it locates no key), under a new
    checkpoint id, signed when ``write_keys`` has a private key. Plaintext exists only in memory
    unless the output is plaintext. Atomic like :func:`save_checkpoint`: an interruption leaves ``src``
    intact and only a ``.tmp-*`` directory (never a directory with a manifest) at the output."""
    root = Path(src).absolute()
    verify_checkpoint(root, read_keys)
    manifest = _read_manifest_doc(root)[1]
    key = checkpoint_key(root, read_keys)
    writer = _Writer.from_keys(write_keys)
    final = Path(dst).absolute() if dst is not None else root
    if final != root and final.exists() and not _is_replaceable(final):
        raise CheckpointError(f"{final}: exists and is not a checkpoint (no {MANIFEST_FILE}); refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for rel in manifest["files"]:
            data = read_file_plain(root, rel, key, manifest)
            if rel in ENCRYPTED_FILES:
                writer.write_blob(tmp, rel, data)
            else:
                _write_bytes(tmp / rel, data)
        writer.write_manifest(tmp)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def sign_checkpoint(path: str | os.PathLike[str], private_key_file: str, setting: str = "--key-file") -> str:
    """Verify ``path`` (sizes and sha256), then write its ``manifest.sig`` atomically. Returns the key id."""
    root = Path(path).absolute()
    verify_checkpoint(root)
    private = signing.load_private_key(private_key_file, setting)
    raw = _read_manifest_doc(root)[0]
    tmp = root / f".tmp-{SIGNATURE_FILE}-{uuid.uuid4().hex}"
    try:
        _write_bytes(tmp, signing.signature_bytes(private, raw))
        os.replace(tmp, root / SIGNATURE_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)
    return signing.public_key_id(private.public_key())
