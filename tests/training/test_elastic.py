"""Elastic data parallelism without Ray: a step's global micro-batch is ``data_parallel_size`` slices of
``batch_size``, each computed by whichever rank holds it, so the loss curve does not depend on the world
size. Two real gloo processes (``torch.multiprocessing.spawn``) against one process computing both
slices, with dropout on, learnable loss weights and gradient accumulation; and a run that shrinks from
two processes to one and grows back through checkpoints against the fixed two-process run."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.checkpointing import load_for_resume, save_training_checkpoint
from mtl_ray.training.loop import MultiTaskTrainer, slices_of_rank
from mtl_ray.training.run import restore_trainer, setup_run

STEPS = 6
MAX_WORKERS = 2  # data_parallel_size of every run here


def cfg_dict(encoder: Path, files: dict, out: Path) -> dict:
    # dropout on in the encoder and the heads: equality needs the per-slice dropout seeds
    d = tiny_config_dict(encoder, files, out, max_steps=STEPS, batch_size=4, grad_accum_steps=2)
    d["train"].update(weighting="uncertainty", eval_every=100)
    return d


def train_until(d: dict, until: int, resume: str | None, save: str | None) -> tuple[list[dict], dict, int]:
    """Steps up to ``until`` (after restoring ``resume``) at this process's world size; rank 0 saves."""
    cfg = config_from_dict(d)
    setup = setup_run(cfg)
    trainer = build_trainer(
        cfg, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu", data_parallel_size=MAX_WORKERS
    )
    if resume:
        restore_trainer(trainer, cfg, resume)
    history = [trainer.train_step() for _ in range(until - trainer.step)]
    if save and trainer.rank == 0:
        save_training_checkpoint(Path(save), cfg, trainer.model, setup.tokenizer, trainer.state_dict())
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return history, params, trainer.examples_seen


def _gloo_worker(rank: int, d: dict, rendezvous: str, until: int, resume: str | None, save: str | None, out: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        history, params, seen = train_until(d, until, resume, save)
        dist.barrier()  # rank 0's checkpoint is complete before anyone exits
        if rank == 0:
            torch.save({"history": history, "params": params, "examples_seen": seen}, out)
    finally:
        dist.destroy_process_group()


def on_two_gloo_workers(d: dict, tmp: Path, until: int, resume: str | None = None, save: str | None = None):
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "rank0.pt"
    torch.multiprocessing.spawn(_gloo_worker, args=(d, str(tmp / "rdv"), until, resume, save, str(out)), nprocs=2)
    r = torch.load(out)
    return r["history"], r["params"], r["examples_seen"]


@pytest.fixture(scope="module")
def fixed_run(tiny_encoder_dir, tiny_task_files, tmp_path_factory):
    """The fixed-size run: two gloo workers, one slice each, STEPS steps."""
    tmp = tmp_path_factory.mktemp("fixed")
    d = cfg_dict(tiny_encoder_dir, tiny_task_files, tmp / "out")
    return d, on_two_gloo_workers(d, tmp / "gloo", STEPS)


def assert_same_curve(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5), (int(b["step"]), key)


def assert_same_params(got: dict, want: dict) -> None:
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name


@pytest.mark.parametrize(
    "rank, world, size, want",
    [(0, 1, 2, [0, 1]), (0, 2, 2, [0]), (1, 2, 2, [1]), (0, 2, 3, [0]), (1, 2, 3, [1, 2]), (2, 4, 4, [2])],
)
def test_each_rank_computes_a_contiguous_block_of_slices(rank, world, size, want):
    assert list(slices_of_rank(rank, world, size)) == want


@pytest.mark.distributed
def test_one_worker_with_two_slices_equals_two_gloo_workers(fixed_run):
    d, (want, want_params, want_seen) = fixed_run
    history, params, seen = train_until(d, STEPS, None, None)  # world size 1
    assert_same_curve(history, want)
    assert_same_params(params, want_params)
    assert seen == want_seen == STEPS * 2 * 4 * MAX_WORKERS  # accum × batch_size × slices per step


@pytest.mark.distributed
def test_dropout_masks_follow_the_slice_not_the_rank(fixed_run):
    """The negative control: one slice of twice the batch (the world-size-1 layout of a fixed run) sees
    the same examples but other dropout masks, so its curve differs from the two-slice one."""
    d, (want, _, _) = fixed_run
    e = {**d, "train": {**d["train"], "batch_size": 8}}
    cfg = config_from_dict(e)
    setup = setup_run(cfg)
    trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu")
    first = trainer.train_step()
    assert any(abs(first[k] - want[0][k]) > 1e-4 for k in first if k.startswith("loss/"))


@pytest.mark.distributed
def test_shrink_to_one_worker_and_grow_back_equals_the_fixed_run(fixed_run, tmp_path):
    d, (want, want_params, want_seen) = fixed_run
    ck2, ck4 = tmp_path / "step-2", tmp_path / "step-4"
    head, _, _ = on_two_gloo_workers(d, tmp_path / "a", 2, save=str(ck2))  # 2 workers: steps 1-2
    middle, _, _ = train_until(d, 4, str(ck2), str(ck4))  # shrunk to 1 worker: steps 3-4
    tail, params, seen = on_two_gloo_workers(d, tmp_path / "b", STEPS, resume=str(ck4))  # grown back: 5-6
    assert [int(r["step"]) for r in head + middle + tail] == list(range(1, STEPS + 1))
    assert_same_curve(head + middle + tail, want)
    assert_same_params(params, want_params)
    assert seen == want_seen
    state = load_for_resume(ck4).training_state  # who wrote it, and the global layout it keeps
    assert (state["world_size"], state["data_parallel_size"]) == (1, MAX_WORKERS)


# --------------------------------------------------------------------------- seeds of runs before elastic


def with_mlm(d: dict) -> dict:
    """``d`` plus an mlm task (the regression file's texts): its masks are drawn from the slice's seed too."""
    mlm = {"type": "mlm", "source": d["tasks"]["score"]["source"], "max_length": 32, "mask_probability": 0.15}
    return {**d, "tasks": {**d["tasks"], "mlm": mlm}}


@pytest.mark.parametrize("mixed", [False, True], ids=["single-task", "mixed"])
def test_a_fixed_run_without_accumulation_keeps_the_per_rank_seeds_of_earlier_runs(
    tiny_encoder_dir, tiny_task_files, tmp_path, monkeypatch, mixed
):
    """One process, grad_accum_steps 1, dropout and mlm masks on: bit-identical to the seeding rule of
    runs before elastic training, torch.manual_seed(crc32(f"{seed}:{step}:{rank}")) at the step's start."""
    d = with_mlm(tiny_config_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "out", max_steps=4, batch_size=4))
    # balanced: 4 steps draw each of the 4 tasks once (single-task), or one example of each per step (mixed)
    d["train"].update(sampler="balanced", weighting="uncertainty", mixed_batches=mixed, loss_scaling="auto")
    cfg = config_from_dict(d)

    def run(reference: bool) -> tuple[list[dict], dict]:
        setup = setup_run(cfg)
        trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu")
        history = []
        for _ in range(4):
            if reference:  # the old rule, applied from outside
                torch.manual_seed(zlib.crc32(f"{cfg.train.seed}:{trainer.step}:0".encode()))
            history.append(trainer.train_step())
        return history, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    got, got_params = run(reference=False)
    with monkeypatch.context() as m:
        m.setattr(MultiTaskTrainer, "_seed_slice", lambda self, micro, slice_: None)
        want, want_params = run(reference=True)
    assert sum("loss/mlm" in h for h in got) == (4 if mixed else 1)
    assert got == want  # exact floats
    for name, p in want_params.items():
        assert torch.equal(got_params[name], p), name


