"""Encryption at rest: bit-exact round trips, ciphertext only on disk, and every bad input's message."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_ray import crypto
from mtl_ray.checkpoint import (
    MODEL_FILE,
    TRAINING_TENSORS_FILE,
    is_encrypted_checkpoint,
    load_checkpoint,
    read_tensors,
    save_checkpoint,
    verify_checkpoint,
)
from mtl_ray.checkpoint_rewrite import rewrite_checkpoint
from mtl_ray.config import config_from_dict
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError, ConfigError

KEY_ENV = "MTL_TEST_CKPT_KEY"


def _key(seed: int) -> str:
    return base64.b64encode(bytes([seed]) * 32).decode()


@pytest.fixture
def key_env(monkeypatch) -> CheckpointKeys:
    monkeypatch.delenv(crypto.DEFAULT_KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_ENV, _key(1))
    return CheckpointKeys(key_env=KEY_ENV)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "shared.w": torch.randn(16, 8, generator=g),
        "heads.a.bias": torch.randn(8, generator=g).to(torch.bfloat16),
        "heads.b.idx": torch.arange(5, dtype=torch.int64),
    }


def _training_state() -> dict:
    return {"optimizer": {"state": {0: {"exp_avg": torch.full((3,), 0.25)}}, "step": 7}, "rng": (1, 2.5)}


def _save(path: Path, keys: CheckpointKeys | None) -> Path:
    return save_checkpoint(
        path, model_state=_state(), meta={"format": "x"}, training_state=_training_state(), keys=keys
    )


def _rewrite_manifest_hash(path: Path, name: str) -> None:
    """What a storage writer can do without the key: make the manifest match a modified file."""
    import hashlib

    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_round_trip_is_bit_exact_and_files_hold_only_ciphertext(tmp_path, key_env):
    path = _save(tmp_path / "enc", key_env)
    assert is_encrypted_checkpoint(path)
    loaded = load_checkpoint(path, keys=key_env)
    for k, t in _state().items():
        assert loaded.model_state[k].dtype == t.dtype and torch.equal(loaded.model_state[k], t), k
    assert torch.equal(loaded.training_state["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 0.25))
    assert loaded.training_state["rng"] == (1, 2.5)
    # what is on disk: the magic, never a safetensors header, never a tensor's bytes
    w_bytes = _state()["shared.w"].numpy().tobytes()
    for name in (MODEL_FILE, TRAINING_TENSORS_FILE):
        data = (path / name).read_bytes()
        assert data.startswith(crypto.MAGIC)
        assert b'"dtype"' not in data and b"__metadata__" not in data
        assert w_bytes[:64] not in data
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["encryption"] == {
        "algorithm": "AES-256-GCM",
        "key_id": crypto.key_id(bytes([1]) * 32),
        "files": [MODEL_FILE, TRAINING_TENSORS_FILE],
    }


def test_read_tensors_by_prefix_torch_and_numpy_equal_plaintext(tmp_path, key_env):
    enc = _save(tmp_path / "enc", key_env)
    plain = _save(tmp_path / "plain", None)
    assert json.loads((plain / "manifest.json").read_text())["format_version"] == 1
    for path in (enc, plain):
        heads = read_tensors(path, "heads.", keys=key_env)
        assert sorted(heads) == ["a.bias", "b.idx"]
        assert torch.equal(heads["a.bias"], _state()["heads.a.bias"])
        arrays = read_tensors(path, "shared.", framework="np", keys=key_env)
        assert isinstance(arrays["w"], np.ndarray)
        np.testing.assert_array_equal(arrays["w"], _state()["shared.w"].numpy())


def test_a_fresh_nonce_per_file_and_save(tmp_path, key_env):
    a = (_save(tmp_path / "a", key_env) / MODEL_FILE).read_bytes()
    b = (_save(tmp_path / "b", key_env) / MODEL_FILE).read_bytes()
    nonce = slice(len(crypto.MAGIC), len(crypto.MAGIC) + crypto.NONCE_BYTES)
    assert a[nonce] != b[nonce] and a != b


def test_wrong_key_is_refused_naming_the_file(tmp_path, key_env, monkeypatch):
    path = _save(tmp_path / "enc", key_env)
    monkeypatch.setenv(KEY_ENV, _key(2))
    with pytest.raises(
        CheckpointError, match=r"cannot decrypt .*model\.safetensors: wrong key or the file was modified"
    ):
        load_checkpoint(path, keys=key_env)


def test_flipped_ciphertext_byte_is_refused_naming_the_file(tmp_path, key_env):
    path = _save(tmp_path / "enc", key_env)
    data = bytearray((path / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        load_checkpoint(path, keys=key_env)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):  # hashed before decrypting
        read_tensors(path, keys=key_env)
    # with the manifest rewritten to match (no signature configured), GCM authentication still refuses it
    _rewrite_manifest_hash(path, MODEL_FILE)
    with pytest.raises(
        CheckpointError, match=r"cannot decrypt .*model\.safetensors: wrong key or the file was modified"
    ):
        load_checkpoint(path, keys=key_env, verify=False)


def test_a_file_moved_between_checkpoints_does_not_decrypt(tmp_path, key_env):
    """The associated data binds each file to its checkpoint id and name."""
    a, b = _save(tmp_path / "a", key_env), _save(tmp_path / "b", key_env)
    shutil.copyfile(a / MODEL_FILE, b / MODEL_FILE)
    _rewrite_manifest_hash(b, MODEL_FILE)
    with pytest.raises(CheckpointError, match="wrong key or the file was modified"):
        load_checkpoint(b, keys=key_env)
    c = _save(tmp_path / "c", key_env)  # renamed inside one checkpoint
    shutil.copyfile(c / TRAINING_TENSORS_FILE, c / MODEL_FILE)
    _rewrite_manifest_hash(c, MODEL_FILE)
    with pytest.raises(CheckpointError, match="wrong key or the file was modified"):
        load_checkpoint(c, keys=key_env, load_training_state=False)


def test_encrypted_without_a_key_says_which_setting_to_give(tmp_path, key_env, monkeypatch):
    path = _save(tmp_path / "enc", key_env)
    with pytest.raises(
        CheckpointError, match=r"is encrypted .* no key was given: give checkpoint\.encryption\.key_env"
    ):
        load_checkpoint(path)
    serve_keys = CheckpointKeys(setting="")
    with pytest.raises(CheckpointError, match=r"give encryption\.key_env or encryption\.key_file"):
        read_tensors(path, keys=serve_keys)
    monkeypatch.setenv(crypto.DEFAULT_KEY_ENV, _key(1))  # the default location works without settings
    assert torch.equal(load_checkpoint(path).model_state["shared.w"], _state()["shared.w"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 !!", r"checkpoint\.encryption\.key_env \(\$MTL_TEST_CKPT_KEY\): not valid base64"),
        (
            base64.b64encode(b"x" * 16).decode(),
            r"checkpoint\.encryption\.key_env .*: the key is 16 bytes, AES-256 needs 32",
        ),
        ("", r"checkpoint\.encryption\.key_env: environment variable 'MTL_TEST_CKPT_KEY' is unset or empty"),
    ],
)
def test_bad_keys_name_the_setting_and_never_echo_the_key(tmp_path, key_env, monkeypatch, value, message):
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError, match=message) as err:
        _save(tmp_path / "enc", key_env)
    assert value not in str(err.value) or not value
    assert not (tmp_path / "enc").exists()


def test_key_file_and_its_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(crypto.DEFAULT_KEY_ENV, raising=False)
    key_file = tmp_path / "k"
    key_file.write_text(_key(3) + "\n")
    keys = CheckpointKeys(key_file=str(key_file))
    path = _save(tmp_path / "enc", keys)
    assert torch.equal(read_tensors(path, keys=keys)["shared.w"], _state()["shared.w"])
    missing = CheckpointKeys(key_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"checkpoint\.encryption\.key_file: cannot read .*nope"):
        read_tensors(path, keys=missing)


def test_config_section_is_typed_and_unknown_keys_fail_by_name(tiny_config):
    base = tiny_config()
    from mtl_ray.config import config_to_dict

    d = config_to_dict(base)
    d["checkpoint"] = {"encryption": {"key_env": "K"}, "signing": {"private_key_file": "/k.pem"}}
    cfg = config_from_dict(d)
    assert CheckpointKeys.from_config(cfg.checkpoint) == CheckpointKeys(key_env="K", private_key_file="/k.pem")
    d["checkpoint"] = {"encryption": {"key_envv": "K"}}
    with pytest.raises(
        ConfigError, match=r"checkpoint\.encryption\.key_envv: unknown key; valid keys: key_env, key_file"
    ):
        config_from_dict(d)
    d["checkpoint"] = {"encryption": {"key_env": "K", "key_file": "f"}}
    with pytest.raises(ConfigError, match="give key_env or key_file, not both"):
        config_from_dict(d)


def test_rewrite_encrypt_decrypt_rekey_round_trip(tmp_path, key_env, monkeypatch):
    plain = _save(tmp_path / "plain", None)
    enc = rewrite_checkpoint(plain, tmp_path / "enc", write_keys=key_env)
    assert is_encrypted_checkpoint(enc) and not is_encrypted_checkpoint(plain)
    monkeypatch.setenv("NEW_KEY", _key(9))
    new_keys = CheckpointKeys(key_env="NEW_KEY")
    rewrite_checkpoint(enc, read_keys=key_env, write_keys=new_keys)  # in place
    with pytest.raises(CheckpointError, match="wrong key"):
        load_checkpoint(enc, keys=key_env)
    back = rewrite_checkpoint(enc, tmp_path / "back", read_keys=new_keys)
    assert not is_encrypted_checkpoint(back)
    verify_checkpoint(back)
    for a, b in ((plain, back), (plain, enc)):
        sa, sb = load_checkpoint(a, keys=new_keys), load_checkpoint(b, keys=new_keys)
        assert all(torch.equal(sa.model_state[k], sb.model_state[k]) for k in sa.model_state)
        assert (a / "meta.json").read_bytes() == (b / "meta.json").read_bytes()


def test_an_interrupted_rewrite_leaves_the_original_intact(tmp_path, key_env, monkeypatch):
    import mtl_ray.checkpoint_rewrite as ckpt_mod

    plain = _save(tmp_path / "plain", None)
    before = {p.name: p.read_bytes() for p in plain.iterdir() if p.is_file()}

    def crash(tmp, final):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod, "_install", crash)
    with pytest.raises(KeyboardInterrupt):
        rewrite_checkpoint(plain, write_keys=key_env)
    assert {p.name: p.read_bytes() for p in plain.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]  # no half-written output left


def test_key_file_paths_become_absolute_for_ray_workers(monkeypatch, tmp_path):
    from mtl_ray.training.driver import absolute_paths

    monkeypatch.chdir(tmp_path)  # Ray Train workers start in their run directory, not here
    cfg = config_from_dict(
        {
            "tasks": {"t": {"type": "classification", "source": "data.csv"}},
            "checkpoint": {
                "encryption": {"key_file": "keys/checkpoint.key"},
                "signing": {"private_key_file": "keys/signing.pem", "trusted_public_key_file": "keys/signing.pub.pem"},
            },
        }
    )
    out = absolute_paths(cfg).checkpoint
    assert out.encryption.key_file == str(tmp_path / "keys" / "checkpoint.key")
    assert out.signing.private_key_file == str(tmp_path / "keys" / "signing.pem")
    assert out.signing.trusted_public_key_file == str(tmp_path / "keys" / "signing.pub.pem")
