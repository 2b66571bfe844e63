"""The Serve app builder and generated config with encryption, signing and HTTPS, without starting Ray."""

from __future__ import annotations

import base64

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from mtl_ray import signing
from mtl_ray.checkpoint_rewrite import rewrite_checkpoint
from mtl_ray.cli import main
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.ray.serve.app import build_app, https_options
from mtl_ray.serving.config import ServeConfig


@pytest.fixture(scope="module")
def signed(tmp_path_factory, ckpt_dir):
    root = tmp_path_factory.mktemp("secure-app")
    private, public = signing.generate_keypair()
    (root / "s.pem").write_bytes(private)
    (root / "s.pub.pem").write_bytes(public)
    (root / "k").write_text(base64.b64encode(b"\x05" * 32).decode())
    (root / "tls.crt").write_text("cert")
    (root / "tls.key").write_text("key")
    keys = CheckpointKeys(key_file=str(root / "k"), private_key_file=str(root / "s.pem"))
    return {"root": root, "ckpt": rewrite_checkpoint(ckpt_dir, root / "ck", write_keys=keys), "plain": ckpt_dir}


def test_the_deployments_get_the_key_locations(signed):
    root = signed["root"]
    cfg = ServeConfig(
        checkpoint=str(signed["ckpt"]),
        encryption={"key_file": str(root / "k")},
        signing={"trusted_public_key_file": str(root / "s.pub.pem")},
    )
    ingress = build_app(cfg)._bound_deployment
    encoder, heads = ingress.init_args[0]._bound_deployment, ingress.init_args[1]
    expected = CheckpointKeys(key_file=str(root / "k"), trusted_public_key_file=str(root / "s.pub.pem"), setting="")
    assert encoder.init_args[-1] == expected.as_dict()
    assert all(h._bound_deployment.init_args[-1] == expected.as_dict() for h in heads.values())


def test_an_unsigned_checkpoint_fails_the_build_with_a_trusted_key(signed):
    cfg = {
        "checkpoint": str(signed["plain"]),
        "signing": {"trusted_public_key_file": str(signed["root"] / "s.pub.pem")},
    }
    with pytest.raises(CheckpointError, match=r"not signed \(no manifest\.sig\)"):
        build_app(cfg)


def test_serve_build_writes_tls_paths_and_key_locations_only(signed, tmp_path):
    root, out = signed["root"], tmp_path / "serve.yaml"
    args = ["serve", "build", "--checkpoint", str(signed["ckpt"]), "-o", str(out), "--key-file", str(root / "k")]
    args += ["--public-key", str(root / "s.pub.pem"), "--ssl-certfile", str(root / "tls.crt")]
    args += ["--ssl-keyfile", str(root / "tls.key")]
    assert main(args) == 0
    text = out.read_text()
    assert base64.b64encode(b"\x05" * 32).decode() not in text
    config = yaml.safe_load(text)
    assert config["http_options"] == {
        "host": "127.0.0.1",
        "port": 8000,
        "ssl_certfile": str(root / "tls.crt"),
        "ssl_keyfile": str(root / "tls.key"),
    }
    ServeDeploySchema.model_validate(config)  # Ray's own schema accepts it
    app_args = config["applications"][0]["args"]
    assert app_args["encryption"] == {"key_env": None, "key_file": str(root / "k")}
    assert app_args["signing"] == {"trusted_public_key_file": str(root / "s.pub.pem")}


def test_https_needs_both_files_that_exist(tmp_path):
    with pytest.raises(ConfigError, match="HTTPS needs both --ssl-certfile and --ssl-keyfile"):
        https_options(str(tmp_path / "c"), None)
    with pytest.raises(ConfigError, match=r"--ssl-certfile: .*/nope.crt does not exist"):
        https_options(str(tmp_path / "nope.crt"), str(tmp_path / "nope.key"))
    assert https_options(None, None) == {}