def test_later_micro_batches_and_slices_get_their_own_keys(tiny_config):
    trainer = build_trainer_of(tiny_config())
    trainer.step = 7
    keys = {}
    for micro, slice_ in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        trainer._seed_slice(micro, slice_)
        keys[(micro, slice_)] = torch.initial_seed()
    assert keys == {
        (0, 0): zlib.crc32(b"0:7:0"),
        (0, 1): zlib.crc32(b"0:7:1"),
        (1, 0): zlib.crc32(b"0:7:1:0"),
        (1, 1): zlib.crc32(b"0:7:1:1"),
    }


def build_trainer_of(cfg):
    setup = setup_run(cfg)
    return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu")


# --------------------------------------------------------------------------- mixed micro-batches, sliced


@pytest.fixture(scope="module")
def mixed_fixed_run(tiny_encoder_dir, tiny_task_files, tmp_path_factory):
    """Mixed micro-batches (with an mlm task) on two gloo workers, one slice each: 2 examples per slice over
    4 tasks, so slices hold none of some task; dropout on."""
    tmp = tmp_path_factory.mktemp("mixed-fixed")
    d = with_mlm(cfg_dict(tiny_encoder_dir, tiny_task_files, tmp / "out"))
    d["train"].update(batch_size=2, mixed_batches=True, sampler="uniform", loss_scaling="auto", max_steps=4)
    return d, on_two_gloo_workers(d, tmp / "gloo", 4)


@pytest.mark.distributed
def test_mixed_batches_one_worker_with_two_slices_equals_two_gloo_workers(mixed_fixed_run):
    d, (want, want_params, want_seen) = mixed_fixed_run
    history, params, seen = train_until(d, 4, None, None)  # world size 1, data_parallel_size 2
    assert_same_curve(history, want)
    assert_same_params(params, want_params)
    assert seen == want_seen == 4 * 2 * 2 * MAX_WORKERS  # steps × accum × batch_size × slices
