"""An mlm task in real runs: the auxiliary task in a mix (train → checkpoint → predict / serve only the
supervised task), exact resume, and the stage-0 variant (an mlm-only run, then ``model.init_from``)."""

from __future__ import annotations

import pytest
import torch

from mtl_ray.checkpoint import read_tensors
from mtl_ray.config import config_from_dict, config_to_dict
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.predictor import PredictError, Predictor
from mtl_ray.serving.checkpoint_info import read_checkpoint_info
from mtl_ray.serving.parts import HeadPart
from mtl_ray.training.builders import build_model, build_trainer, load_specs_and_splits
from mtl_ray.training.checkpointing import load_for_resume, model_from_checkpoint, save_training_checkpoint
from mtl_ray.training.run import setup_run, train

TEXTS = ["good great love win the movie", "bad terrible hate lose the film"]


def config(encoder, files, out, tasks=("sentiment", "mlm"), model=None, **train):
    all_tasks = {
        "sentiment": {
            "source": str(files["sentiment"]),
            "text_field": "sentence",
            "label_field": "polarity",
            "max_length": 32,
        },
        # the regression file's texts stand in for unlabeled in-domain text
        "mlm": {
            "type": "mlm",
            "source": str(files["score"]),
            "include_task_texts": True,
            "mask_probability": 0.15,
            "max_length": 32,
            "loss_weight": 0.5,
        },
    }
    return config_from_dict(
        {
            "tasks": {t: all_tasks[t] for t in tasks},
            "model": {"encoder": str(encoder), **(model or {})},
            "train": {
                "max_steps": 6,
                "batch_size": 8,
                "lr": 3e-3,
                "eval_every": 3,
                "log_every": 3,
                "output_dir": str(out),
                "device": "cpu",
                **train,
            },
            "data": {"cache_dir": str(out / "cache")},
        }
    )


def test_a_mix_with_mlm_trains_and_serves_only_the_supervised_task(tiny_encoder_dir, tiny_task_files, tmp_path):
    cfg = config(tiny_encoder_dir, tiny_task_files, tmp_path / "run", sampler="uniform")
    specs, raw = load_specs_and_splits(cfg)
    # the mlm train split = the score file's train texts + sentiment's train texts (none of its held-out ones)
    sentiment_held_out = set(raw["sentiment"]["validation"]["text"]) | set(raw["sentiment"]["test"]["text"])
    mlm_train = set(raw["mlm"]["train"]["text"])
    assert set(raw["sentiment"]["train"]["text"]) <= mlm_train and not (sentiment_held_out & mlm_train)

    summary = train(cfg, progress=False)
    assert set(summary["test"]) == {"sentiment"}  # no metrics for mlm: not in the aggregate
    assert summary["test_aggregate"] == pytest.approx(summary["test"]["sentiment"]["accuracy"])
    history = [r for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss/mlm"' in r]
    assert history  # the MLM loss is logged

    best = summary["best_checkpoint"]
    predictor = Predictor.from_checkpoint(best, device="cpu")
    assert sorted(predictor.specs) == ["sentiment"]
    got = predictor.predict(texts=TEXTS)
    assert sorted(got) == ["sentiment"]
    model, _ = model_from_checkpoint(load_for_resume(best))
    model.eval()
    with torch.no_grad():
        enc = predictor.tokenize(TEXTS, False, 32)
        probs = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], ["sentiment"])["sentiment"]
    assert [g["score"] for g in got["sentiment"]] == pytest.approx(probs.softmax(-1).max(-1).values.tolist(), abs=1e-6)
    with pytest.raises(PredictError, match="task 'mlm' is a mlm training objective, not a served task; served tasks: "):
        predictor.predict(texts=TEXTS, tasks=["mlm"])

    # Serve: no head deployment for mlm, and naming it is refused before anything is deployed
    from mtl_ray.ray.serve.app import served_specs
    from mtl_ray.serving.config import serve_config_from_dict

    info = read_checkpoint_info(best)
    assert sorted(info.specs) == ["mlm", "sentiment"]
    assert sorted(served_specs(serve_config_from_dict({"checkpoint": best}), info)) == ["sentiment"]
    with pytest.raises(ConfigError, match="'mlm' is a mlm training objective, not a served task; served: sentiment"):
        served_specs(serve_config_from_dict({"checkpoint": best, "tasks": ["sentiment", "mlm"]}), info)
    with pytest.raises(CheckpointError, match="task 'mlm' is a mlm training objective, not a served task"):
        HeadPart.from_checkpoint(best, "mlm")


def test_a_run_with_mlm_resumes_exactly(tiny_encoder_dir, tiny_task_files, tmp_path):
    cfg = config(tiny_encoder_dir, tiny_task_files, tmp_path / "run", grad_accum_steps=2, sampler="uniform")

    def trainer():
        setup = setup_run(cfg)
        return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id), setup

    straight, _ = trainer()
    history = [straight.train_step() for _ in range(4)]
    assert any("loss/mlm" in h for h in history)
    first, setup = trainer()
    for _ in range(2):
        first.train_step()
    path = save_training_checkpoint(tmp_path / "ckpt", cfg, first.model, setup.tokenizer, first.state_dict())
    resumed, _ = trainer()
    ckpt = load_for_resume(path)
    resumed.model.load_state_dict(ckpt.model_state)
    resumed.load_state_dict(ckpt.training_state)
    tail = [resumed.train_step() for _ in range(2)]
    assert tail == history[2:]  # bit-exact: the same masks after the resume
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


