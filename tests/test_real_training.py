"""A short real run: the pinned MiniLM encoder on a slice of the real Rotten Tomatoes data, offline."""

import pytest

from mtl_ray.config import config_from_dict
from mtl_ray.predictor import Predictor
from mtl_ray.training.run import train

pytestmark = pytest.mark.real


def test_short_real_run_beats_majority_baseline(tmp_path):
    cfg = config_from_dict(
        {
            "tasks": {
                "rt_sentiment": {
                    "type": "classification",
                    "source": "builtin:rt_sentiment",
                    "max_length": 48,
                    "max_train_examples": 1024,
                    "max_eval_examples": 300,
                },
                "tweet_valence": {
                    "type": "regression",
                    "source": "builtin:tweet_valence",
                    "max_length": 48,
                    "max_train_examples": 512,
                    "max_eval_examples": 200,
                },
            },
            "model": {"encoder": "builtin:all-MiniLM-L6-v2", "sharing_depth": 4},
            "train": {
                "max_steps": 40,
                "batch_size": 16,
                "lr": 1.5e-4,
                "sampler": "proportional",
                "eval_every": 40,
                "log_every": 10,
                "output_dir": str(tmp_path / "run"),
                "num_threads": 2,
            },
        }
    )
    summary = train(cfg, progress=False)
    acc = summary["test"]["rt_sentiment"]["accuracy"]
    majority = summary["majority_baseline"]["rt_sentiment"]["accuracy"]
    assert acc > majority + 0.05, (acc, majority)
    assert summary["test"]["tweet_valence"]["pearson"] > 0.3

    predictor = Predictor.from_checkpoint(summary["best_checkpoint"], device="cpu")
    out = predictor.predict(texts=["A gripping, beautifully acted film.", "Dull, lifeless and far too long."])
    assert [p["label"] for p in out["rt_sentiment"]] == ["fresh", "rotten"]
    assert out["tweet_valence"][0]["value"] > out["tweet_valence"][1]["value"]
