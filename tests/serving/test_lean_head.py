"""Lean k = L heads in numpy: equal to the torch head on the same weights, and no torch in their process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from serving_helpers import SPECS

from mtl_ray.errors import CheckpointError
from mtl_ray.model import multitask
from mtl_ray.ray.serve.deployments import HeadDeployment
from mtl_ray.serving import checkpoint_info
from mtl_ray.serving.lean_head import LEAN_OUTPUTS, LeanHead
from mtl_ray.serving.parts import HeadPart
from mtl_ray.serving.wire import Encoded
from mtl_ray.tasks.base import TASK_TYPES, is_served


def test_every_registered_task_type_has_a_lean_head():
    # a new task type without one still serves (torch HeadPart), but then its replicas import torch;
    # training-only types (served = False, e.g. mlm) are never deployed
    assert sorted(LEAN_OUTPUTS) == sorted(t for t in TASK_TYPES if is_served(t))
    assert "mlm" in TASK_TYPES and not is_served("mlm")


def test_the_key_prefixes_are_the_models():
    assert checkpoint_info.SHARED_PREFIX == multitask.SHARED_PREFIX
    assert checkpoint_info.TASK_LAYERS_PREFIX == multitask.TASK_LAYERS_PREFIX
    assert checkpoint_info.HEADS_PREFIX == multitask.HEADS_PREFIX


@pytest.mark.parametrize("task", sorted(SPECS))
def test_a_lean_head_equals_the_torch_head(ckpt_dir, task):
    pooled = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32) * 3
    pooled.flags.writeable = False  # as it arrives from Ray's object store
    lean = LeanHead.from_checkpoint(ckpt_dir, task)
    ref = HeadPart.from_checkpoint(ckpt_dir, task).predict(Encoded(pooled=pooled))
    got = lean.predict(Encoded(pooled=pooled))
    assert len(got) == len(ref) == 6
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, str):
                assert a[key] == value
            elif isinstance(value, dict):
                assert a[key] == pytest.approx(value, abs=1e-6)
            else:
                assert np.allclose(a[key], value, atol=1e-6), (task, key)
    assert lean.task.is_pair == SPECS[task].is_pair and lean.task.supervised == SPECS[task].supervised


def test_a_lean_head_refuses_what_it_cannot_run(ckpt_split_dir, ckpt_dir):
    with pytest.raises(CheckpointError, match=r"sharing depth 2 < 4 layers; task 'sentiment' owns transformer"):
        LeanHead.from_checkpoint(ckpt_split_dir, "sentiment")
    with pytest.raises(CheckpointError, match="has no task 'nope'; it has: match, score, sentiment, unsup"):
        LeanHead.from_checkpoint(ckpt_dir, "nope")
    with pytest.raises(ValueError, match="a lean head needs pooled vectors"):
        LeanHead.from_checkpoint(ckpt_dir, "score").predict(Encoded(hidden=np.zeros((1, 2, 32), np.float32)))


def test_a_head_replica_is_lean_when_k_is_L_and_torch_when_not(ckpt_dir, ckpt_split_dir):
    lean = HeadDeployment.func_or_class(str(ckpt_dir), "sentiment")
    lean.reconfigure(None)
    assert isinstance(lean.part, LeanHead)
    assert lean.spec() == {
        "name": "sentiment",
        "type": "classification",
        "label_names": ["neg", "pos"],
        "max_length": 32,
        "is_pair": False,
        "supervised": True,
    }
    torch_head = HeadDeployment.func_or_class(str(ckpt_split_dir), "sentiment")
    torch_head.reconfigure(None)
    assert isinstance(torch_head.part, HeadPart) and torch_head.spec() == lean.spec()


# What a k = L head replica and an ingress replica import and run, in a fresh interpreter.
NO_TORCH = """
import asyncio, json, sys
import numpy as np
from mtl_ray.ray.serve.deployments import HeadDeployment, IngressDeployment  # what Serve unpickles
from mtl_ray.serving.gateway import Gateway
from mtl_ray.serving.http_api import build_http_api
from mtl_ray.serving.checkpoint_info import read_checkpoint_info
from mtl_ray.serving.lean_head import LeanHead
from mtl_ray.serving.served_task import ServedTask
from mtl_ray.serving.text_tokenizer import CheckpointTokenizer
from mtl_ray.serving.wire import Encoded

ckpt = sys.argv[1]
info = read_checkpoint_info(ckpt)
head = HeadDeployment.func_or_class(ckpt, "sentiment", expect={"is_pair": False, "supervised": True})
head.reconfigure(None)
out = head.part.predict(Encoded(pooled=np.ones((2, 32), np.float32)))
tokens, _ = CheckpointTokenizer.from_dir(info.tokenizer_dir).tokenize(["a good film"], False, 16)
build_http_api(Gateway({}, CheckpointTokenizer.from_dir(info.tokenizer_dir), None))
print(json.dumps({
    "torch": "torch" in sys.modules,
    "transformers": "transformers" in sys.modules,
    "head": type(head.part).__name__,
    "labels": [o["label"] for o in out],
    "tokens": tokens.input_ids,
}))
"""


def test_head_and_ingress_modules_run_without_torch_or_transformers(ckpt_dir):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_TORCH), str(ckpt_dir)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["transformers"] is False
    assert result["head"] == "LeanHead" and len(result["labels"]) == 2
    assert result["tokens"][0][0] != result["tokens"][0][-1]  # [CLS] ... [SEP]
