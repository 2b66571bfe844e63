"""Weights never touch disk in the clear: an encrypted, signed training run in this process (`--no-ray`)
and on Ray Train (its checkpoint upload to ``storage_path``), a tiny Ray Tune search (trial
checkpoints), then the Serve parts loading the result. Every file written under the run directories,
the storage, Ray's temp dir and the temp dir the workers used is scanned for a safetensors header and
for the bytes of trained tensors.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import tiny_config_dict

from mtl_ray import signing
from mtl_ray.checkpoint import is_encrypted_checkpoint, load_checkpoint
from mtl_ray.config import config_from_dict
from mtl_ray.crypto import CheckpointKeys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KEY_ENV = "MTL_RAY_TEST_SCAN_KEY"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Keys, and a Ray whose processes (raylet, workers) write temp files under a directory we scan."""
    import ray

    root = tmp_path_factory.mktemp("scan")
    private, public = signing.generate_keypair()
    (root / "signing.pem").write_bytes(private)
    (root / "signing.pub.pem").write_bytes(public)
    saved = {k: os.environ.get(k) for k in (KEY_ENV, "TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ[KEY_ENV] = base64.b64encode(os.urandom(32)).decode()
    worker_tmp = root / "tmp"
    worker_tmp.mkdir()
    os.environ["TMPDIR"] = str(worker_tmp)  # inherited by the local Ray below, hence by every worker
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    tempfile.tempdir = None  # re-read TMPDIR in this process too
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", _temp_dir=ray_tmp)
    try:
        yield {"root": root, "ray_tmp": Path(ray_tmp), "worker_tmp": worker_tmp}
    finally:
        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        tempfile.tempdir = None
        shutil.rmtree(ray_tmp, ignore_errors=True)


def secure_config(env, tiny_encoder_dir, tiny_task_files, run: str, **extra):
    d = tiny_config_dict(tiny_encoder_dir, tiny_task_files, env["root"] / run, max_steps=4, eval_every=2)
    d["checkpoint"] = {
        "encryption": {"key_env": KEY_ENV},
        "signing": {"private_key_file": str(env["root"] / "signing.pem")},
    }
    d.update(extra)
    return config_from_dict(d)


def scan(roots: list[Path], secrets: list[bytes]) -> list[str]:
    """Files holding a safetensors header or any of ``secrets`` (plaintext tensor bytes)."""
    found = []
    for root in roots:
        for f in root.rglob("*"):
            if not f.is_file() or f.is_symlink():
                continue
            try:
                data = f.read_bytes()
            except OSError:  # a socket, a file removed meanwhile
                continue
            if b'"data_offsets"' in data or any(s in data for s in secrets):
                found.append(str(f))
    return found


def tensor_samples(state: dict[str, torch.Tensor]) -> list[bytes]:
    """64-byte windows of trained tensors (heads are trained from random init: unique to this run)."""
    out = []
    for name in sorted(state):
        t = state[name]
        if name.startswith("heads.") and t.dtype == torch.float32 and t.numel() >= 64:
            raw = t.contiguous().numpy().tobytes()
            out.append(raw[len(raw) // 2 : len(raw) // 2 + 64])
    assert out
    return out


def test_encrypted_train_tune_serve_leave_no_plaintext_weights(env, tiny_encoder_dir, tiny_task_files):
    from mtl_ray.ray.train import run_ray_training
    from mtl_ray.ray.tune import run_tune
    from mtl_ray.serving.parts import EncoderPart, HeadPart
    from mtl_ray.training.run import train

    keys = CheckpointKeys(key_env=KEY_ENV, trusted_public_key_file=str(env["root"] / "signing.pub.pem"))
    local = train(secure_config(env, tiny_encoder_dir, tiny_task_files, "local"), progress=False)
    storage = env["root"] / "storage"
    on_ray = run_ray_training(
        secure_config(env, tiny_encoder_dir, tiny_task_files, "ray", ray={"num_workers": 1}), storage_path=str(storage)
    )
    tune_cfg = secure_config(
        env,
        tiny_encoder_dir,
        tiny_task_files,
        "tune",
        tune={
            "search_space": {"train.lr": {"choice": [1e-3]}},
            "search_alg": "grid",
            "baselines": False,
            "include_default": False,
            "scheduler": "none",
            "storage_path": str(env["root"] / "tune-storage"),
        },
    )
    run_tune(tune_cfg)

    checkpoints = [Path(local["best_checkpoint"]), Path(on_ray["best_checkpoint"])]
    checkpoints += [p.parent for p in (env["root"] / "tune-storage").rglob("manifest.json")]
    assert len(checkpoints) >= 3
    secrets = []
    for ck in checkpoints:
        assert is_encrypted_checkpoint(ck), ck
        secrets += tensor_samples(load_checkpoint(ck, keys=keys, load_training_state=False).model_state)

    # serve: the parts verify the signature, decrypt in memory and answer
    best = checkpoints[1]
    encoder = EncoderPart.from_checkpoint(best, keys=keys)
    head = HeadPart.from_checkpoint(best, "sentiment", keys=keys)
    assert encoder.checkpoint == str(best) and head.spec.name == "sentiment"

    roots = [env["root"], env["ray_tmp"], env["worker_tmp"]]
    assert scan(roots, secrets) == []
    # the scan does find plaintext: a decrypted copy is flagged
    from mtl_ray.checkpoint_rewrite import rewrite_checkpoint

    rewrite_checkpoint(best, env["root"] / "decrypted", read_keys=keys)
    assert any("decrypted" in f for f in scan([env["root"]], secrets))
