"""Adding a task type is one file + one registration: a toy type defined in THIS test module trains,
evaluates (aggregate score, baselines, Δm%), predicts and serves over the HTTP API with no edit
anywhere else in mtl_ray. If some module special-cased type strings again, this test breaks."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import Tensor, nn

from mtl_ray.config import config_from_dict
from mtl_ray.predictor import Predictor
from mtl_ray.serving.checkpoint_info import read_checkpoint_info
from mtl_ray.serving.gateway import Gateway, LocalBackend
from mtl_ray.serving.http_api import build_http_api
from mtl_ray.serving.lean_head import LeanHead, has_lean_head
from mtl_ray.serving.parts import EncoderPart, HeadPart
from mtl_ray.serving.text_tokenizer import CheckpointTokenizer
from mtl_ray.tasks.base import LABELS, TASK_TYPES, TaskSpec, register_task_type
from mtl_ray.training.run import train
from mtl_ray.tuning.deltam import delta_m, primary_metrics


def _balanced_accuracy(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    recalls = [float(np.mean(pred[gold == c] == c)) for c in range(num_labels) if np.any(gold == c)]
    return statistics.fmean(recalls)


class _Logit(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, 1)

    def forward(self, pooled: Tensor) -> Tensor:  # (B, H) -> (B,)
        return self.proj(pooled).squeeze(-1)


@dataclass(frozen=True)
class BinaryLogitType:
    """Two classes from ONE logit (binary cross-entropy), scored by balanced accuracy."""

    name: str = "toy_binary_logit"
    is_pair: bool = False
    supervised: bool = True
    has_classes: bool = True
    label_kind: str | None = "class"
    uses_temperature: bool = False
    default_metrics: tuple[str, ...] = ("balanced_accuracy",)
    primary_metric: str | None = "balanced_accuracy"

    @property
    def metric_fns(self) -> Mapping[str, Any]:
        return {"balanced_accuracy": _balanced_accuracy}

    @property
    def valid_metrics(self) -> tuple[str, ...]:
        return ("balanced_accuracy",)

    def build_head(self, hidden_size: int, spec: TaskSpec, dropout: float) -> nn.Module:
        assert spec.label_names is not None and len(spec.label_names) == 2
        return _Logit(hidden_size)

    def train_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def loss(self, output: Tensor, batch: dict[str, Tensor], spec: TaskSpec) -> Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), batch[LABELS].float())

    def postprocess(self, output: Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
        assert spec.label_names is not None
        p = torch.sigmoid(output.detach().float()).cpu().tolist()
        return [{"label": spec.label_names[int(v > 0.5)], "score": max(v, 1 - v)} for v in p]

    def metric_inputs(self, output: Tensor) -> Tensor:
        return (output > 0).long()  # (B,) class ids

    def metric_arrays(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predictions.astype(np.int64), labels.astype(np.int64)

    def baseline_prediction(self, train_labels: np.ndarray, n: int) -> np.ndarray:
        return np.full(n, int(np.bincount(train_labels.astype(np.int64)).argmax()), dtype=np.int64)


@pytest.fixture
def toy_type():
    ttype = register_task_type(BinaryLogitType())
    yield ttype
    TASK_TYPES.pop(ttype.name)


def test_a_type_whose_declarations_disagree_is_refused():
    with pytest.raises(ValueError, match="supervised type needs a primary_metric"):
        register_task_type(BinaryLogitType(name="toy_bad", primary_metric=None))
    with pytest.raises(ValueError, match="has_classes=True but label_kind='value'"):
        register_task_type(BinaryLogitType(name="toy_bad", label_kind="value"))
    assert "toy_bad" not in TASK_TYPES


def test_a_task_type_defined_here_trains_evaluates_and_serves(toy_type, tiny_encoder_dir, tiny_task_files, tmp_path):
    task = {"source": str(tiny_task_files["sentiment"]), "text_field": "sentence", "label_field": "polarity"}
    cfg = config_from_dict(
        {
            "tasks": {
                "toy": {**task, "type": toy_type.name, "max_length": 32},
                "score": {"type": "regression", "source": str(tiny_task_files["score"]), "max_length": 32},
            },
            "model": {"encoder": str(tiny_encoder_dir)},
            "train": {
                "max_steps": 30,
                "batch_size": 16,
                "lr": 3e-3,
                "eval_every": 15,
                "log_every": 15,
                "output_dir": str(tmp_path / "run"),
                "device": "cpu",
            },
            "data": {"cache_dir": str(tmp_path / "cache")},
        }
    )
    summary = train(cfg, progress=False)

    # evaluation: the type's own metric, its baseline, and its place in the aggregate score
    assert set(summary["test"]["toy"]) == {"balanced_accuracy"}
    assert summary["majority_baseline"]["toy"] == {"balanced_accuracy": 0.5}  # one class: recall 1 and 0
    assert summary["test"]["toy"]["balanced_accuracy"] > 0.75  # the synthetic sentiment is learnable
    expected = (summary["test"]["toy"]["balanced_accuracy"] + summary["test"]["score"]["pearson"]) / 2
    assert summary["test_aggregate"] == pytest.approx(expected)

    # Δm% against single-task numbers reads the type's primary metric from the registry
    types = {"toy": toy_type.name, "score": "regression"}
    mtl = primary_metrics(summary["test"], types)
    assert mtl == {"toy": summary["test"]["toy"]["balanced_accuracy"], "score": summary["test"]["score"]["pearson"]}
    single = {"toy": mtl["toy"] / 1.1, "score": mtl["score"]}
    assert delta_m(mtl, single) == pytest.approx((10.0 + 0.0) / 2)

    # serving: the Predictor and the HTTP API answer with the type's own post-processing
    best = summary["best_checkpoint"]
    predictor = Predictor.from_checkpoint(best, device="cpu")
    texts = ["good great love win the movie", "bad terrible hate lose the film"]
    ref = predictor.predict(texts=texts, tasks=["toy"])["toy"]
    assert [r["label"] for r in ref] == ["pos", "neg"]
    info = read_checkpoint_info(best)
    assert not has_lean_head(toy_type.name)  # no numpy form: Serve runs its torch head (HeadPart)
    heads = {
        "toy": HeadPart.from_checkpoint(best, "toy", "fp32"),
        "score": LeanHead.from_checkpoint(best, "score"),  # a built-in type's numpy form, as Serve picks it
    }
    gateway = Gateway(
        info.specs,
        CheckpointTokenizer.from_dir(info.tokenizer_dir),
        LocalBackend(EncoderPart.from_checkpoint(best, "fp32"), heads),
    )
    with TestClient(build_http_api(gateway)) as client:
        r = client.post("/v1/predict", json={"texts": texts, "tasks": ["toy"]})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]["toy"]
        assert [g["label"] for g in got] == ["pos", "neg"]
        assert [g["score"] for g in got] == pytest.approx([x["score"] for x in ref], abs=1e-5)
        tasks = client.get("/v1/tasks").json()
        assert {t["name"]: t["type"] for t in tasks["tasks"]}["toy"] == toy_type.name
