"""Checkpoint encryption at rest: AES-256-GCM (``cryptography``), keys from an env var or a file.

A key is 32 random bytes, written as base64 (``mtl-ray checkpoint keygen``). It is read from an
environment variable or a file (a Kubernetes secret mounted as a file) named by the settings below —
never from a checkpoint, a config file's contents or the command line. Settings carry only the key's
*location*, so they can travel in configs, Serve app args and Ray task arguments.

An encrypted file is ``MAGIC || nonce (12 bytes, fresh per file) || ciphertext || tag (16 bytes)``.
The associated data binds it to its checkpoint and its name (``mtl-ray/<checkpoint id>/<file>``): a file
moved to another checkpoint, or renamed inside one, fails authentication like a modified one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mtl_ray.errors import CheckpointError, ConfigError

ALGORITHM = "AES-256-GCM"
MAGIC = b"MTLRAYE1"  # 8 bytes: marks an mtl-ray encrypted file (never a valid safetensors header length)
NONCE_BYTES = 12
KEY_BYTES = 32
# Used when a checkpoint is encrypted and the reader was given no key settings at all.
DEFAULT_KEY_ENV = "MTL_RAY_CHECKPOINT_KEY"


@dataclass(frozen=True)
class CheckpointKeys:
    """What a checkpoint reader or writer is told about keys: locations only, picklable, JSON-safe.

    ``setting`` says how the user spells these settings where they were given, so errors name them:
    ``"checkpoint"`` (a training config: ``checkpoint.encryption.key_env``), ``""`` (a Serve config:
    ``encryption.key_env``), ``"--"`` / ``"--new-"`` (CLI flags: ``--key-env``, ``--new-key-file``)."""

    key_env: str | None = None
    key_file: str | None = None
    private_key_file: str | None = None  # sign what is written
    trusted_public_key_file: str | None = None  # refuse what is not signed by this key
    setting: str = "checkpoint"

    @classmethod
    def from_config(cls, cfg: Any) -> CheckpointKeys:
        """From a :class:`mtl_ray.config.CheckpointConfig` (``cfg.checkpoint``); None: no settings."""
        if cfg is None:
            return cls()
        return cls(
            key_env=cfg.encryption.key_env,
            key_file=cfg.encryption.key_file,
            private_key_file=cfg.signing.private_key_file,
            trusted_public_key_file=cfg.signing.trusted_public_key_file,
        )

    def name(self, field_name: str) -> str:
        """The user-facing name of one setting (see ``setting``)."""
        if self.setting.startswith("--"):
            flag = {"trusted_public_key_file": "public-key", "private_key_file": "sign-key-file"}
            return self.setting + flag.get(field_name, field_name.replace("_", "-"))
        group = "signing" if field_name in ("private_key_file", "trusted_public_key_file") else "encryption"
        return ".".join(p for p in (self.setting, group, field_name) if p)

    def as_dict(self) -> dict[str, str | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def encrypts(self) -> bool:
        """Whether a writer with these settings encrypts."""
        return bool(self.key_env or self.key_file)

    def key_settings(self) -> str:
        """How to give a key, for error messages."""
        return f"{self.name('key_env')} or {self.name('key_file')} (or set ${DEFAULT_KEY_ENV})"

    def load_key(self, *, required: bool) -> bytes | None:
        """The 32-byte key from the configured location; with none configured, ``$MTL_RAY_CHECKPOINT_KEY``
        when set. ``required``: raise (naming the settings) instead of returning None."""
        if self.key_env:
            name = self.name("key_env")
            text = os.environ.get(self.key_env)
            if not text or not text.strip():
                raise ConfigError(f"{name}: environment variable {self.key_env!r} is unset or empty")
            return parse_key(text, f"{name} (${self.key_env})")
        if self.key_file:
            name = self.name("key_file")
            path = Path(self.key_file).expanduser()
            try:
                text = path.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
            return parse_key(text, f"{name} ({path})")
        text = os.environ.get(DEFAULT_KEY_ENV)
        if text and text.strip():
            return parse_key(text, f"${DEFAULT_KEY_ENV}")
        if required:
            raise ConfigError(f"no encryption key configured: give {self.key_settings()}")
        return None


def parse_key(text: str, setting: str) -> bytes:
    """base64 text → 32 bytes; a :class:`ConfigError` naming ``setting`` otherwise (the key is never echoed)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{setting}: not valid base64 (expected 32 random bytes, base64-encoded)") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{setting}: the key is {len(key)} bytes, AES-256 needs {KEY_BYTES} (make one with: mtl-ray checkpoint keygen)"
        )
    return key


def generate_key() -> str:
    """A fresh random AES-256 key, base64."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    """A short, non-secret name of a key (16 hex digits of a domain-separated sha256) for manifests and
    messages: tells two keys apart without revealing anything usable about either."""
    return hashlib.sha256(b"mtl-ray key id\0" + key).hexdigest()[:16]


def associated_data(checkpoint_id: str, name: str) -> bytes:
    return f"mtl-ray/{checkpoint_id}/{name}".encode()


def is_encrypted(head: bytes) -> bool:
    """Whether bytes (the first 8 of a file suffice) are an mtl-ray encrypted file."""
    return head[: len(MAGIC)] == MAGIC


def encrypt_parts(key: bytes, data: bytes, checkpoint_id: str, name: str) -> tuple[bytes, bytes]:
    """(header, ciphertext + tag) of ``data`` bound to ``checkpoint_id`` and ``name``, a fresh nonce every
    call; the file is their concatenation (written one after the other: no copy of a large buffer)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return MAGIC + nonce, AESGCM(key).encrypt(nonce, data, associated_data(checkpoint_id, name))


def encrypt_bytes(key: bytes, data: bytes, checkpoint_id: str, name: str) -> bytes:
    """The whole encrypted file as one buffer (see :func:`encrypt_parts`)."""
    header, body = encrypt_parts(key, data, checkpoint_id, name)
    return header + body


def decrypt_bytes(key: bytes, blob: bytes, checkpoint_id: str, name: str, shown: str | None = None) -> bytes:
    """Plaintext of an :func:`encrypt_bytes` output; a wrong key, another checkpoint's or file's
    ciphertext, or any modified byte all raise ``cannot decrypt <shown or name>: ...``."""
    shown = shown or name
    if not is_encrypted(blob) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise CheckpointError(f"cannot decrypt {shown}: not an mtl-ray encrypted file (truncated or replaced)")
    view = memoryview(blob)  # slices of a view do not copy the (large) ciphertext
    nonce = bytes(view[len(MAGIC) : len(MAGIC) + NONCE_BYTES])
    try:
        return AESGCM(key).decrypt(nonce, view[len(MAGIC) + NONCE_BYTES :], associated_data(checkpoint_id, name))
    except InvalidTag:
        raise CheckpointError(f"cannot decrypt {shown}: wrong key or the file was modified") from None
