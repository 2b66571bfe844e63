"""Frozen-trunk training: shared weights bit-identical, the trunk runs once per example, the cache
changes nothing (equal to the uncached run and to a hand-frozen reference run), clear errors."""

import pytest
import torch
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.serving.checkpoint_info import read_checkpoint_info, shared_fingerprint
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.checkpointing import save_training_checkpoint
from mtl_ray.training.run import setup_run


@pytest.fixture
def cfg_of(nodrop_encoder_dir, tiny_task_files, tmp_path):
    """Config of one or two tiny tasks on the dropout-free encoder (head dropout 0 too)."""

    def make(sharing_depth=None, tasks=("sentiment",), model=None, run="run", **train):
        d = tiny_config_dict(nodrop_encoder_dir, tiny_task_files, tmp_path / run, **train)
        d["tasks"] = {t: d["tasks"][t] for t in tasks}
        d["model"].update(head_dropout=0.0, sharing_depth=sharing_depth, **(model or {}))
        return config_from_dict(d)

    return make


def trainer_of(cfg):
    setup = setup_run(cfg)
    return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id), setup


def count_trunk_examples(model) -> list[int]:
    """Examples that went through the shared trunk, counted by a forward hook."""
    seen = [0]
    model.shared.register_forward_hook(lambda _m, args, _out: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    return seen


@pytest.mark.parametrize("k", [None, 2])
def test_the_trunk_runs_once_per_training_example(cfg_of, k):
    cfg = cfg_of(k, freeze_shared=True, max_steps=40, batch_size=8)
    trainer, setup = trainer_of(cfg)
    n_train = setup.data["sentiment"].size("train")
    assert 40 * 8 > 3 * n_train  # more than three epochs
    seen = count_trunk_examples(trainer.model)
    for _ in range(40):
        trainer.train_step()
    cache = trainer.frozen.caches["sentiment"]
    assert seen[0] == n_train == cache.examples_computed  # every example once, none twice
    assert cache.filled.all() and not cache.on_disk
    assert cache.store.shape == ((n_train, 32) if k is None else (int(cache.lengths.sum()), 32))


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("k", [None, 2])
def test_cached_training_equals_uncached_and_a_hand_frozen_reference(cfg_of, k):
    steps = 30  # > 2 epochs of the tiny task: later epochs read the cache
    results = {}
    for mode in ("memory", "disk", "off"):
        trainer, _ = trainer_of(cfg_of(k, tasks=("sentiment", "score"), freeze_shared=True, trunk_cache=mode))
        for _ in range(steps):
            trainer.train_step()
        results[mode] = params(trainer)
        if mode == "disk":
            assert all(c.on_disk for c in trainer.frozen.caches.values())
    # reference: the ordinary trainer with the trunk's parameters frozen by hand (dropout is off, so
    # the trunk in train mode computes what the frozen trunk computes in eval mode)
    ref_cfg = cfg_of(k, tasks=("sentiment", "score"))
    setup = setup_run(ref_cfg)
    for p in setup.model.shared.parameters():
        p.requires_grad_(False)
    reference = build_trainer(ref_cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
    for _ in range(steps):
        reference.train_step()
    results["reference"] = params(reference)
    start, _ = trainer_of(cfg_of(k, tasks=("sentiment", "score")))
    initial = params(start)
    for mode in ("disk", "off", "reference"):
        for name, value in results["memory"].items():
            torch.testing.assert_close(value, results[mode][name], atol=1e-5, rtol=0, msg=f"{mode}: {name}")
    moved = [n for n in initial if not torch.equal(initial[n], results["memory"][n])]
    assert moved and all(not n.startswith("shared.") for n in moved)  # towers trained, trunk did not
    assert any(n.startswith("heads.score") for n in moved) and any(n.startswith("heads.sentiment") for n in moved)


def test_init_from_loads_the_checkpoint_trunk_and_keeps_it_bit_identical(cfg_of, tmp_path):
    base_cfg = cfg_of(2, run="base", max_steps=4)
    base, setup = trainer_of(base_cfg)  # train the whole model a little: its trunk differs from pretrained
    for _ in range(4):
        base.train_step()
    base_path = save_training_checkpoint(tmp_path / "base", base_cfg, base.model, setup.tokenizer, None)
    cfg = cfg_of(2, tasks=("score",), model={"init_from": str(base_path)}, freeze_shared=True, run="new", max_steps=8)
    trainer, setup = trainer_of(cfg)
    base_shared = {k: v.clone() for k, v in base.model.shared.state_dict().items()}
    for key, value in trainer.model.shared.state_dict().items():
        assert torch.equal(value, base_shared[key]), key
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in trainer.model.shared.parameters())
    for _ in range(8):
        trainer.train_step()
    out = save_training_checkpoint(tmp_path / "new", cfg, trainer.model, setup.tokenizer, None)
    assert shared_fingerprint(read_checkpoint_info(out)) == shared_fingerprint(read_checkpoint_info(base_path))


def test_init_from_refuses_a_different_depth_and_a_tampered_checkpoint(cfg_of, tmp_path):
    base_cfg = cfg_of(2, run="base")
    setup = setup_run(base_cfg)
    base_path = save_training_checkpoint(tmp_path / "base", base_cfg, setup.model, setup.tokenizer, None)
    with pytest.raises(CheckpointError, match="sharing_depth 2 in the checkpoint, 3 in this config"):
        setup_run(cfg_of(3, model={"init_from": str(base_path)}, run="x"))
    weights = bytearray((base_path / "model.safetensors").read_bytes())
    weights[-3] ^= 0xFF
    (base_path / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        setup_run(cfg_of(2, model={"init_from": str(base_path)}, run="y"))


def test_a_contrastive_task_at_k_equals_L_has_nothing_to_train(cfg_of, tiny_task_files, tmp_path):
    cfg = cfg_of(None, freeze_shared=True)
    d = {
        "tasks": {
            "unsup": {"type": "contrastive", "source": str(tiny_task_files["sentiment"]), "text_field": "sentence"}
        },
        "model": {"encoder": cfg.model.encoder},
        "train": {"freeze_shared": True, "output_dir": str(tmp_path / "c"), "device": "cpu"},
        "data": {"cache_dir": str(tmp_path / "cache")},
    }
    with pytest.raises(ConfigError, match="tasks.unsup: a contrastive task at sharing depth k = L"):
        trainer_of(config_from_dict(d))


def test_trunk_cache_mode_is_checked():
    with pytest.raises(ConfigError, match="train.trunk_cache: unknown 'ram'"):
        config_from_dict({"tasks": {"t": {"source": "x.csv"}}, "train": {"trunk_cache": "ram"}})
