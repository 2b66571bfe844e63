"""Mixed micro-batches under plain ``torch.distributed`` (2 gloo processes, no Ray): the 2-rank run equals
one process with the doubled batch, including ranks that hold no example of a task in the mix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict
from mtl_ray.training.builders import build_trainer
from mtl_ray.training.mixed_batches import allocate, rank_slice
from mtl_ray.training.run import setup_run
from mtl_ray.training.samplers import build_sampler

STEPS = 4
PER_RANK = 2  # 2 ranks × 2 = 4 examples over 3 tasks: some task has 1 example, so one rank holds none of it


def _train(cfg_dict: dict, steps: int) -> dict:
    cfg = config_from_dict(cfg_dict)
    setup = setup_run(cfg)
    trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu")
    logs = [trainer.train_step() for _ in range(steps)]
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return {"params": params, "logs": logs, "examples_seen": trainer.examples_seen}


def _rank_main(rank: int, world: int, cfg_dict: dict, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_train(cfg_dict, STEPS), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
@pytest.mark.distributed
def test_two_gloo_ranks_equal_one_process_with_the_doubled_batch(nodrop_encoder_dir, tiny_task_files, tmp_path):
    d = tiny_config_dict(nodrop_encoder_dir, tiny_task_files, tmp_path / "run", max_steps=STEPS, batch_size=PER_RANK)
    d["model"]["head_dropout"] = 0.0
    d["train"].update(
        mixed_batches=True, sampler="uniform", loss_scaling="auto", weighting="uncertainty", grad_accum_steps=2
    )
    # the case that needs distributed.fill_missing_gradients does occur in these draws
    sampler = build_sampler("uniform", {"match": 1, "score": 1, "sentiment": 1}, config_from_dict(d).train, 0)
    mixes = [allocate(sampler, 0, 2 * PER_RANK) for _ in range(STEPS * 2)]
    assert any(len(range(c)[rank_slice(c, 1, 2)]) == 0 for mix in mixes for c in mix.values()), mixes

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(2, d, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    single = _train({**d, "train": {**d["train"], "batch_size": 2 * PER_RANK}}, STEPS)
    assert ranks[0]["examples_seen"] == ranks[1]["examples_seen"] == single["examples_seen"] == STEPS * 2 * 4
    for name, p in single["params"].items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        assert torch.allclose(ranks[0]["params"][name], p, atol=1e-5), name
    for got, want in zip(ranks[0]["logs"], single["logs"]):  # rank-averaged losses = the global batch's
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
