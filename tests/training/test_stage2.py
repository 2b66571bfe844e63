"""Stage 2: a stage-1 checkpoint at depth d >= k -> trunk 1..k frozen, towers k+1..L cloned from the
stage-1 layers, heads kept; per-task early stopping stops each task at its own evaluation and restores
its best tower; the shared weights (and Serve's fingerprint) stay stage 1's; clear errors."""

import json

import pytest
import torch
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict, config_to_dict
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.serving.checkpoint_info import numpy_fingerprint, read_checkpoint_info, read_tensors, shared_fingerprint
from mtl_ray.testing import make_tiny_encoder
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.checkpointing import save_training_checkpoint
from mtl_ray.training.loop import MultiTaskTrainer, fit
from mtl_ray.training.run import EvalCheckpointer, setup_run

L = 4  # layers of the tiny encoder


@pytest.fixture
def cfg_of(tiny_encoder_dir, tiny_task_files, tmp_path):
    def make(sharing_depth=None, tasks=("sentiment", "score"), model=None, run="run", encoder=None, **train):
        d = tiny_config_dict(encoder or tiny_encoder_dir, tiny_task_files, tmp_path / run, **train)
        d["tasks"] = {t: d["tasks"][t] for t in tasks}
        d["model"].update(sharing_depth=sharing_depth, **(model or {}))
        return config_from_dict(d)

    return make


def trainer_of(cfg):
    setup = setup_run(cfg)
    return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id), setup


@pytest.fixture
def stage1(cfg_of, tmp_path):
    """A stage-1 model, trained a little (its weights differ from the pretrained encoder's), saved at ``depth``."""

    def make(depth=None, tasks=("sentiment", "score")):
        cfg = cfg_of(depth, tasks=tasks, run=f"stage1-{depth}", max_steps=6)
        trainer, setup = trainer_of(cfg)
        for _ in range(6):
            trainer.train_step()
        path = save_training_checkpoint(tmp_path / f"stage1-{depth}", cfg, trainer.model, setup.tokenizer, None)
        return path, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    return make


def stage2_cfg(cfg_of, path, k=2, tasks=("sentiment", "score"), **train):
    return cfg_of(k, tasks=tasks, model={"init_from": str(path)}, freeze_shared=True, run="stage2", **train)


@pytest.mark.parametrize("depth", [None, 3])
def test_towers_are_the_stage1_layers_and_heads_are_kept(cfg_of, stage1, depth):
    path, s1 = stage1(depth)
    d = L if depth is None else depth
    # at d = L a task stage 1 did not have ("match") gets the stage-1 layers too, and a fresh head
    tasks = ("sentiment", "score", "match") if depth is None else ("sentiment", "score")
    trainer, _ = trainer_of(stage2_cfg(cfg_of, path, k=2, tasks=tasks))
    state = trainer.model.state_dict()
    for key, value in s1.items():
        if key.startswith("shared.") and not key.startswith(("shared.layers.2.", "shared.layers.3.")):
            assert torch.equal(state[key], value), key  # embeddings + layers 1..2
    for task in tasks:
        for j in (2, 3):  # 0-based encoder layers j = 2, 3 -> the tower's layers 0, 1
            prefix = f"task_layers.{task}.{j - 2}."
            source = f"shared.layers.{j}." if j < d else f"task_layers.{task}.{j - d}."
            pairs = [(k, source + k[len(prefix) :]) for k in state if k.startswith(prefix)]
            assert pairs and all(torch.equal(state[a], s1[b]) for a, b in pairs), (task, j)
        if task != "match":
            heads = [k for k in s1 if k.startswith(f"heads.{task}.")]
            assert heads and all(torch.equal(state[k], s1[k]) for k in heads)
    # the tower tensors are copies, not views of one another: training one task leaves the other alone
    assert state["task_layers.sentiment.0.output.dense.weight"].data_ptr() != (
        state["task_layers.score.0.output.dense.weight"].data_ptr()
    )


