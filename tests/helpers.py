"""Plain test helpers shared by every test tier: tiny learnable task files, the tiny config factory, and
the single-process reference of a data-parallel run.

Import them by name (``from helpers import tiny_config_dict``): ``tests/`` is on ``sys.path`` because
of its ``conftest.py`` (pytest's default "prepend" import mode).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "best", "love", "happy", "fun", "win"]
NEGATIVE = ["bad", "terrible", "worst", "hate", "sad", "boring", "lose"]
NEUTRAL = ["the", "movie", "film", "plot", "actor", "song", "game", "team", "news", "data"]


def _sentence(rng: random.Random, polarity: int) -> str:
    words = rng.sample(NEUTRAL, 4)
    pool = POSITIVE if polarity > 0 else NEGATIVE
    for _ in range(2):
        words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return " ".join(words)


def write_tiny_tasks(root: Path, n: int = 120, seed: int = 0) -> dict[str, Path]:
    """Synthetic but learnable tasks: sentiment (classification), score (regression), match (pairs), unlabeled."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"sentiment": root / "sentiment.csv", "score": root / "score.jsonl", "match": root / "match.csv"}
    with open(paths["sentiment"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "polarity"])
        for i in range(n):
            pol = 1 if i % 2 == 0 else -1
            w.writerow([f"{_sentence(rng, pol)} {i}", "pos" if pol > 0 else "neg"])
    with open(paths["score"], "w", encoding="utf-8") as f:
        for i in range(n):
            pol = 1 if rng.random() < 0.5 else -1
            f.write(json.dumps({"text": f"{_sentence(rng, pol)} {i}", "label": float(pol) * 2 + rng.random()}) + "\n")
    with open(paths["match"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "label"])
        for i in range(n):
            pol = 1 if i % 2 == 0 else -1
            same = rng.random() < 0.5
            w.writerow(
                [_sentence(rng, pol) + f" {i}", _sentence(rng, pol if same else -pol), "same" if same else "diff"]
            )
    return paths


def tiny_config_dict(encoder_dir: Path, files: dict[str, Path], out_dir: Path, **train) -> dict:
    return {
        "tasks": {
            "sentiment": {
                "type": "classification",
                "source": str(files["sentiment"]),
                "text_field": "sentence",
                "label_field": "polarity",
                "max_length": 32,
            },
            "score": {"type": "regression", "source": str(files["score"]), "max_length": 32},
            "match": {
                "type": "pair_classification",
                "source": str(files["match"]),
                "text_field": "a",
                "text_pair_field": "b",
                "max_length": 48,
            },
        },
        "model": {"encoder": str(encoder_dir), "head_dropout": 0.1},
        "train": {
            "seed": 0,
            "max_steps": 6,
            "batch_size": 8,
            "lr": 1e-3,
            "eval_every": 3,
            "log_every": 2,
            "eval_batch_size": 32,
            "output_dir": str(out_dir),
            "device": "cpu",
            **train,
        },
        "data": {"cache_dir": str(out_dir / "cache")},
    }


def write_tone_csv(path: Path, n: int = 120, seed: int = 5) -> Path:
    """A new task (3 classes: pos / neg / flat) the base never saw."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["body", "tone"])
        for i in range(n):
            kind = ("pos", "neg", "flat")[i % 3]
            words = rng.sample(NEUTRAL, 4) + ([rng.choice(POSITIVE)] if kind == "pos" else [])
            words += [rng.choice(NEGATIVE)] if kind == "neg" else []
            rng.shuffle(words)
            w.writerow([" ".join(words) + f" {i}", kind])
    return path


def assert_equals_one_process(cfg, batch_size: int, steps: int, state: dict):
    """Train ``cfg`` in this process for ``steps`` steps with ``batch_size`` (a data-parallel run's global
    batch: per-worker batch × workers) and assert that its weights equal ``state`` (name -> tensor, the
    data-parallel run's) to 1e-5; returns the trainer."""
    import torch

    from mtl_ray.config import config_from_dict, config_to_dict
    from mtl_ray.training.builders import build_trainer
    from mtl_ray.training.run import setup_run

    d = config_to_dict(cfg)
    single = config_from_dict({**d, "train": {**d["train"], "batch_size": batch_size}})
    setup = setup_run(single)
    trainer = build_trainer(single, setup.model, setup.data, setup.tokenizer.pad_token_id, device="cpu")
    for _ in range(steps):
        trainer.train_step()
    for name, p in trainer.model.named_parameters():
        assert torch.allclose(p.detach(), state[name], atol=1e-5), name
    return trainer