def test_stage_0_an_mlm_only_run_initialises_a_later_multi_task_run(tiny_encoder_dir, tiny_task_files, tmp_path):
    stage0 = config(tiny_encoder_dir, tiny_task_files, tmp_path / "mlm", tasks=("mlm",), max_steps=4, eval_every=4)
    summary = train(stage0, progress=False)
    assert summary["test"] == {} and summary["best_checkpoint"] is None  # nothing scored: no "best"
    ckpt = tmp_path / "mlm" / "checkpoints" / "step-0000004"
    adapted = read_tensors(ckpt, "shared.")

    stage1 = config(
        tiny_encoder_dir, tiny_task_files, tmp_path / "mt", tasks=("sentiment",), model={"init_from": str(ckpt)}
    )
    specs, _ = load_specs_and_splits(stage1)
    model, _ = build_model(stage1, specs)
    shared = model.shared.state_dict()
    assert sorted(shared) == sorted(adapted)
    for key, value in adapted.items():
        assert torch.equal(shared[key], value), key
    pretrained, _ = build_model(config(tiny_encoder_dir, tiny_task_files, tmp_path / "plain"), specs)
    emb = "embeddings.word_embeddings.weight"
    assert not torch.equal(pretrained.shared.state_dict()[emb], adapted[emb])  # stage 0 did train the embeddings


def test_a_head_warm_up_leaves_the_encoder_bit_identical_until_its_last_step(
    tiny_encoder_dir, tiny_task_files, tmp_path
):
    cfg = config(tiny_encoder_dir, tiny_task_files, tmp_path / "warm", tasks=("mlm",), max_steps=6)
    cfg.tasks["mlm"].head_warmup_steps = 2
    setup = setup_run(cfg)
    trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
    assert trainer.head_warmup == {"mlm": 2}
    model = trainer.model
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        trainer.train_step()
    after = model.state_dict()
    for key, value in start.items():  # the encoder, its word embeddings (the tied decoder) included
        if key.startswith("shared."):
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["heads.mlm.dense.weight"], start["heads.mlm.dense.weight"])
    assert not torch.equal(after["heads.mlm.bias"], start["heads.mlm.bias"])
    trainer.train_step()  # step 3: the encoder learns from the (warmed) head
    emb = "shared.embeddings.word_embeddings.weight"
    assert not torch.equal(model.state_dict()[emb], start[emb])


def test_a_head_warm_up_as_long_as_the_run_is_refused(tiny_encoder_dir, tiny_task_files, tmp_path):
    cfg = config_to_dict(config(tiny_encoder_dir, tiny_task_files, tmp_path / "r"))
    cfg["tasks"]["mlm"]["head_warmup_steps"] = 6
    with pytest.raises(ConfigError, match="tasks.mlm.head_warmup_steps: 6 is not below train.max_steps 6"):
        config_from_dict(cfg)


def test_stage_2_from_a_mix_with_mlm_keeps_the_trunk_and_leaves_the_mlm_task_behind(
    tiny_encoder_dir, tiny_task_files, tmp_path
):
    stage1 = config(tiny_encoder_dir, tiny_task_files, tmp_path / "s1", sampler="uniform", max_steps=4, eval_every=4)
    best = train(stage1, progress=False)["best_checkpoint"]
    saved = read_tensors(best, "")
    model1, _ = build_model(stage1, load_specs_and_splits(stage1)[0])
    assert model1.sharing_depth == model1.num_layers  # stage 1: hard sharing (k = L)
    k = model1.num_layers - 1

    stage2 = config(
        tiny_encoder_dir,
        tiny_task_files,
        tmp_path / "s2",
        tasks=("sentiment",),
        model={"init_from": str(best), "sharing_depth": k},
        freeze_shared=True,
    )
    model, _ = build_model(stage2, load_specs_and_splits(stage2)[0])
    state = model.state_dict()
    assert not any(key.startswith(("heads.mlm", "task_layers.mlm")) for key in state)
    assert any(key.startswith("heads.sentiment.") for key in saved)  # the head comparison below is not empty
    for key, value in saved.items():
        if key.startswith("shared.") and not key.startswith(f"shared.layers.{k}."):
            assert torch.equal(state[key], value), key  # embeddings and layers 1..k, bit-identical
        if key.startswith(f"shared.layers.{k}."):  # layer k+1 of stage 1 is the sentiment tower's first layer
            assert torch.equal(state["task_layers.sentiment.0." + key[len(f"shared.layers.{k}.") :]], value), key
        if key.startswith("heads.sentiment."):
            assert torch.equal(state[key], value), key
