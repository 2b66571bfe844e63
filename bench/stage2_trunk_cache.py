"""Stage 2 on the real MiniLM: the trunk cache's speed-up, ``train.trunk_cache=off`` vs ``auto`` side by side.

    python bench/stage2_trunk_cache.py --steps 50 --work runs/bench-stage2

A stage-1 checkpoint at k = L = 6 (the pretrained encoder with a fresh head: timing does not depend on
the weights) -> stage 2 at ``model.sharing_depth=4`` with ``train.freeze_shared`` on one task
(tweet_sentiment, ``--examples`` training examples, max_length 64, batch 16): the same trainer built by
``build_trainer`` twice, once per cache mode, stepped ``--steps`` times each, 1 torch thread. Prints
the wall time of all steps and of the steps after the first epoch (the cache is full by then).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

TASK = {
    "tweet_sentiment": {
        "type": "classification",
        "source": "builtin:tweet_sentiment",
        "max_length": 64,
        "max_train_examples": 320,
        "max_eval_examples": 100,
    }
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--examples", type=int, default=320, help="training examples of the task")
    ap.add_argument("--work", default="runs/bench-stage2")
    args = ap.parse_args()

    import torch

    from mtl_ray.config import config_from_dict
    from mtl_ray.training.builders import build_trainer
    from mtl_ray.training.checkpointing import save_training_checkpoint
    from mtl_ray.training.run import setup_run

    torch.set_num_threads(1)
    work = Path(args.work).absolute()
    tasks = {name: {**t, "max_train_examples": args.examples} for name, t in TASK.items()}
    train = {"max_steps": args.steps, "batch_size": 16, "eval_every": args.steps, "device": "cpu", "seed": 0}
    stage1_cfg = config_from_dict({"tasks": tasks, "train": {**train, "output_dir": str(work / "stage1")}})
    setup = setup_run(stage1_cfg)
    stage1 = save_training_checkpoint(work / "stage1" / "ckpt", stage1_cfg, setup.model, setup.tokenizer, None)

    epoch = -(-setup.data["tweet_sentiment"].size("train") // 16)
    print(f"stage 2 at k = 4 of 6, {args.steps} steps of 16, one epoch = {epoch} steps, 1 thread")
    print("| train.trunk_cache | all steps | steps after epoch 1 | per later step |")
    print("|---|---|---|---|")
    rows = {}
    for mode in ("off", "auto"):
        cfg = config_from_dict(
            {
                "tasks": tasks,
                "model": {"sharing_depth": 4, "init_from": str(stage1)},
                "train": {**train, "freeze_shared": True, "trunk_cache": mode, "output_dir": str(work / mode)},
            }
        )
        s = setup_run(cfg)
        trainer = build_trainer(cfg, s.model, s.data, s.tokenizer.pad_token_id)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        later = times[epoch:]
        rows[mode] = sum(later) / max(len(later), 1)
        print(f"| {mode} | {sum(times):.1f} s | {sum(later):.1f} s | {rows[mode] * 1000:.0f} ms |")
    print(f"speed-up per step once the cache is full: {rows['off'] / rows['auto']:.1f}x")


if __name__ == "__main__":
    main()
