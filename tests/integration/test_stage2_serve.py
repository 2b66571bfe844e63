"""Stage 1 -> stage 2 -> `mtl-ray serve`, end to end on 127.0.0.1:

    stage 1: hard sharing (tiny BERT, k = L = 4), a few steps, in process
    stage 2: `mtl-ray train --no-ray ... model.init_from=S1 model.sharing_depth=2 train.freeze_shared=true
             train.early_stopping_patience=2 train.early_stopping_per_task=true`
    `mtl-ray serve --checkpoint <stage 2's final checkpoint>` in a subprocess, one request over HTTP

Checks: the stage-2 checkpoint is an ordinary k = 2 checkpoint whose shared weights are stage 1's
first two layers + embeddings (the fingerprint Serve compares), and the served answers equal the
Predictor's on the same checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
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

from helpers import tiny_config_dict, write_tiny_tasks  # noqa: E402
from ray_helpers import stop_process  # noqa: E402
from serving_helpers import assert_predictions_close  # noqa: E402

from mtl_ray.checkpoint import read_tensors  # noqa: E402
from mtl_ray.cli import main  # noqa: E402
from mtl_ray.config import config_from_dict  # noqa: E402
from mtl_ray.predictor import Predictor  # noqa: E402
from mtl_ray.ray.local_cluster import free_port  # noqa: E402
from mtl_ray.serving.checkpoint_info import numpy_fingerprint, read_checkpoint_info, shared_fingerprint  # noqa: E402
from mtl_ray.training.run import train  # noqa: E402

MTL_RAY = str(Path(sys.executable).parent / "mtl-ray")
TEXTS = ["the movie was good", "bad", "a great film with a happy actor and a boring plot", "news"]
K = 2


def test_stage1_then_stage2_then_serve_answers_equal_the_predictor(tiny_encoder_dir, tmp_path):
    files = write_tiny_tasks(tmp_path / "data")
    d = tiny_config_dict(tiny_encoder_dir, files, tmp_path / "stage1", max_steps=6)
    del d["tasks"]["match"]
    stage1 = train(config_from_dict(d), progress=False)
    s1_ckpt = Path(stage1["best_checkpoint"])

    d["train"].update(output_dir=str(tmp_path / "stage2"), max_steps=40, eval_every=4, lr=3e-3)
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(d))
    stage2_args = [f"model.init_from={s1_ckpt}", f"model.sharing_depth={K}", "train.freeze_shared=true"]
    stage2_args += ["train.early_stopping_patience=2", "train.early_stopping_per_task=true"]
    assert main(["train", "-c", str(tmp_path / "stage2.yaml"), "--no-ray", "--no-progress", *stage2_args]) == 0
    summary = json.loads((tmp_path / "stage2" / "summary.json").read_text())
    stopped = summary["early_stopping"]["stopped_at"]
    assert summary["early_stopping"]["mode"] == "per_task" and sorted(stopped) == ["score", "sentiment"]
    assert summary["steps"] == (40 if None in stopped.values() else max(stopped.values()))
    final = tmp_path / "stage2" / "checkpoints" / f"step-{summary['steps']:07d}"  # written from the best towers

    info = read_checkpoint_info(final)
    assert (info.sharing_depth, info.num_layers) == (K, 4)
    stage1_cut = {
        key: value
        for key, value in read_tensors(s1_ckpt, "shared.", framework="np").items()
        if not key.startswith(tuple(f"layers.{j}." for j in range(K, 4)))
    }
    assert shared_fingerprint(info) == numpy_fingerprint(stage1_cut)

    port = free_port()
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(
            [MTL_RAY, "serve", "--checkpoint", str(final), "--port", str(port), "--num-cpus", "4"],
            stdout=fo, stderr=fe, env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while "serving " not in out.read_text():  # printed once every replica is up
                assert proc.poll() is None, err.read_text()[-3000:]
                assert time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(1)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"texts": TEXTS}, timeout=60)
            assert r.status_code == 200, r.text
        finally:
            stop_process(proc, signal.SIGINT, timeout_s=90)
    served = r.json()["predictions"]
    assert sorted(served) == ["score", "sentiment"]
    assert_predictions_close(served, Predictor.from_checkpoint(final, device="cpu").predict(texts=TEXTS))
