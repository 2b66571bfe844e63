"""The Serve app over HTTPS on 127.0.0.1, serving an encrypted + signed checkpoint, deployed from the
config `mtl-ray serve build` writes. A self-signed certificate is made in the test (cryptography's x509
builder). Checks: the generated config holds only key *locations* and the TLS file paths; answers over
HTTPS equal the Predictor's; plain HTTP gets no answer; a head signed by another key offered in place
is refused while the old head keeps serving; an unsigned checkpoint fails its deploy saying why.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVING_TESTS))

from ray_helpers import checkpoint_and_new_head, offer_head, serve_cluster, serve_run, wait_for_app  # noqa: E402
from serving_helpers import TEXTS, assert_predictions_close  # noqa: E402

from mtl_ray import signing  # noqa: E402
from mtl_ray.checkpoint_rewrite import rewrite_checkpoint  # noqa: E402
from mtl_ray.cli import main  # noqa: E402
from mtl_ray.crypto import CheckpointKeys  # noqa: E402
from mtl_ray.predictor import Predictor  # noqa: E402

KEY_ENV = "MTL_RAY_TEST_SERVE_KEY"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-secure")
    _, plain, plain_head = checkpoint_and_new_head(root, "plain", "plain-head")
    for who in ("owner", "other"):
        private, public = signing.generate_keypair()
        (root / f"{who}.pem").write_bytes(private)
        (root / f"{who}.pub.pem").write_bytes(public)
    aes_key = base64.b64encode(os.urandom(32)).decode()
    os.environ[KEY_ENV] = aes_key  # inherited by the local Ray started below, hence by every replica
    owner = CheckpointKeys(key_env=KEY_ENV, private_key_file=str(root / "owner.pem"))
    other = CheckpointKeys(key_env=KEY_ENV, private_key_file=str(root / "other.pem"))
    cert, tls_key = self_signed_cert(root)
    yield {
        "root": root,
        "plain": plain,
        "main": rewrite_checkpoint(plain, root / "main", write_keys=owner),
        "foreign_head": rewrite_checkpoint(plain_head, root / "foreign-head", write_keys=other),
        "unsigned": rewrite_checkpoint(plain, root / "unsigned", write_keys=CheckpointKeys(key_env=KEY_ENV)),
        "cert": cert,
        "tls_key": tls_key,
        "aes_key": aes_key,
    }
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def cluster(secure):
    with serve_cluster(tls={"ssl_certfile": str(secure["cert"]), "ssl_keyfile": str(secure["tls_key"])}) as cluster:
        yield cluster


def build(secure, cluster, checkpoint: Path, out: Path) -> dict:
    cheap = [x for d in ("ingress", "encoder", "head") for x in ("--set", f"{d}.num_cpus=0.25")]
    args = ["serve", "build", "--checkpoint", str(checkpoint), "-o", str(out), "--port", str(cluster["port"])]
    args += ["--key-env", KEY_ENV, "--public-key", str(secure["root"] / "owner.pub.pem")]
    args += ["--ssl-certfile", str(secure["cert"]), "--ssl-keyfile", str(secure["tls_key"]), *cheap]
    assert main(args) == 0
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def app(secure, cluster):
    config_file = secure["root"] / "serve.yaml"
    config = build(secure, cluster, secure["main"], config_file)
    text = config_file.read_text()
    assert secure["aes_key"] not in text and "PRIVATE KEY" not in text  # locations only, never key material
    assert config["http_options"]["ssl_certfile"] == str(secure["cert"])
    assert config["http_options"]["ssl_keyfile"] == str(secure["tls_key"])
    args = config["applications"][0]["args"]
    assert args["encryption"] == {"key_env": KEY_ENV, "key_file": None}
    assert args["signing"] == {"trusted_public_key_file": str(secure["root"] / "owner.pub.pem")}
    serve_run(config_file, cluster["gcs"])
    status = wait_for_app("mtl")
    assert status.status == "RUNNING", status.message
    base = f"https://127.0.0.1:{cluster['port']}"
    with httpx.Client(base_url=base, verify=str(secure["cert"]), timeout=30) as client:
        yield {"client": client, "config_file": config_file, "config": config}


def test_answers_over_https_equal_the_predictor(app, secure, cluster):
    ref = Predictor.from_checkpoint(secure["plain"], device="cpu").predict(texts=TEXTS)
    r = app["client"].post("/v1/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    assert_predictions_close(r.json()["predictions"], ref)
    with pytest.raises(httpx.HTTPError):  # the port speaks TLS only
        httpx.post(f"http://127.0.0.1:{cluster['port']}/v1/predict", json={"texts": ["x"]}, timeout=10)
    with pytest.raises(httpx.ConnectError):  # and a client that does not trust the certificate refuses it
        httpx.get(f"https://127.0.0.1:{cluster['port']}/healthz", timeout=10)


def test_a_head_signed_by_another_key_is_refused_while_the_old_one_serves(app, secure, cluster):
    before = app["client"].post("/v1/predict", json={"texts": TEXTS, "tasks": ["sentiment"]}).json()["predictions"]
    swapped = app["config_file"].with_name("serve-foreign-head.yaml")
    config, foreign = app["config_file"], secure["foreign_head"]
    refused = offer_head(config, "sentiment", foreign, swapped, cluster["gcs"], timeout_s=60)["refused"]
    assert refused and "the signature does not verify with the trusted public key" in refused
    after = app["client"].post("/v1/predict", json={"texts": TEXTS, "tasks": ["sentiment"]}).json()["predictions"]
    assert after == before


def test_an_unsigned_checkpoint_fails_the_deploy_saying_why(app, secure, cluster):
    bad_file = secure["root"] / "serve-unsigned.yaml"
    with pytest.raises(AssertionError):  # `serve build` itself verifies: it refuses to write the config
        build(secure, cluster, secure["unsigned"], bad_file)
    config = yaml.safe_load(app["config_file"].read_text())
    config["applications"][0]["args"]["checkpoint"] = str(secure["unsigned"])
    bad_file.write_text(yaml.safe_dump(config))
    serve_run(bad_file, cluster["gcs"])
    status = wait_for_app("mtl")
    deadline = time.monotonic() + 60
    while status.status != "DEPLOY_FAILED" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = wait_for_app("mtl")
    assert status.status == "DEPLOY_FAILED"
    assert "not signed (no manifest.sig) and a trusted public key" in status.message
