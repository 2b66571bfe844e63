"""Ed25519 signatures over a checkpoint's manifest (``cryptography``).

The manifest lists the sha256 and size of every file of the checkpoint (ciphertext when encrypted),
so one signature over its exact bytes covers every file. The signature lives beside it in
``manifest.sig`` (JSON: algorithm, the signer's key id, base64 signature). A reader given a trusted
public key checks the signature first, then the hashes, and only then reads a weight.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mtl_ray.errors import CheckpointError, ConfigError

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "Ed25519"


def generate_keypair() -> tuple[bytes, bytes]:
    """(private key PEM, unencrypted PKCS8; public key PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def _read(path: str | Path, setting: str) -> bytes:
    p = Path(path).expanduser()
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {p}: {exc.strerror or exc}") from None


def load_private_key(path: str | Path, setting: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, setting), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{setting}: {path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{setting}: {path} is a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path, setting: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path, setting))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{setting}: {path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{setting}: {path} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits of the sha256 of the raw public key: which key signed, at a glance."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_bytes(private: Ed25519PrivateKey, manifest: bytes) -> bytes:
    """The ``manifest.sig`` content for these exact manifest bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "key_id": public_key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(manifest)).decode("ascii"),
    }
    return json.dumps(doc, indent=2).encode("utf-8")


def check_signature(root: Path, manifest: bytes, public: Ed25519PublicKey, trusted: str) -> None:
    """Raise a :class:`CheckpointError` unless ``root/manifest.sig`` is a valid signature of ``manifest``
    by ``public`` (``trusted`` names that key's file in messages)."""
    sig_path = root / SIGNATURE_FILE
    if not sig_path.is_file():
        raise CheckpointError(
            f"{root}: not signed (no {SIGNATURE_FILE}) and a trusted public key ({trusted}) is configured; "
            "refusing to load it (sign it with: mtl-ray checkpoint sign --key-file PRIVATE.pem)"
        )
    try:
        doc: Any = json.loads(sig_path.read_text(encoding="utf-8"))
        signature = base64.b64decode(doc["signature"], validate=True)
        algorithm = doc["algorithm"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{root}: {SIGNATURE_FILE} is malformed; refusing to load the checkpoint") from None
    if algorithm != ALGORITHM:
        raise CheckpointError(f"{root}: {SIGNATURE_FILE} uses {algorithm!r}, expected {ALGORITHM}")
    try:
        public.verify(signature, manifest)
    except InvalidSignature:
        signer = doc.get("key_id", "?")
        raise CheckpointError(
            f"{root}: the signature does not verify with the trusted public key {trusted} (key id "
            f"{public_key_id(public)}; {SIGNATURE_FILE} names key id {signer}): signed by another key, or the "
            "manifest was modified; refusing to load the checkpoint"
        ) from None
