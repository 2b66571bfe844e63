"""``mtl-ray checkpoint keygen | sign | verify | encrypt | decrypt | rekey`` and the key flags of
``eval`` / ``predict`` / ``serve``. Flags name where a key is (an environment variable or a file),
never the key itself: a key on a command line would end up in shell histories and ``ps``.

    mtl-ray checkpoint keygen -o keys/                         # keys/checkpoint.key, keys/signing{,.pub}.pem
    MTL_KEY=$(cat keys/checkpoint.key) mtl-ray checkpoint encrypt runs/x/best --key-env MTL_KEY
    mtl-ray checkpoint sign runs/x/best --key-file keys/signing.pem
    mtl-ray checkpoint verify runs/x/best --public-key keys/signing.pub.pem
    mtl-ray checkpoint rekey runs/x/best --key-file old.key --new-key-file new.key
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mtl_ray.crypto import CheckpointKeys, generate_key, key_id
from mtl_ray.errors import MtlRayError

ACTIONS = ("keygen", "sign", "verify", "encrypt", "decrypt", "rekey")


def add_key_args(p: argparse.ArgumentParser, *, public_key: bool = True) -> None:
    """``--key-env`` / ``--key-file`` (decryption key) and ``--public-key`` (trusted signer)."""
    p.add_argument("--key-env", default=None, help="environment variable holding the base64 AES-256 key")
    p.add_argument("--key-file", default=None, help="file holding the base64 AES-256 key (e.g. a mounted secret)")
    if public_key:
        p.add_argument(
            "--public-key", default=None, help="trusted Ed25519 public key (PEM): refuse unsigned checkpoints"
        )


def keys_from_args(args: argparse.Namespace, prefix: str = "") -> CheckpointKeys:
    attr = prefix.replace("-", "_")
    env, file = getattr(args, f"{attr}key_env"), getattr(args, f"{attr}key_file")
    if env and file:
        raise MtlRayError(f"give --{prefix}key-env or --{prefix}key-file, not both")
    return CheckpointKeys(
        key_env=env,
        key_file=file,
        trusted_public_key_file=getattr(args, "public_key", None) if not prefix else None,
        private_key_file=getattr(args, "sign_key_file", None),  # writers only (encrypt, rekey)
        setting=f"--{prefix}",
    )


def add_checkpoint_parser(sub: argparse._SubParsersAction) -> None:
    ck = sub.add_parser(
        "checkpoint",
        help="keys, signatures and encryption of checkpoints (docs/security.md)",
        description="keygen: make an AES-256 key and an Ed25519 key pair. sign / verify: Ed25519 signature of the "
        "manifest. encrypt / decrypt / rekey: rewrite a checkpoint atomically (in place, or to -o).",
    )
    ck.add_argument("action", choices=ACTIONS)
    ck.add_argument("path", help="a checkpoint directory (keygen: the directory to write keys into)")
    ck.add_argument("--output", "-o", default=None, help="encrypt/decrypt/rekey: write here instead of in place")
    add_key_args(ck)
    ck.add_argument("--new-key-env", default=None, help="rekey: environment variable holding the new key")
    ck.add_argument("--new-key-file", default=None, help="rekey: file holding the new key")
    ck.add_argument("--sign-key-file", default=None, help="encrypt/decrypt/rekey: sign the output with this key")


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only; never overwrite an existing key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MtlRayError(f"{path}: exists; refusing to overwrite a key (move it away first)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from mtl_ray import checkpoint, checkpoint_rewrite, signing

    if args.action == "keygen":
        out = Path(args.path)
        out.mkdir(parents=True, exist_ok=True)
        private_pem, public_pem = signing.generate_keypair()
        key = generate_key()
        _write_secret(out / "checkpoint.key", (key + "\n").encode())
        _write_secret(out / "signing.pem", private_pem)
        (out / "signing.pub.pem").write_bytes(public_pem)
        pub = signing.load_public_key(out / "signing.pub.pem", "keygen")
        import base64

        print(f"{out / 'checkpoint.key'}    AES-256 key (key id {key_id(base64.b64decode(key))}); keep secret")
        print(f"{out / 'signing.pem'}       Ed25519 private key (key id {signing.public_key_id(pub)}); keep secret")
        print(f"{out / 'signing.pub.pem'}   Ed25519 public key: give it to readers (--public-key)")
        return 0
    if args.action == "sign":
        if not args.key_file:
            raise MtlRayError("checkpoint sign: give --key-file PRIVATE.pem (an Ed25519 private key)")
        kid = checkpoint_rewrite.sign_checkpoint(args.path, args.key_file)
        print(f"signed {Path(args.path).absolute()} (key id {kid})")
        return 0
    if args.action == "verify":
        keys = CheckpointKeys(trusted_public_key_file=args.public_key, setting="--")
        checkpoint.verify_checkpoint(args.path, keys)
        enc = "encrypted" if checkpoint.is_encrypted_checkpoint(args.path) else "plaintext"
        signed = f", signature valid ({args.public_key})" if args.public_key else " (signature not checked)"
        print(f"ok: {Path(args.path).absolute()}: every file matches the manifest; {enc}{signed}")
        return 0

    read_keys = keys_from_args(args) if args.action != "encrypt" else CheckpointKeys(setting="--")
    if args.action == "encrypt":
        write_keys = keys_from_args(args)
        if not write_keys.encrypts:
            raise MtlRayError("checkpoint encrypt: give --key-env or --key-file (where the key is)")
        read_keys = CheckpointKeys(trusted_public_key_file=args.public_key, setting="--")
    elif args.action == "decrypt":
        write_keys = CheckpointKeys(private_key_file=args.sign_key_file, setting="--")
    else:  # rekey
        write_keys = keys_from_args(args, "new-")
        if not write_keys.encrypts:
            raise MtlRayError("checkpoint rekey: give --new-key-env or --new-key-file (where the new key is)")
    out = checkpoint_rewrite.rewrite_checkpoint(args.path, args.output, read_keys=read_keys, write_keys=write_keys)
    done = {"encrypt": "encrypted", "decrypt": "decrypted (weights are now plaintext on disk)", "rekey": "re-keyed"}
    signed = "; signed" if write_keys.private_key_file else "; unsigned (sign it again if readers need a signature)"
    print(f"{done[args.action]}: {out}{signed}")
    return 0