def test_a_checkpoint_at_the_same_depth_gives_only_its_trunk(cfg_of, stage1):
    # the add-task path: towers stay the pretrained encoder's, heads are fresh (--replace may change labels)
    path, s1 = stage1(2)
    state = setup_run(stage2_cfg(cfg_of, path, k=2)).model.state_dict()
    fresh = setup_run(cfg_of(2, run="fresh")).model.state_dict()  # same seed: same fresh heads
    for key, value in state.items():
        expected = s1[key] if key.startswith("shared.") else fresh[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(state["heads.score.proj.weight"], s1["heads.score.proj.weight"])


def test_shared_weights_stay_bit_identical_and_only_towers_train(cfg_of, stage1, tmp_path):
    path, s1 = stage1()
    cfg = stage2_cfg(cfg_of, path, k=2, max_steps=8)
    trainer, setup = trainer_of(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("task_layers.")}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    towers = {id(p) for n, p in trainer.model.named_parameters() if n.startswith(("task_layers.", "heads."))}
    assert in_optimizer == towers
    for _ in range(8):
        trainer.train_step()
    state = trainer.model.state_dict()
    cut = {
        k: v
        for k, v in s1.items()
        if k.startswith("shared.") and not k.startswith(("shared.layers.2.", "shared.layers.3."))
    }
    assert all(torch.equal(state[k], v) for k, v in cut.items()) and len(cut) == len(trainer.model.shared.state_dict())
    assert any(not torch.equal(state[k], v) for k, v in before.items())  # the towers trained
    out = save_training_checkpoint(tmp_path / "s2", cfg, trainer.model, setup.tokenizer, None)
    # Serve's fingerprint: equal to that of the stage-1 weights cut at k = 2
    cut_np = {k[len("shared.") :]: v.numpy() for k, v in cut.items()}
    assert shared_fingerprint(read_checkpoint_info(out)) == numpy_fingerprint(cut_np)


# per-task validation primary metrics by evaluation step (eval_every 2)
SCRIPT = {
    "sentiment": {2: 0.5, 4: 0.8, 6: 0.7, 8: 0.6},  # best at 4, stops at 8
    "score": {2: 0.1, 4: 0.2, 6: 0.3, 8: 0.4, 10: 0.3, 12: 0.35},  # best at 8, stops at 12
}


def test_per_task_early_stopping_stops_each_task_and_restores_its_best_tower(cfg_of, stage1, monkeypatch, tmp_path):
    path, _ = stage1()
    cfg = stage2_cfg(
        cfg_of, path, k=2, max_steps=40, eval_every=2, early_stopping_patience=2, early_stopping_per_task=True
    )
    trainer, setup = trainer_of(cfg)
    evaluate = MultiTaskTrainer.evaluate

    def scripted(self, split="validation"):
        real = evaluate(self, split)
        if split == "validation":
            for task, metric in (("sentiment", "accuracy"), ("score", "pearson")):
                real[task][metric] = SCRIPT[task].get(self.step, SCRIPT[task][max(SCRIPT[task])])
        return real

    monkeypatch.setattr(MultiTaskTrainer, "evaluate", scripted)
    towers, drawn = {}, []
    checkpointer = EvalCheckpointer(cfg, trainer, setup.tokenizer, checkpoint_dir=tmp_path / "ck", echo=lambda _: None)

    def on_eval(step, per_task, aggregate):
        towers[step] = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("shared.")}
        checkpointer(step, per_task, aggregate)

    fit(
        trainer,
        on_step=lambda m: drawn.append((trainer.step, [k[5:] for k in m if k.startswith("loss/")])),
        on_eval=on_eval,
    )
    es = trainer.early_stopping
    assert trainer.step == 12
    assert es.summary() == {
        "mode": "per_task",
        "best_step": {"score": 8, "sentiment": 4},
        "stopped_at": {"score": 12, "sentiment": 8},
    }
    assert {t for step, tasks in drawn if step > 8 for t in tasks} == {"score"}  # sentiment left the sampler
    assert {t for step, tasks in drawn if step <= 8 for t in tasks} == {"score", "sentiment"}
    final = trainer.model.state_dict()
    for key in final:
        if key.startswith(("task_layers.sentiment.", "heads.sentiment.")):
            assert torch.equal(final[key], towers[4][key]), key
        elif key.startswith(("task_layers.score.", "heads.score.")):
            assert torch.equal(final[key], towers[8][key]), key
    # the last checkpoint (step 12) was written from those restored towers
    saved = read_checkpoint_info(tmp_path / "ck" / "step-0000012")
    for key, value in read_tensors(saved, "").items():
        assert torch.equal(value, final[key].cpu()), key


