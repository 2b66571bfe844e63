"""Ed25519 signed manifests and the `mtl-ray checkpoint` commands (keygen, sign, verify, encrypt,
decrypt, rekey), run through the CLI's main()."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mtl_ray import crypto, signing
from mtl_ray.checkpoint import (
    MODEL_FILE,
    SIGNATURE_FILE,
    is_encrypted_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from mtl_ray.checkpoint_rewrite import sign_checkpoint
from mtl_ray.cli import main
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert main(["checkpoint", "keygen", str(out / "a")]) == 0
    assert main(["checkpoint", "keygen", str(out / "b")]) == 0
    return out


def _state() -> dict[str, torch.Tensor]:
    return {"shared.w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "heads.t.b": torch.ones(2)}


def _save(path: Path, **keys) -> Path:
    return save_checkpoint(path, model_state=_state(), meta={"format": "x"}, keys=CheckpointKeys(**keys))


def _trust(keys_dir: Path, who: str = "a", **extra) -> CheckpointKeys:
    return CheckpointKeys(trusted_public_key_file=str(keys_dir / who / "signing.pub.pem"), **extra)


def test_keygen_writes_owner_only_secrets_and_refuses_to_overwrite(keys_dir, capsys):
    for name in ("checkpoint.key", "signing.pem"):
        assert (keys_dir / "a" / name).stat().st_mode & 0o777 == 0o600
    crypto.parse_key((keys_dir / "a" / "checkpoint.key").read_text(), "k")  # valid base64, 32 bytes
    assert main(["checkpoint", "keygen", str(keys_dir / "a")]) == 2
    assert "exists; refusing to overwrite a key" in capsys.readouterr().err


def test_signed_at_save_verifies_and_loads(tmp_path, keys_dir):
    path = _save(tmp_path / "c", private_key_file=str(keys_dir / "a" / "signing.pem"))
    assert (path / SIGNATURE_FILE).is_file()
    verify_checkpoint(path, _trust(keys_dir))
    assert torch.equal(load_checkpoint(path, keys=_trust(keys_dir)).model_state["shared.w"], _state()["shared.w"])


def test_unsigned_wrongly_signed_and_modified_are_refused_before_weights_are_read(tmp_path, keys_dir, monkeypatch):
    unsigned = _save(tmp_path / "u")
    with pytest.raises(
        CheckpointError, match=r"not signed \(no manifest\.sig\) and a trusted public key .* is configured"
    ):
        load_checkpoint(unsigned, keys=_trust(keys_dir))
    other = _save(tmp_path / "o", private_key_file=str(keys_dir / "b" / "signing.pem"))
    with pytest.raises(CheckpointError, match="the signature does not verify with the trusted public key"):
        load_checkpoint(other, keys=_trust(keys_dir))
    # a storage writer replaces the weights and rewrites the manifest's hash: the signature breaks
    good = _save(tmp_path / "g", private_key_file=str(keys_dir / "a" / "signing.pem"))
    evil = save_checkpoint(tmp_path / "evil", model_state={"shared.w": torch.zeros(3, 4)}, meta={"format": "x"})
    shutil.copyfile(evil / MODEL_FILE, good / MODEL_FILE)
    manifest = json.loads((good / "manifest.json").read_text())
    manifest["files"][MODEL_FILE] = json.loads((evil / "manifest.json").read_text())["files"][MODEL_FILE]
    (good / "manifest.json").write_text(json.dumps(manifest, indent=2))
    import mtl_ray.checkpoint as ckpt_mod

    def no_weights(*a, **k):
        raise AssertionError("a weight was read before the signature was checked")

    monkeypatch.setattr(ckpt_mod, "read_tensors", no_weights)
    with pytest.raises(CheckpointError, match="signed by another key, or the manifest was modified"):
        load_checkpoint(good, keys=_trust(keys_dir))


def test_bad_key_files_name_the_setting(tmp_path, keys_dir):
    path = _save(tmp_path / "c")
    with pytest.raises(ConfigError, match=r"checkpoint\.signing\.trusted_public_key_file: .* is not a PEM public key"):
        verify_checkpoint(path, CheckpointKeys(trusted_public_key_file=str(keys_dir / "a" / "checkpoint.key")))
    with pytest.raises(ConfigError, match=r"--key-file: cannot read"):
        sign_checkpoint(path, str(tmp_path / "missing.pem"))


def test_cli_sign_verify_encrypt_rekey_decrypt(tmp_path, keys_dir, monkeypatch, capsys):
    monkeypatch.delenv(crypto.DEFAULT_KEY_ENV, raising=False)
    a, b = keys_dir / "a", keys_dir / "b"
    path = _save(tmp_path / "c")
    pub = str(a / "signing.pub.pem")
    assert main(["checkpoint", "verify", str(path), "--public-key", pub]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["checkpoint", "sign", str(path), "--key-file", str(a / "signing.pem")]) == 0
    assert main(["checkpoint", "verify", str(path), "--public-key", pub]) == 0
    assert "signature valid" in capsys.readouterr().out
    # encrypt in place with key a, signed; rekey to b (reading a), decrypt to a new directory
    enc_args = ["--key-file", str(a / "checkpoint.key"), "--sign-key-file", str(a / "signing.pem")]
    assert main(["checkpoint", "encrypt", str(path), *enc_args]) == 0
    assert is_encrypted_checkpoint(path)
    assert main(["checkpoint", "verify", str(path), "--public-key", pub]) == 0
    monkeypatch.setenv("NEWK", (b / "checkpoint.key").read_text())
    assert (
        main(["checkpoint", "rekey", str(path), "--key-file", str(a / "checkpoint.key"), "--new-key-env", "NEWK"]) == 0
    )
    assert "unsigned" in capsys.readouterr().out  # a rewritten manifest needs a new signature
    assert (
        main(["checkpoint", "decrypt", str(path), "--key-file", str(a / "checkpoint.key"), "-o", str(tmp_path / "p")])
        == 2
    )
    assert "wrong key or the file was modified" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert main(["checkpoint", "decrypt", str(path), "--key-env", "NEWK", "-o", str(tmp_path / "p")]) == 0
    assert not is_encrypted_checkpoint(tmp_path / "p")
    assert torch.equal(load_checkpoint(tmp_path / "p").model_state["shared.w"], _state()["shared.w"])
    assert sorted(os.listdir(tmp_path)) == ["c", "p"]  # no temporary directories left behind


def test_cli_errors_are_one_line(tmp_path, keys_dir, capsys):
    path = _save(tmp_path / "c")
    assert main(["checkpoint", "encrypt", str(path)]) == 2
    assert "give --key-env or --key-file" in capsys.readouterr().err
    assert main(["checkpoint", "sign", str(path)]) == 2
    assert "give --key-file PRIVATE.pem" in capsys.readouterr().err
    assert signing.public_key_id(signing.load_public_key(keys_dir / "a" / "signing.pub.pem", "x"))
