"""A checkpoint is a directory, written atomically and verified by sha256 before anything is read.

Layout::

    <path>/
      manifest.json               format + version, and {file: {sha256, size}} for every file below
      model.safetensors           the model's state_dict (contiguous, unshared copies of the tensors)
      meta.json                   whatever the caller passes: config, task specs, label maps, versions
      tokenizer/                  tokenizer.save_pretrained(...) output (optional)
      training_state.safetensors  every tensor of the nested training state (optional) ...
      training_state.json         ... and its JSON skeleton with placeholders for those tensors
      <extra files>               e.g. metrics.json, plots (optional, listed in the manifest too)
      manifest.sig                Ed25519 signature of manifest.json's exact bytes (optional, mtl_ray.signing)

Encrypted at rest (``checkpoint.encryption``, :mod:`mtl_ray.crypto`): the two ``.safetensors`` files hold
AES-256-GCM ciphertext bound to the checkpoint id and the file name; the manifest (format_version 2)
says so and hashes the ciphertext. Readers decrypt into memory and load safetensors from bytes, so
weights never touch disk in the clear. Every reader gets tensors through :func:`read_tensors`.

Nothing is pickled and nothing goes through ``torch.load``: tensors are safetensors, the rest JSON.
A nested training state (optimizer ``state_dict()`` with its int keys and tuples, scheduler, sampler
RNG, data positions, step) is flattened by :func:`flatten_state` and restored with the exact same
structure by :func:`unflatten_state`, so ``optimizer.load_state_dict`` takes it as is.

Atomicity: everything is written into ``<parent>/.tmp-<name>-<uuid>/`` and fsynced, then renamed
onto ``<path>``. An existing checkpoint at ``<path>`` is first renamed aside to
``<parent>/.old-<name>-<uuid>/`` and deleted after the swap. At no time does ``<path>`` hold a
partial checkpoint; a crash between the two renames leaves the previous one in ``.old-*``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are handled: verifying and meta.json need none of it
    from torch import Tensor

import mtl_ray
from mtl_ray import crypto, signing
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError

FORMAT = "mtl-ray-checkpoint"
FORMAT_VERSION = 2  # 2: may be encrypted (manifest "encryption"); plaintext checkpoints are still written as 1
PLAINTEXT_FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
TRAINING_TENSORS_FILE = "training_state.safetensors"
TRAINING_JSON_FILE = "training_state.json"
_RESERVED = {MANIFEST_FILE, MODEL_FILE, META_FILE, TRAINING_TENSORS_FILE, TRAINING_JSON_FILE}
SIGNATURE_FILE = signing.SIGNATURE_FILE
ENCRYPTED_FILES = (MODEL_FILE, TRAINING_TENSORS_FILE)  # what encryption covers: every tensor of the checkpoint

# Unlisted files with these suffixes make a checkpoint invalid: they could be loaded by something
# (an HF loader, a user script) without ever having been verified. Other unlisted files (e.g. ones
# a storage layer adds next to ours) are ignored.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".gguf")
_TAMPERED = "the checkpoint was modified or truncated"


@dataclass
class LoadedCheckpoint:
    path: Path
    model_state: dict[str, Tensor]  # CPU tensors, keys as saved
    meta: dict[str, Any]
    training_state: dict[str, Any] | None  # None when not saved or not requested
    tokenizer_dir: Path | None  # pass to AutoTokenizer.from_pretrained; None when not saved


# --------------------------------------------------------------------------- nested state <-> tensors + JSON

_TENSOR, _TUPLE, _ITEMS, _FLOAT = "__mtl_tensor__", "__mtl_tuple__", "__mtl_items__", "__mtl_float__"


def flatten_state(state: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state into a JSON-safe skeleton and a flat ``{path key: Tensor}``.

    Tensors become ``{"__mtl_tensor__": "optimizer/state/0/exp_avg"}``; tuples, dicts with non-str
    keys (the optimizer's int parameter ids) and non-finite floats are tagged so that
    :func:`unflatten_state` rebuilds exactly the same types. Leaves may be Tensor, str, int, float,
    bool, None or numpy scalars (stored as the matching Python value). The same tensor object
    referenced twice is stored once and comes back as one object.
    """
    from torch import Tensor

    tensors: dict[str, Tensor] = {}
    seen: dict[int, str] = {}

    def encode(obj: Any, path: list[str]) -> Any:
        if isinstance(obj, Tensor):
            if id(obj) not in seen:
                key = "/".join(path) or "tensor"
                base, n = key, 1
                while key in tensors:
                    key, n = f"{base}#{n}", n + 1
                seen[id(obj)] = key
                tensors[key] = obj
            return {_TENSOR: seen[id(obj)]}
        if isinstance(obj, np.generic):
            obj = obj.item()
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {_FLOAT: repr(float(obj))}
        if isinstance(obj, tuple):
            return {_TUPLE: [encode(v, [*path, str(i)]) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [encode(v, [*path, str(i)]) for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            plain = all(isinstance(k, str) and not k.startswith("__mtl_") for k in obj)
            if plain:
                return {k: encode(v, [*path, k]) for k, v in obj.items()}
            return {_ITEMS: [[encode(k, [*path, "key"]), encode(v, [*path, str(k)])] for k, v in obj.items()]}
        where = "/".join(path) or "<root>"
        raise CheckpointError(f"training state: {where}: cannot store a {type(obj).__name__} (no pickling)")

    return encode(state, []), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def decode(obj: Any) -> Any:
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if len(obj) == 1:
            ((tag, value),) = obj.items()
            if tag == _TENSOR:
                if value not in tensors:
                    raise CheckpointError(
                        f"{TRAINING_TENSORS_FILE}: missing tensor {value!r} named in {TRAINING_JSON_FILE}"
                    )
                return tensors[value]
            if tag == _TUPLE:
                return tuple(decode(v) for v in value)
            if tag == _ITEMS:
                return {decode(k): decode(v) for k, v in value}
            if tag == _FLOAT:
                return float(value)
        return {k: decode(v) for k, v in obj.items()}

    return decode(skeleton)


def _saveable(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, storage-unshared tensors as safetensors requires (tied weights are copied;
    loading them back with ``load_state_dict`` keeps the model's ties)."""
    out: dict[str, Tensor] = {}
    storages: dict[int, int] = {}
    cpu = {k: t.detach().to("cpu") for k, t in tensors.items()}
    for t in cpu.values():
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            storages[ptr] = storages.get(ptr, 0) + 1
    for key, t in cpu.items():
        shared = t.numel() > 0 and storages[t.untyped_storage().data_ptr()] > 1
        out[key] = t.contiguous().clone() if shared or not t.is_contiguous() else t
    return out


# --------------------------------------------------------------------------- writing


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms / filesystems without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_bytes(obj: Any, name: str) -> bytes:
    try:
        return json.dumps(obj, indent=2, sort_keys=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: not JSON-serializable: {exc}") from None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_relative(rel: str, what: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or str(p) != rel:
        raise CheckpointError(f"{what}: {rel!r} is not a plain relative path inside the checkpoint")
    return p


def _is_replaceable(path: Path) -> bool:
    """Only an earlier checkpoint (or an empty directory) may be replaced — never a run directory."""
    return path.is_dir() and not path.is_symlink() and ((path / MANIFEST_FILE).is_file() or not any(path.iterdir()))


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model_state: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    training_state: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    extra_files: Mapping[str, bytes] | None = None,
    keys: CheckpointKeys | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (replacing an earlier checkpoint there).

    ``tokenizer`` is anything with ``save_pretrained(dir)``; ``extra_files`` maps relative paths
    (``"metrics.json"``, ``"plots/loss.png"``) to bytes. ``keys``: encrypt the tensors with the key they
    locate and / or sign the manifest with their private key. Returns the absolute checkpoint path.
    """
    writer = _Writer.from_keys(keys)
    final = Path(path).absolute()
    if final.exists() and not _is_replaceable(final):
        raise CheckpointError(f"{final}: exists and is not a checkpoint (no {MANIFEST_FILE}); refusing to replace it")
    for rel in extra_files or {}:
        p = _check_relative(rel, "extra_files")
        if p.parts[0] in _RESERVED or p.parts[0] == TOKENIZER_DIR:
            raise CheckpointError(f"extra_files: {rel!r} collides with a checkpoint file")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_contents(tmp, model_state, meta, training_state, tokenizer, extra_files or {}, writer)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_contents(
    tmp: Path,
    model_state: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    training_state: Mapping[str, Any] | None,
    tokenizer: Any,
    extra_files: Mapping[str, bytes],
    writer: _Writer,
) -> None:
    # Serialized in memory and encrypted there when a key is set: no plaintext tensor file exists, ever.
    writer.write_tensors(tmp, MODEL_FILE, _saveable(model_state))
    _write_bytes(tmp / META_FILE, _json_bytes(dict(meta), META_FILE))
    if training_state is not None:
        skeleton, tensors = flatten_state(training_state)
        writer.write_tensors(tmp, TRAINING_TENSORS_FILE, _saveable(tensors))
        doc = {"format_version": FORMAT_VERSION, "state": skeleton}
        _write_bytes(tmp / TRAINING_JSON_FILE, _json_bytes(doc, TRAINING_JSON_FILE))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        for f in (tmp / TOKENIZER_DIR).rglob("*"):
            if f.is_file():
                _fsync_file(f)
    for rel, data in extra_files.items():
        _write_bytes(tmp / rel, bytes(data))
    writer.write_manifest(tmp)


@dataclass
class _Writer:
    """How a checkpoint is written: its id, the AES key (None: plaintext) and the signing key (None: unsigned)."""

    checkpoint_id: str
    key: bytes | None
    signer: Any  # Ed25519PrivateKey | None
    encrypted: list[str]
    hashes: dict[str, dict[str, Any]] = field(default_factory=dict)  # of files hashed while written

    @classmethod
    def from_keys(cls, keys: CheckpointKeys | None) -> _Writer:
        keys = keys or CheckpointKeys()
        key = keys.load_key(required=True) if keys.encrypts else None
        signer = None
        if keys.private_key_file:
            signer = signing.load_private_key(keys.private_key_file, keys.name("private_key_file"))
        return cls(uuid.uuid4().hex, key, signer, [])

    def write_tensors(self, tmp: Path, name: str, tensors: Mapping[str, Tensor]) -> None:
        import safetensors.torch

        if self.key is None:
            safetensors.torch.save_file(dict(tensors), str(tmp / name), metadata={"format": "pt"})
            _fsync_file(tmp / name)
            return
        self.write_blob(tmp, name, safetensors.torch.save(dict(tensors), metadata={"format": "pt"}))

    def write_blob(self, tmp: Path, name: str, data: bytes) -> None:
        if self.key is None:
            _write_bytes(tmp / name, data)
            return
        parts = crypto.encrypt_parts(self.key, data, self.checkpoint_id, name)
        self.encrypted.append(name)
        digest = hashlib.sha256()
        with open(tmp / name, "wb") as f:
            for part in parts:
                f.write(part)
                digest.update(part)
            f.flush()
            os.fsync(f.fileno())
        self.hashes[name] = {"sha256": digest.hexdigest(), "size": sum(len(p) for p in parts)}

    def write_manifest(self, tmp: Path) -> None:
        import safetensors
        import torch

        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = f.relative_to(tmp).as_posix()
            if rel not in (MANIFEST_FILE, SIGNATURE_FILE):
                files[rel] = self.hashes.get(rel) or {"sha256": _sha256(f), "size": f.stat().st_size}
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.key is not None else PLAINTEXT_FORMAT_VERSION,
            "checkpoint_id": self.checkpoint_id,
            "written_by": {
                "mtl_ray": mtl_ray.__version__,
                "torch": torch.__version__,
                "safetensors": safetensors.__version__,
            },
            "files": files,
        }
        if self.key is not None:
            manifest["encryption"] = {
                "algorithm": crypto.ALGORITHM,
                "key_id": crypto.key_id(self.key),
                "files": sorted(self.encrypted),
            }
        data = _json_bytes(manifest, MANIFEST_FILE)
        _write_bytes(tmp / MANIFEST_FILE, data)
        if self.signer is not None:
            _write_bytes(tmp / SIGNATURE_FILE, signing.signature_bytes(self.signer, data))
        for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
            _fsync_dir(d)
        _fsync_dir(tmp)


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``; an existing ``final`` is moved aside first, deleted after."""
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading and verifying


def _read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{name}: missing from {path.parent}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name}: not valid JSON ({exc}) — {_TAMPERED}") from None


def _missing_dir_message(root: Path) -> str:
    msg = f"{root}: no checkpoint directory there"
    aside = sorted(root.parent.glob(f".old-{root.name}-*")) if root.parent.is_dir() else []
    if aside:
        msg += f" (a save was interrupted; the previous checkpoint is at {aside[-1]})"
    return msg


def _read_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` table, checked for shape, format and version (hashes not checked)."""
    return _read_manifest_doc(root)[1]["files"]


def _read_manifest_doc(root: Path) -> tuple[bytes, dict[str, Any]]:
    """The manifest's exact bytes (what a signature covers) and its checked content."""
    if not root.is_dir():
        raise CheckpointError(_missing_dir_message(root))
    if not (root / MANIFEST_FILE).is_file():
        raise CheckpointError(f"{MANIFEST_FILE}: missing from {root} — not a complete mtl-ray checkpoint")
    raw = (root / MANIFEST_FILE).read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{MANIFEST_FILE}: not valid JSON ({exc}) — {_TAMPERED}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{MANIFEST_FILE}: not an mtl-ray checkpoint manifest (format must be {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{MANIFEST_FILE}: format_version {version!r} is not supported (this mtl-ray reads up to {FORMAT_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{MANIFEST_FILE}: 'files' must be a mapping")
    for rel, entry in files.items():
        _check_relative(rel, MANIFEST_FILE)
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)
        if not ok:
            raise CheckpointError(f"{MANIFEST_FILE}: malformed entry for {rel!r} (needs sha256 and size)")
    for required in (MODEL_FILE, META_FILE):
        if required not in files:
            raise CheckpointError(f"{MANIFEST_FILE}: does not list {required}")
    enc = manifest.get("encryption")
    if enc is not None:
        ok = isinstance(enc, dict) and enc.get("algorithm") == crypto.ALGORITHM and isinstance(enc.get("files"), list)
        if (
            not ok
            or not set(enc["files"]) <= set(ENCRYPTED_FILES)
            or not isinstance(manifest.get("checkpoint_id"), str)
        ):
            raise CheckpointError(
                f"{MANIFEST_FILE}: malformed 'encryption' entry (needs {crypto.ALGORITHM}, files, checkpoint_id)"
            )
    return raw, manifest


def _check_size(root: Path, rel: str, entry: Mapping[str, Any]) -> None:
    f = root / rel
    if not f.is_file():
        raise CheckpointError(f"{rel}: listed in {MANIFEST_FILE} but missing — the checkpoint is incomplete")
    size = f.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(f"{rel}: size mismatch (expected {entry['size']} bytes, got {size}) — {_TAMPERED}")


def _check_sha256(root: Path, rel: str, entry: Mapping[str, Any]) -> None:
    digest = _sha256(root / rel)
    if digest != entry["sha256"]:
        raise CheckpointError(f"{rel}: sha256 mismatch (expected {entry['sha256']}, got {digest}) — {_TAMPERED}")


def verify_checkpoint(
    path: str | os.PathLike[str], keys: CheckpointKeys | None = None, *, hash_encrypted: bool = True
) -> None:
    """Check the manifest against the directory: every listed file present with its size and sha256,
    no unlisted weight file, nothing unlisted under ``tokenizer/``. With ``keys.trusted_public_key_file``
    the manifest's signature is checked first. ``hash_encrypted=False``: sizes only for encrypted files,
    for a loader that is about to read them anyway (:func:`read_tensors` hashes a ciphertext in memory
    before decrypting it, so it is read once). Raises :class:`CheckpointError`."""
    root = Path(path)
    raw, manifest = _read_manifest_doc(root)
    check_trusted(root, raw, keys)
    files = manifest["files"]
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if not f.is_file() or rel in files or rel in (MANIFEST_FILE, SIGNATURE_FILE):
            continue
        if rel.endswith(_WEIGHT_SUFFIXES) or rel in _RESERVED or rel.startswith(f"{TOKENIZER_DIR}/"):
            raise CheckpointError(f"{rel}: present but not listed in {MANIFEST_FILE} — an unverified file; {_TAMPERED}")
    for rel, entry in files.items():  # cheap checks on every file before hashing any
        _check_size(root, rel, entry)
    deferred = set(manifest.get("encryption", {}).get("files", [])) if not hash_encrypted else set()
    for rel, entry in files.items():
        if rel not in deferred:
            _check_sha256(root, rel, entry)


def load_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` after checking it (only it) against the manifest: cheap, reads no weights."""
    root = Path(path)
    files = _read_manifest(root)
    _check_size(root, META_FILE, files[META_FILE])
    _check_sha256(root, META_FILE, files[META_FILE])
    meta = _read_json(root / META_FILE, META_FILE)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{META_FILE}: expected a JSON object, got {type(meta).__name__}")
    return meta


def check_trusted(root: Path, manifest: bytes, keys: CheckpointKeys | None) -> None:
    """With a trusted public key configured, the manifest must carry its valid signature."""
    if keys is None or not keys.trusted_public_key_file:
        return
    public = signing.load_public_key(keys.trusted_public_key_file, keys.name("trusted_public_key_file"))
    signing.check_signature(root, manifest, public, keys.trusted_public_key_file)


def is_encrypted_checkpoint(path: str | os.PathLike[str]) -> bool:
    return "encryption" in _read_manifest_doc(Path(path))[1]


def checkpoint_key(path: str | os.PathLike[str], keys: CheckpointKeys | None) -> bytes | None:
    """The key that decrypts ``path`` (None when it is plaintext). Errors say which setting to give, and
    a key that is not the one the checkpoint was encrypted with is refused before any decryption."""
    root = Path(path)
    manifest = _read_manifest_doc(root)[1]
    enc = manifest.get("encryption")
    if enc is None:
        return None
    keys = keys or CheckpointKeys()
    key = keys.load_key(required=False)
    if key is None:
        raise CheckpointError(
            f"{root}: is encrypted ({crypto.ALGORITHM}) and no key was given: give {keys.key_settings()}"
        )
    if enc.get("key_id") and crypto.key_id(key) != enc["key_id"]:
        raise CheckpointError(
            f"cannot decrypt {root / MODEL_FILE}: wrong key or the file was modified (the checkpoint was encrypted "
            f"with key id {enc['key_id']}, the configured key has id {crypto.key_id(key)})"
        )
    return key


def read_file_plain(root: Path, rel: str, key: bytes | None, manifest: Mapping[str, Any]) -> bytes:
    """A checkpoint file's plaintext bytes, decrypted in memory when the manifest lists it as encrypted
    (after checking the ciphertext's sha256 against the manifest, on the bytes just read)."""
    data = (root / rel).read_bytes()
    enc = manifest.get("encryption")
    if enc is None or rel not in enc["files"]:
        if crypto.is_encrypted(data):
            raise CheckpointError(f"{rel}: holds ciphertext the manifest does not declare — {_TAMPERED}")
        return data
    if key is None:
        raise CheckpointError(f"{root}: is encrypted and no key was given")
    expected = manifest["files"][rel]["sha256"]
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise CheckpointError(f"{rel}: sha256 mismatch (expected {expected}, got {digest}) — {_TAMPERED}")
    return crypto.decrypt_bytes(key, data, manifest["checkpoint_id"], rel, shown=str(root / rel))


def read_tensors(
    path: str | os.PathLike[str],
    prefix: str = "",
    *,
    framework: str = "pt",
    keys: CheckpointKeys | None = None,
    file: str = MODEL_FILE,
    key: bytes | None = None,
) -> dict[str, Any]:
    """THE way to read a checkpoint's tensors: those whose key starts with ``prefix`` (prefix removed),
    as CPU torch tensors (``framework="pt"``) or numpy arrays (``"np"``), whatever the encryption.

    Plaintext files are read lazily (only the matching tensors); an encrypted file is read once, its
    sha256 checked against the manifest, authenticated and decrypted in memory, then parsed with
    safetensors from bytes (no plaintext file is ever written). ``key``: an already resolved key (else
    it is resolved from ``keys``). The signature and the other files are the caller's to verify first
    (:func:`verify_checkpoint`), as :func:`load_checkpoint` does.
    """
    return read_tensor_groups(path, [prefix], framework=framework, keys=keys, file=file, key=key)[0]


def read_tensor_groups(
    path: str | os.PathLike[str],
    prefixes: Sequence[str],
    *,
    framework: str = "pt",
    keys: CheckpointKeys | None = None,
    file: str = MODEL_FILE,
    key: bytes | None = None,
) -> list[dict[str, Any]]:
    """:func:`read_tensors` for several prefixes at once (one decryption for all of them)."""
    if framework not in ("pt", "np"):
        raise CheckpointError(f"read_tensors: framework must be 'pt' or 'np', got {framework!r}")
    root = Path(path).absolute()
    manifest = _read_manifest_doc(root)[1]
    if file not in manifest["files"]:
        raise CheckpointError(f"{root}: {MANIFEST_FILE} does not list {file}")
    import safetensors  # safetensors.torch only for framework="pt": a numpy reader never imports torch

    enc = manifest.get("encryption")
    if enc is not None and file in enc["files"]:
        key = key if key is not None else checkpoint_key(root, keys)
        data = read_file_plain(root, file, key, manifest)
        try:
            if framework == "pt":
                import safetensors.torch

                items = list(safetensors.torch.load(data).items())
            else:
                items = [(k, e) for k, e in safetensors.deserialize(data) if any(k.startswith(p) for p in prefixes)]
        except Exception as exc:  # authenticated but unparsable: written by something else
            raise CheckpointError(f"{file}: unreadable safetensors data after decryption ({exc})") from None
        del data
        convert = (lambda k, v: v) if framework == "pt" else _numpy
        return [{k[len(p) :]: convert(k, v) for k, v in items if k.startswith(p)} for p in prefixes]
    out: list[dict[str, Any]] = [{} for _ in prefixes]
    try:
        with safetensors.safe_open(str(root / file), framework=framework, device="cpu") as f:
            for name in f.keys():
                for group, p in zip(out, prefixes):
                    if name.startswith(p):
                        group[name[len(p) :]] = f.get_tensor(name)
    except Exception as exc:  # SafetensorError, OSError: a corrupt file when not verified
        with open(root / file, "rb") as fh:
            if crypto.is_encrypted(fh.read(len(crypto.MAGIC))):
                raise CheckpointError(f"{file}: holds ciphertext the manifest does not declare — {_TAMPERED}") from None
        raise CheckpointError(f"{file}: unreadable safetensors file ({exc}) — {_TAMPERED}") from None
    return out


_NP_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
}
_NP_DTYPES["BOOL"] = "?"


def _numpy(name: str, entry: Mapping[str, Any]) -> np.ndarray:
    """One ``safetensors.deserialize`` entry as a numpy array (what ``safetensors.numpy`` would return)."""
    dtype = _NP_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointError(f"{name}: dtype {entry['dtype']} has no numpy equivalent; read it with framework='pt'")
    return np.frombuffer(entry["data"], dtype=dtype).reshape(entry["shape"])


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    load_training_state: bool = True,
    keys: CheckpointKeys | None = None,
) -> LoadedCheckpoint:
    """Verify (unless ``verify=False``: manifest shape only, no hashing) and then load a checkpoint.

    All tensors come back on the CPU; ``training_state`` is the nested structure that was saved.
    ``keys``: where the decryption key and the trusted public key are (:class:`~mtl_ray.crypto.CheckpointKeys`).
    """
    root = Path(path).absolute()
    if verify:
        verify_checkpoint(root, keys, hash_encrypted=False)  # read_tensors hashes each ciphertext it decrypts
    files = _read_manifest(root)
    meta = _read_json(root / META_FILE, META_FILE)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{META_FILE}: expected a JSON object, got {type(meta).__name__}")
    key = checkpoint_key(root, keys)
    model_state = read_tensors(root, key=key)

    training_state = None
    if load_training_state and TRAINING_JSON_FILE in files:
        if TRAINING_TENSORS_FILE not in files:
            raise CheckpointError(f"{MANIFEST_FILE}: lists {TRAINING_JSON_FILE} without {TRAINING_TENSORS_FILE}")
        doc = _read_json(root / TRAINING_JSON_FILE, TRAINING_JSON_FILE)
        if not isinstance(doc, dict) or "state" not in doc:
            raise CheckpointError(f"{TRAINING_JSON_FILE}: expected an object with a 'state' key")
        training_state = unflatten_state(doc["state"], read_tensors(root, file=TRAINING_TENSORS_FILE, key=key))

    has_tokenizer = any(rel.startswith(f"{TOKENIZER_DIR}/") for rel in files)
    return LoadedCheckpoint(
        path=root,
        model_state=model_state,
        meta=meta,
        training_state=training_state,
        tokenizer_dir=root / TOKENIZER_DIR if has_tokenizer else None,
    )
