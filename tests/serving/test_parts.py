"""Serving pieces without Ray: each loads only its slice, and together they equal the Predictor."""

from __future__ import annotations

import asyncio

import pytest
import torch
from serving_helpers import PAIRS, SPECS, TEXTS, assert_predictions_close, local_gateway, make_checkpoint
from transformers import AutoTokenizer

from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.errors import CheckpointError
from mtl_ray.model.multitask import SharedEncoder
from mtl_ray.predictor import Predictor
from mtl_ray.serving.gateway import ParsedRequest
from mtl_ray.serving.parts import (
    EncoderPart,
    HeadPart,
    TokenBatch,
    count_inputs,
    module_nbytes,
    read_checkpoint_info,
    tokenize,
)
from mtl_ray.training.checkpointing import model_from_checkpoint


@pytest.mark.parametrize("fixture", ["ckpt_dir", "ckpt_split_dir"])
@pytest.mark.parametrize(
    "request_kwargs",
    [{"texts": TEXTS}, {"pairs": PAIRS}, {"texts": TEXTS, "tasks": ["unsup", "sentiment"]}],
    ids=["texts", "pairs", "embedding"],
)
def test_split_pieces_equal_the_predictor(request, fixture, request_kwargs):
    path = request.getfixturevalue(fixture)
    gateway = local_gateway(path, max_batch_size=2)  # 5 texts -> 3 encoder chunks, merged back in order
    is_pair = "pairs" in request_kwargs
    parsed = ParsedRequest(request_kwargs.get("pairs") or request_kwargs["texts"], is_pair, request_kwargs.get("tasks"))
    got = asyncio.run(gateway.predict(parsed))
    ref = Predictor.from_checkpoint(path, device="cpu").predict(**request_kwargs)
    assert_predictions_close(got["predictions"], ref)
    assert got["warnings"] == []


def test_each_piece_holds_only_its_own_weights(ckpt_split_dir):
    model, _ = model_from_checkpoint(load_checkpoint(ckpt_split_dir))
    counts = model.parameter_counts()
    encoder = EncoderPart.from_checkpoint(ckpt_split_dir)
    assert sum(p.numel() for p in encoder.shared.parameters()) == counts["shared"]
    assert encoder.pooling is None  # k < L: hidden states go to the heads
    head = HeadPart.from_checkpoint(ckpt_split_dir, "sentiment")
    own = counts["task_layers"]["sentiment"] + counts["heads"]["sentiment"]
    assert sum(p.numel() for p in head.tower.parameters()) == own
    for key, value in head.tower.state_dict().items():
        prefix = "task_layers.sentiment." if key.startswith("layers.") else "heads.sentiment."
        ref = model.state_dict()[prefix + key.split(".", 1)[1]]
        assert torch.equal(value, ref), key


def test_hidden_states_are_trimmed_to_each_requests_own_length(ckpt_split_dir):
    encoder = EncoderPart.from_checkpoint(ckpt_split_dir)
    short = TokenBatch([[2, 10, 3]], [[0, 0, 0]], 0)
    long = TokenBatch([[2, 10, 11, 12, 13, 14, 3], [2, 10, 3]], [[0] * 7, [0] * 3], 0)
    a, b = encoder.encode([short, long])  # padded together to 7 tokens, sent back trimmed
    assert a.hidden.shape[:2] == (1, 3) and b.hidden.shape[:2] == (2, 7)
    assert b.attention_mask.tolist()[1] == [1, 1, 1, 0, 0, 0, 0]
    alone = encoder.encode([short])[0]
    assert torch.allclose(torch.from_numpy(a.hidden), torch.from_numpy(alone.hidden), atol=1e-5)
    assert count_inputs([short, long]) == 3


def test_pooled_path_sends_one_vector_per_text(ckpt_dir):
    encoder = EncoderPart.from_checkpoint(ckpt_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(read_checkpoint_info(ckpt_dir).tokenizer_dir))
    batch, truncated = tokenize(tokenizer, TEXTS, False, 32)
    (out,) = encoder.encode([batch])
    assert out.hidden is None and out.pooled.shape == (len(TEXTS), 32)  # (n, H), H = 32 in the tiny BERT
    assert truncated == [False] * len(TEXTS)
    _, truncated = tokenize(tokenizer, ["good " * 100, "bad"], False, 16)
    assert truncated == [True, False]


def test_tampered_checkpoint_is_refused_before_any_weight_loads(tampered_copy):
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        EncoderPart.from_checkpoint(tampered_copy)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        HeadPart.from_checkpoint(tampered_copy, "sentiment")


def test_replacement_head_must_share_the_encoder(tmp_path, tiny_encoder_dir, ckpt_dir, ckpt_new_head_dir):
    new = HeadPart.from_checkpoint(
        ckpt_new_head_dir, "sentiment", reference=ckpt_dir, expect={"type": "classification"}
    )
    old = HeadPart.from_checkpoint(ckpt_dir, "sentiment")
    assert not torch.equal(new.tower.head.proj.weight, old.tower.head.proj.weight)
    assert new.fingerprint  # checked against the served encoder
    other = make_checkpoint(tmp_path / "other", tiny_encoder_dir, perturb_encoder=True)
    with pytest.raises(CheckpointError, match="different shared encoder weights"):
        HeadPart.from_checkpoint(other, "sentiment", reference=ckpt_dir)
    deeper = make_checkpoint(tmp_path / "k2", tiny_encoder_dir, sharing_depth=2)
    with pytest.raises(CheckpointError, match="sharing_depth differs"):
        HeadPart.from_checkpoint(deeper, "sentiment", reference=ckpt_dir)
    with pytest.raises(CheckpointError, match="max_length"):
        HeadPart.from_checkpoint(ckpt_new_head_dir, "sentiment", reference=ckpt_dir, expect={"max_length": 64})
    with pytest.raises(CheckpointError, match="has no task 'nope'"):
        HeadPart.from_checkpoint(ckpt_dir, "nope")


@pytest.mark.parametrize("precision, atol", [("bf16", 0.05), ("int8", 0.05)])
@pytest.mark.parametrize("fixture", ["ckpt_dir", "ckpt_split_dir"])
def test_reduced_precision_stays_close_to_fp32(request, fixture, precision, atol):
    path = request.getfixturevalue(fixture)
    parsed = ParsedRequest(TEXTS, False, ["sentiment", "score"])
    ref = asyncio.run(local_gateway(path).predict(parsed))["predictions"]
    got = asyncio.run(local_gateway(path, precision).predict(parsed))["predictions"]
    for a, b in zip(got["sentiment"], ref["sentiment"]):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=atol)
    for a, b in zip(got["score"], ref["score"]):
        assert a["value"] == pytest.approx(b["value"], abs=atol * 4)


def test_int8_quantizes_every_linear_of_the_encoder(ckpt_dir):
    fp32 = EncoderPart.from_checkpoint(ckpt_dir)
    int8 = EncoderPart.from_checkpoint(ckpt_dir, "int8")
    assert not any(type(m) is torch.nn.Linear for m in int8.shared.modules())
    assert any(type(m) is torch.nn.Linear for m in fp32.shared.modules())
    assert module_nbytes(int8.shared) > 0 and isinstance(fp32.shared, SharedEncoder)


def test_checkpoint_info_describes_the_model(ckpt_dir, ckpt_split_dir):
    info = read_checkpoint_info(ckpt_dir)
    assert set(info.specs) == set(SPECS) and info.hard_shared and info.num_layers == 4
    assert not read_checkpoint_info(ckpt_split_dir).hard_shared
