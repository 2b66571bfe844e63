"""Each task type's head, loss (against a hand computation), batch hook and post-processing."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_ray.tasks import TASK_TYPES, TaskSpec, get_task_type
from mtl_ray.tasks.contrastive import DEFAULT_TEMPERATURE, info_nce

H = 8
SPECS = {
    "classification": TaskSpec("c", "classification", ("neg", "neu", "pos"), ("accuracy",)),
    "pair_classification": TaskSpec("p", "pair_classification", ("no", "yes"), ("accuracy",)),
    "regression": TaskSpec("r", "regression", None, ("pearson",)),
    "contrastive": TaskSpec("s", "contrastive", None, (), temperature=0.1),
}
# types outside this pooled-vector matrix, and where they are tested instead
TESTED_ELSEWHERE = {"mlm": "tests/tasks/test_mlm.py (token-level, head tied to the encoder, training only)"}


def test_every_registered_type_has_a_spec_here():
    assert set(SPECS) | set(TESTED_ELSEWHERE) == set(TASK_TYPES)


@pytest.mark.parametrize("type_name", sorted(SPECS))
def test_head_loss_and_postprocess_work_end_to_end(type_name):
    """The matrix every new type joins: pooled (B, H) -> head -> loss (scalar, backprops) -> predictions."""
    torch.manual_seed(0)
    ttype, spec = get_task_type(type_name), SPECS[type_name]
    head = ttype.build_head(H, spec, dropout=0.1)
    batch = {"input_ids": torch.ones(4, 5, dtype=torch.long), "attention_mask": torch.ones(4, 5, dtype=torch.long)}
    if spec.supervised:
        batch["labels"] = torch.tensor([0, 1, 1, 0]) if spec.label_names else torch.randn(4)
    batch = ttype.train_batch(batch)
    pooled = torch.randn(batch["input_ids"].shape[0], H, requires_grad=True)
    loss = ttype.loss(head(pooled), batch, spec)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0
    head.eval()
    with torch.no_grad():
        preds = ttype.postprocess(head(torch.randn(3, H)), spec)
    assert len(preds) == 3 and all(isinstance(p, dict) for p in preds)


def test_classification_head_loss_and_predictions():
    ttype, spec = get_task_type("classification"), SPECS["classification"]
    head = ttype.build_head(H, spec, dropout=0.1)
    assert head(torch.randn(5, H)).shape == (5, 3)
    assert sum(p.numel() for p in head.parameters()) == 3 * (H + 1)

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    row0 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0)))
    row1 = -(0.0 - math.log(math.exp(0.0) + math.exp(1.0) + math.exp(0.0)))
    loss = ttype.loss(logits, {"labels": labels}, spec)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)

    preds = ttype.postprocess(logits, spec)
    z = math.exp(2.0) + 1.0 + math.exp(-1.0)
    assert preds[0]["label"] == "neg" and preds[0]["score"] == pytest.approx(math.exp(2.0) / z, abs=1e-6)
    assert preds[1]["label"] == "neu"
    assert list(preds[0]["probabilities"]) == ["neg", "neu", "pos"]
    assert sum(preds[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(ttype.metric_inputs(logits), torch.tensor([0, 1]))


def test_pair_classification_is_classification_on_pairs():
    pair, single = get_task_type("pair_classification"), get_task_type("classification")
    assert pair.is_pair and not single.is_pair
    assert pair.valid_metrics == single.valid_metrics and pair.primary_metric == single.primary_metric


def test_regression_head_loss_and_predictions():
    ttype, spec = get_task_type("regression"), SPECS["regression"]
    head = ttype.build_head(H, spec, dropout=0.0)
    assert head(torch.randn(5, H)).shape == (5,)
    out = torch.tensor([1.0, -2.0, 0.5])
    target = torch.tensor([0.0, -1.0, 0.5])
    assert ttype.loss(out, {"labels": target}, spec).item() == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert ttype.postprocess(out, spec) == [{"value": 1.0}, {"value": -2.0}, {"value": 0.5}]
    assert torch.equal(ttype.metric_inputs(out), out)


def test_contrastive_train_batch_duplicates_every_row_tensor():
    ttype = get_task_type("contrastive")
    ids = torch.tensor([[1, 2, 0], [3, 4, 5]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "token_type_ids": torch.zeros_like(ids), "note": "x"}
    out = ttype.train_batch(batch)
    assert torch.equal(out["input_ids"], torch.tensor([[1, 2, 0], [3, 4, 5], [1, 2, 0], [3, 4, 5]]))
    assert torch.equal(out["attention_mask"], torch.cat([batch["attention_mask"]] * 2))
    assert out["token_type_ids"].shape == (4, 3) and out["note"] == "x"
    assert batch["input_ids"] is ids  # the caller's batch is not modified


def test_contrastive_loss_is_info_nce_over_cosines():
    """Hand computation: two sentences, views z (rows 0, 1) and z' (rows 2, 3), tau = 0.1."""
    ttype, spec = get_task_type("contrastive"), SPECS["contrastive"]
    output = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])  # (2B, H)
    c = 1 / math.sqrt(2)
    cos = [[1.0, c], [0.0, c]]  # cos(z_i, z'_j)
    tau = 0.1
    expected = 0.0
    for i in range(2):
        expected += -cos[i][i] / tau + math.log(sum(math.exp(cos[i][j] / tau) for j in range(2)))
    expected /= 2
    assert ttype.loss(output, {}, spec).item() == pytest.approx(expected, rel=1e-5)
    assert info_nce(output[:2], output[2:], tau).item() == pytest.approx(expected, rel=1e-5)
    default = TaskSpec("s", "contrastive", None, ())
    assert ttype.loss(output, {}, default).item() == pytest.approx(
        info_nce(output[:2], output[2:], DEFAULT_TEMPERATURE).item()
    )
    with pytest.raises(ValueError, match="even rows"):
        ttype.loss(output[:3], {}, spec)


def test_contrastive_head_is_parameter_free_and_predicts_unit_embeddings():
    ttype, spec = get_task_type("contrastive"), SPECS["contrastive"]
    head = ttype.build_head(H, spec, dropout=0.1)
    x = torch.randn(2, H)
    assert torch.equal(head(x), x) and not list(head.parameters())
    preds = ttype.postprocess(torch.tensor([[3.0, 4.0]]), spec)
    assert preds == [{"embedding": pytest.approx([0.6, 0.8])}]