def test_stage2_errors(cfg_of, stage1, tiny_task_files, tmp_path):
    path, _ = stage1(2)
    with pytest.raises(CheckpointError) as err:
        setup_run(stage2_cfg(cfg_of, path, k=3))
    assert str(err.value) == (
        f"model.init_from: {path}: sharing_depth 2 in the checkpoint, 3 in this config; a model can start only from "
        "a checkpoint that shares at least its k layers (cut a checkpoint at depth >= 3)"
    )
    other = make_tiny_encoder(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config.update(num_hidden_layers=3)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        setup_run(cfg_of(2, model={"init_from": str(path)}, encoder=other, run="other"))
    assert "the checkpoint was trained with encoder" in str(err.value) and "4 layers" in str(err.value)
    assert f"this config has model.encoder '{other}' (bert, 3 layers" in str(err.value)
    assert "differ in: num_hidden_layers" in str(err.value)


def test_a_task_with_other_labels_is_refused_by_name(cfg_of, stage1, tiny_task_files, tmp_path):
    path, _ = stage1(None, tasks=("sentiment",))
    cfg = stage2_cfg(cfg_of, path, k=2, tasks=("sentiment",))
    d = config_to_dict(cfg)
    d["tasks"]["sentiment"]["label_names"] = ["pos", "neg", "flat"]
    with pytest.raises(CheckpointError) as err:
        setup_run(config_from_dict(d))
    assert str(err.value) == (
        f"model.init_from: {path}: task 'sentiment' is a classification task with labels ['neg', 'pos'] in the "
        "checkpoint, a classification task with labels ['pos', 'neg', 'flat'] in this config; rename the task to "
        "train a fresh head"
    )


def test_per_task_config_errors(cfg_of):
    with pytest.raises(ConfigError) as err:
        cfg_of(2, early_stopping_patience=2, early_stopping_per_task=True)
    assert str(err.value) == (
        "train.early_stopping_per_task: needs train.freeze_shared=true (tasks stop one by one only when they "
        "share nothing that trains)"
    )
    with pytest.raises(ConfigError) as err:
        cfg_of(None, freeze_shared=True, early_stopping_patience=2, early_stopping_per_task=True)
    assert str(err.value) == (
        "train.early_stopping_per_task: needs per-task layers (model.sharing_depth k < L); at k = L "
        "(model.sharing_depth null) use train.early_stopping_patience alone"
    )
    with pytest.raises(ConfigError) as err:
        trainer_of(cfg_of(L, freeze_shared=True, early_stopping_patience=2, early_stopping_per_task=True))
    assert str(err.value) == (
        "train.early_stopping_per_task: needs per-task layers, but model.sharing_depth 4 is k = L (4 layers); "
        "use train.early_stopping_patience alone"
    )


def test_per_task_needs_a_task_with_a_validation_score(cfg_of, tiny_task_files):
    d = config_to_dict(cfg_of(2, freeze_shared=True, early_stopping_patience=2, early_stopping_per_task=True))
    d["tasks"] = {
        "unsup": {
            "name": "unsup",
            "type": "contrastive",
            "source": str(tiny_task_files["sentiment"]),
            "text_field": "sentence",
        }
    }
    with pytest.raises(ConfigError) as err:
        trainer_of(config_from_dict(d))
    assert str(err.value) == (
        "train.early_stopping_per_task: no trained task has a validation primary metric to stop on (tasks: unsup)"
    )
