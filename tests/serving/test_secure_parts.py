"""Serving pieces on an encrypted + signed checkpoint: same answers as the Predictor, weights decrypted in
memory, and heads that are unsigned, signed by another key or encrypted with another key refused."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from serving_helpers import TEXTS, assert_predictions_close

from mtl_ray import crypto, signing
from mtl_ray.checkpoint_rewrite import rewrite_checkpoint
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError
from mtl_ray.predictor import Predictor
from mtl_ray.serving.config import serve_config_from_dict
from mtl_ray.serving.gateway import Gateway, LocalBackend, ParsedRequest
from mtl_ray.serving.lean_head import LeanHead
from mtl_ray.serving.parts import EncoderPart, HeadPart, read_checkpoint_info
from mtl_ray.serving.text_tokenizer import CheckpointTokenizer


@pytest.fixture(scope="module")
def secure(tmp_path_factory, ckpt_dir, ckpt_new_head_dir) -> dict:
    root = tmp_path_factory.mktemp("secure")
    pems = {}
    for who in ("owner", "other"):
        private, public = signing.generate_keypair()
        (root / f"{who}.pem").write_bytes(private)
        (root / f"{who}.pub.pem").write_bytes(public)
        pems[who] = str(root / f"{who}.pem")
    (root / "k").write_text(base64.b64encode(b"\x11" * 32).decode())
    (root / "k2").write_text(base64.b64encode(b"\x22" * 32).decode())
    write = CheckpointKeys(key_file=str(root / "k"), private_key_file=pems["owner"])
    main = rewrite_checkpoint(ckpt_dir, root / "main", write_keys=write)
    head = rewrite_checkpoint(ckpt_new_head_dir, root / "head", write_keys=write)
    foreign = rewrite_checkpoint(
        ckpt_new_head_dir,
        root / "foreign",
        write_keys=CheckpointKeys(key_file=str(root / "k"), private_key_file=pems["other"]),
    )
    other_key = rewrite_checkpoint(
        ckpt_new_head_dir,
        root / "otherkey",
        write_keys=CheckpointKeys(key_file=str(root / "k2"), private_key_file=pems["owner"]),
    )
    read = CheckpointKeys(key_file=str(root / "k"), trusted_public_key_file=str(root / "owner.pub.pem"), setting="")
    return {"main": main, "head": head, "foreign": foreign, "other_key": other_key, "keys": read, "root": root}


def test_parts_on_an_encrypted_signed_checkpoint_equal_the_predictor(secure, ckpt_dir, monkeypatch):
    monkeypatch.delenv(crypto.DEFAULT_KEY_ENV, raising=False)
    keys = secure["keys"]
    info = read_checkpoint_info(secure["main"], keys=keys)
    encoder = EncoderPart.from_checkpoint(secure["main"], keys=keys)
    # k = L: numpy heads, as the head replicas run them (weights decrypted in memory, no torch)
    heads = {t: LeanHead.from_checkpoint(secure["main"], t, keys=keys) for t in info.specs}
    gateway = Gateway(info.specs, CheckpointTokenizer.from_dir(info.tokenizer_dir), LocalBackend(encoder, heads))
    got = asyncio.run(gateway.predict(ParsedRequest(TEXTS, False, ["sentiment", "score"])))["predictions"]
    ref = Predictor.from_checkpoint(ckpt_dir, device="cpu").predict(texts=TEXTS, tasks=["sentiment", "score"])
    assert_predictions_close(got, ref)
    enc_ref = Predictor.from_checkpoint(secure["main"], device="cpu", keys=keys).predict(texts=TEXTS)
    assert_predictions_close(enc_ref, Predictor.from_checkpoint(ckpt_dir, device="cpu").predict(texts=TEXTS), atol=0)


def test_a_replacement_head_must_be_signed_by_the_trusted_key_and_decrypt(secure):
    keys = secure["keys"]
    new = HeadPart.from_checkpoint(secure["head"], "sentiment", reference=secure["main"], keys=keys)
    assert new.fingerprint  # shares the served encoder's weights (compared after decryption)
    with pytest.raises(CheckpointError, match="the signature does not verify with the trusted public key"):
        HeadPart.from_checkpoint(secure["foreign"], "sentiment", reference=secure["main"], keys=keys)
    with pytest.raises(CheckpointError, match="wrong key or the file was modified"):
        HeadPart.from_checkpoint(secure["other_key"], "sentiment", reference=secure["main"], keys=keys)


def test_the_encoder_without_a_key_says_which_serve_setting_to_give(secure, monkeypatch):
    monkeypatch.delenv(crypto.DEFAULT_KEY_ENV, raising=False)
    keys = CheckpointKeys(trusted_public_key_file=secure["keys"].trusted_public_key_file, setting="")
    with pytest.raises(CheckpointError, match=r"no key was given: give encryption\.key_env or encryption\.key_file"):
        EncoderPart.from_checkpoint(secure["main"], keys=keys)


def test_serve_config_security_sections_are_typed(secure):
    cfg = serve_config_from_dict(
        {
            "checkpoint": str(secure["main"]),
            "encryption": {"key_file": "/run/secrets/k"},
            "signing": {"trusted_public_key_file": "/run/secrets/pub.pem"},
        }
    )
    assert cfg.checkpoint_keys() == CheckpointKeys(
        key_file="/run/secrets/k", trusted_public_key_file="/run/secrets/pub.pem", setting=""
    )
    from mtl_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"encryption\.key: Extra inputs are not permitted"):
        serve_config_from_dict({"checkpoint": str(secure["main"]), "encryption": {"key": "c2VjcmV0"}})
    assert Path(cfg.checkpoint).is_absolute()


def test_predict_cli_reads_an_encrypted_signed_checkpoint(secure, ckpt_dir, capsys, monkeypatch):
    import json

    from mtl_ray.cli import main

    monkeypatch.delenv(crypto.DEFAULT_KEY_ENV, raising=False)
    keys = secure["keys"]
    args = ["predict", "--checkpoint", str(secure["main"]), "--text", TEXTS[0], "--device", "cpu"]
    assert main(args) == 2
    assert "no key was given: give --key-env or --key-file" in capsys.readouterr().err
    args += ["--key-file", keys.key_file, "--public-key", keys.trusted_public_key_file]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)["texts"]
    ref = Predictor.from_checkpoint(ckpt_dir, device="cpu").predict(texts=[TEXTS[0]])
    assert_predictions_close(got, ref)
    foreign = ["--public-key", str(secure["root"] / "other.pub.pem")]
    assert main([*args[:-2], *foreign]) == 2
    assert "the signature does not verify" in capsys.readouterr().err
