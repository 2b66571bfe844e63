"""The plain-torch loop: exact resume, stateful weightings, learning, checkpoints and the Predictor."""

import json

import numpy as np
import pytest
import torch

from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.errors import CheckpointError
from mtl_ray.predictor import PredictError, Predictor
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.checkpointing import (
    check_resume_compatible,
    load_for_resume,
    model_from_checkpoint,
    save_training_checkpoint,
)
from mtl_ray.training.run import setup_run, train


def make_trainer(cfg):
    setup = setup_run(cfg)
    return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id), setup


def run_steps(trainer, n):
    return [trainer.train_step() for _ in range(n)]


@pytest.mark.parametrize("weighting", ["static", "uncertainty", "dwa"])
def test_exact_resume_equals_straight_run(tiny_config, tmp_path, weighting):
    cfg = tiny_config(max_steps=8, weighting=weighting, dwa_window=2, grad_accum_steps=2)
    straight, _ = make_trainer(cfg)
    history = run_steps(straight, 8)

    first, setup = make_trainer(cfg)
    run_steps(first, 3)
    path = save_training_checkpoint(tmp_path / "ckpt", cfg, first.model, setup.tokenizer, first.state_dict())
    del first

    resumed, _ = make_trainer(cfg)
    ckpt = load_for_resume(path)
    check_resume_compatible(ckpt, cfg, resumed.model)
    resumed.model.load_state_dict(ckpt.model_state)
    resumed.load_state_dict(ckpt.training_state)
    tail = run_steps(resumed, 5)

    for a, b in zip(history[3:], tail):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_every_step_trains_one_sampled_task_and_losses_are_logged(tiny_config):
    trainer, _ = make_trainer(tiny_config(max_steps=4))
    out = trainer.train_step()
    loss_keys = [k for k in out if k.startswith("loss/")]
    assert len(loss_keys) == 1
    assert out["step"] == 1.0
    assert set(k[7:] for k in out if k.startswith("weight/")) == {"match", "score", "sentiment"}
    assert trainer.examples_seen == 8


def test_training_learns_the_tiny_sentiment_task(tiny_config):
    cfg = tiny_config(max_steps=60, sampler="uniform", lr=2e-3, warmup_ratio=0.0)
    trainer, setup = make_trainer(cfg)
    before = trainer.evaluate("validation")["sentiment"]["accuracy"]
    run_steps(trainer, 60)
    after = trainer.evaluate("validation")["sentiment"]["accuracy"]
    assert after >= 0.8, (before, after)


def test_train_writes_checkpoints_metrics_plot_and_summary(tiny_config, capsys):
    cfg = tiny_config(max_steps=6, eval_every=3)
    summary = train(cfg, progress=False)
    out = capsys.readouterr().out
    assert "sentiment" in out and "match" in out  # the per-task table
    run_dir = cfg.train.output_dir
    lines = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    assert [r["step"] for r in lines if "val/aggregate" in r] == [3, 6]
    assert summary["best_checkpoint"] is not None
    load_checkpoint(summary["best_checkpoint"])  # verifies the manifest
    with open(f"{run_dir}/training_curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(summary["test"]) == {"sentiment", "score", "match"}


def test_resume_refuses_a_different_task_set(tiny_config, tmp_path):
    cfg = tiny_config()
    trainer, setup = make_trainer(cfg)
    path = save_training_checkpoint(tmp_path / "ck", cfg, trainer.model, setup.tokenizer, trainer.state_dict())
    other_cfg = tiny_config(drop_tasks=("score",), run="other")
    other, _ = make_trainer(other_cfg)
    with pytest.raises(CheckpointError, match="trained tasks"):
        check_resume_compatible(load_for_resume(path), other_cfg, other.model)


def test_predictor_equals_model_forward(tiny_config, tmp_path):
    cfg = tiny_config()
    trainer, setup = make_trainer(cfg)
    run_steps(trainer, 2)
    path = save_training_checkpoint(tmp_path / "ck", cfg, trainer.model, setup.tokenizer, None)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    texts = ["good movie", "the worst plot ever", "fun game"]
    got = predictor.predict(texts=texts)
    assert set(got) == {"sentiment", "score"}  # pair task not applicable to single texts

    model = trainer.model.eval()
    enc = setup.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        ref = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), tasks=["sentiment", "score"])
    probs = torch.softmax(ref["sentiment"], -1).numpy()
    labels = predictor.specs["sentiment"].label_names
    for i, pred in enumerate(got["sentiment"]):
        assert pred["label"] == labels[int(np.argmax(probs[i]))]
        assert pred["score"] == pytest.approx(float(probs[i].max()), abs=1e-5)
    for i, pred in enumerate(got["score"]):
        assert pred["value"] == pytest.approx(float(ref["score"][i]), abs=1e-5)

    pairs = predictor.predict(pairs=[["good film", "great movie"]], tasks=["match"])
    assert set(pairs["match"][0]["probabilities"]) == {"diff", "same"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"texts": []}, "empty"),
        ({"texts": ["x"], "tasks": ["nope"]}, "unknown task 'nope'; valid tasks: match, score, sentiment"),
        ({"texts": ["x"], "tasks": ["match"]}, "task 'match' takes pairs"),
        ({"pairs": [["only one"]]}, "exactly two texts"),
        ({}, "exactly one of texts or pairs"),
    ],
)
def test_predictor_bad_requests(tiny_config, tmp_path, kwargs, message):
    cfg = tiny_config()
    setup = setup_run(cfg)
    path = save_training_checkpoint(tmp_path / "ck", cfg, setup.model, setup.tokenizer, None)
    with pytest.raises(PredictError, match=message):
        Predictor.from_checkpoint(path, device="cpu").predict(**kwargs)


def test_model_from_checkpoint_is_bit_exact(tiny_config, tmp_path):
    cfg = tiny_config(model={"sharing_depth": 2})
    setup = setup_run(cfg)
    path = save_training_checkpoint(tmp_path / "ck", cfg, setup.model, setup.tokenizer, None)
    model, cfg2 = model_from_checkpoint(load_checkpoint(path))
    assert cfg2 == cfg
    for (name, a), b in zip(setup.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def _clipped_grad_norm(cfg, monkeypatch):
    """The model's gradient norm as the optimizer sees it after one step's clipping."""
    trainer, _ = make_trainer(cfg)
    seen = {}

    def capture(*args, **kwargs):
        grads = [p.grad.detach().flatten() for p in trainer.model.parameters() if p.grad is not None]
        seen["norm"] = float(torch.cat(grads).norm())

    monkeypatch.setattr(trainer.optimizer, "step", capture)
    trainer.train_step()
    return seen["norm"]


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("weight", [0.25, 3.0])
def test_a_loss_weight_survives_gradient_clipping(tiny_config, monkeypatch, weight):
    # max_grad_norm far below the raw gradient norm: every step is clipped. Clipping the weighted
    # gradient at a fixed norm would make the weight irrelevant; the weight must scale the update.
    base = tiny_config(max_steps=4, max_grad_norm=1e-3, drop_tasks=("score", "match"))
    weighted = base.tasks["sentiment"]
    weighted.loss_weight = weight
    norm_1 = _clipped_grad_norm(
        tiny_config(max_steps=4, max_grad_norm=1e-3, drop_tasks=("score", "match")), monkeypatch
    )
    norm_w = _clipped_grad_norm(base, monkeypatch)
    assert norm_1 == pytest.approx(1e-3, rel=1e-4)
    assert norm_w == pytest.approx(weight * 1e-3, rel=1e-4)
