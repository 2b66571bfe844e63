"""Ray Train on a real local Ray (2 CPU workers, tiny model): the data-parallel run is the single-process
run with a twice larger batch, metrics cover both ranks' shards, resume and a killed worker continue
exactly, streaming through Ray Data leaves CPUs for its tasks, and bad requests fail within seconds.

One fixture run (2 workers, 6 steps, checkpoints at 3 and 6) is the reference for the resume and
fault-injection runs, which must end with bit-identical weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import assert_equals_one_process, tiny_config_dict

from mtl_ray.checkpoint import load_checkpoint
from mtl_ray.config import config_from_dict, config_to_dict
from mtl_ray.errors import CheckpointError, MtlRayError
from mtl_ray.ray.train import run_ray_training
from mtl_ray.training.checkpointing import model_from_checkpoint
from mtl_ray.training.driver import FAULT_STEP_ENV
from mtl_ray.training.evaluation import evaluate_model
from mtl_ray.training.run import setup_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("no_leftover_placement_groups"),
]

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def make_config(encoder: Path, files: dict, out: Path, workers: int = 2, ray: dict | None = None, **train):
    d = tiny_config_dict(encoder, files, out, max_steps=STEPS, eval_every=3, log_every=2, **train)
    d["model"]["head_dropout"] = 0.0
    d["train"].update(weighting="uncertainty", grad_accum_steps=2)  # learnable weights + accumulation
    d["ray"] = {"num_workers": workers, **(ray or {})}
    return config_from_dict(d)


@pytest.fixture(scope="module")
def reference_run(train_cluster, nodrop_encoder_dir, tiny_task_files, tmp_path_factory):
    """2 workers × batch 8, 6 steps; returns (config, summary)."""
    cfg = make_config(nodrop_encoder_dir, tiny_task_files, tmp_path_factory.mktemp("ref") / "run")
    return cfg, run_ray_training(cfg)


def final_state(summary: dict, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(summary["ray_run_path"]) / f"step-{step:07d}").model_state


def records(summary: dict) -> list[dict]:
    path = Path(summary["output_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_workers_equal_one_process_with_twice_the_batch(reference_run):
    cfg, summary = reference_run
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with different weights"

    # single process, batch 16 = 8 per worker × 2 workers: the same global batches
    trainer = assert_equals_one_process(cfg, 16, STEPS, final_state(summary))
    assert summary["examples_seen"] == trainer.examples_seen == STEPS * 2 * 16

    # outputs of the run, as the in-process driver writes them
    out = Path(summary["output_dir"])
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["best_checkpoint"] == summary["best_checkpoint"]
    assert any((out / "tensorboard").iterdir())
    assert set(summary["test"]) == {"sentiment", "score", "match"}
    assert Path(summary["best_checkpoint"]).name in ("step-0000003", "step-0000006")
    hist = records(summary)
    assert [r["step"] for r in hist if "val/aggregate" not in r] == [2, 4, 6]
    assert [r["step"] for r in hist if "val/aggregate" in r] == [3, 6]


def test_mixed_batches_two_workers_equal_one_process_with_twice_the_batch(
    train_cluster, nodrop_encoder_dir, tiny_task_files, tmp_path
):
    """train.mixed_batches: every micro-batch mixes the tasks; per-rank counts differ (odd task counts), the
    gradient average is still the global batch's (training/mixed_batches.py)."""
    cfg = make_config(
        nodrop_encoder_dir, tiny_task_files, tmp_path / "run", mixed_batches=True, loss_scaling="auto", batch_size=5
    )
    summary = run_ray_training(cfg)
    assert summary["rank_param_digests"][0] == summary["rank_param_digests"][1]
    trainer = assert_equals_one_process(cfg, 10, STEPS, final_state(summary))
    assert summary["examples_seen"] == trainer.examples_seen == STEPS * 2 * 10
    trained = {k[5:] for r in records(summary) for k in r if k.startswith("loss/")}
    assert trained == {"sentiment", "score", "match"}


def test_validation_metrics_cover_both_ranks(reference_run):
    """The reported metrics equal a single-process evaluation of the same weights on the whole split."""
    cfg, summary = reference_run
    ckpt = load_checkpoint(Path(summary["ray_run_path"]) / f"step-{STEPS:07d}")
    model, _ = model_from_checkpoint(ckpt)
    setup = setup_run(cfg)
    expected = evaluate_model(model, setup.data, "validation", pad_token_id=setup.tokenizer.pad_token_id)
    reported = ckpt.meta["metrics"]["validation"]
    assert reported.keys() == expected.keys()
    for task in expected:
        for metric, value in expected[task].items():
            assert reported[task][metric] == pytest.approx(value, abs=1e-6), (task, metric)


def test_resume_from_a_checkpoint_continues_exactly(reference_run, tmp_path):
    cfg, summary = reference_run
    step3 = Path(summary["ray_run_path"]) / "step-0000003"
    resumed_cfg = config_from_dict(
        {**config_to_dict(cfg), "train": {**config_to_dict(cfg)["train"], "output_dir": str(tmp_path / "resumed")}}
    )
    resumed = run_ray_training(resumed_cfg, resume_from=str(step3))
    assert resumed["restored_from"] == str(step3)
    assert resumed["rank_param_digests"][0] == summary["rank_param_digests"][0]
    assert [r["step"] for r in records(resumed)] == [4, 6, 6]  # nothing before the checkpoint re-logged


def test_resume_refuses_a_checkpoint_of_other_tasks(reference_run, tiny_task_files, tmp_path):
    cfg, summary = reference_run
    d = config_to_dict(cfg)
    del d["tasks"]["score"]
    d["train"]["output_dir"] = str(tmp_path / "other")
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="trained tasks"):
        run_ray_training(config_from_dict(d), resume_from=summary["best_checkpoint"])
    assert time.monotonic() - started < 10


def test_killed_worker_restarts_from_the_last_checkpoint(reference_run, tmp_path, monkeypatch):
    cfg, summary = reference_run
    d = config_to_dict(cfg)
    d["train"]["output_dir"] = str(tmp_path / "faulty")
    d["ray"]["max_failures"] = 1
    monkeypatch.setenv(FAULT_STEP_ENV, "5")  # rank 1 is SIGKILLed right after step 5, once
    faulty = run_ray_training(config_from_dict(d))

    assert list(Path(faulty["output_dir"]).glob(".fault-injected-step-5-rank-1")), "the fault never fired"
    assert faulty["restored_from"].endswith("step-0000003")
    assert faulty["rank_param_digests"] == summary["rank_param_digests"]  # bit-identical to no failure
    ref, got = final_state(summary), final_state(faulty)
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    hist = records(faulty)  # continuous: step 4 re-trained after the restart is logged once
    assert [r["step"] for r in hist if "val/aggregate" not in r] == [2, 4, 6]
    assert [r["step"] for r in hist if "val/aggregate" in r] == [3, 6]


# --------------------------------------------------------------------------- streaming (Ray Data)


@pytest.fixture(scope="module")
def stream_files(tiny_task_files, tmp_path_factory) -> dict:
    """sentiment as Parquet, score as JSONL (both streamed), match stays CSV (loaded in memory)."""
    root = tmp_path_factory.mktemp("stream-tasks")
    files = dict(tiny_task_files)
    files["sentiment"] = root / "sentiment.parquet"
    pd.read_csv(tiny_task_files["sentiment"]).to_parquet(files["sentiment"])
    return files


def test_streamed_tasks_get_the_in_memory_splits(train_cluster, nodrop_encoder_dir, stream_files, tmp_path):
    import ray

    from mtl_ray.data.sources import load_task_splits
    from mtl_ray.ray.data import plan_streaming

    cfg = make_config(nodrop_encoder_dir, stream_files, tmp_path / "run", ray={"streaming": True})
    planned = plan_streaming(cfg, str(nodrop_encoder_dir))
    assert set(planned) == {"sentiment", "score"}
    for name, task in planned.items():
        splits, labels = load_task_splits(cfg.tasks[name], cfg.data)
        assert task.num_examples == len(splits["train"])
        assert task.label_names == labels
        got = ray.get(task.eval_ref)
        for split in ("validation", "test"):
            assert got[split]["text"] == splits[split]["text"], (name, split)
            assert got[split]["label"] == pytest.approx(splits[split]["label"]), (name, split)


def test_streaming_with_two_workers_does_not_starve_ray_data(train_cluster, nodrop_encoder_dir, stream_files, tmp_path):
    """Workers take 3 of the 4 logical CPUs (2 cores here); Ray Data's read/tokenize tasks run on the last."""
    cfg = make_config(
        nodrop_encoder_dir, stream_files, tmp_path / "run", ray={"streaming": True, "cpus_per_worker": 1.5}
    )
    summary = run_ray_training(cfg)
    assert summary["steps"] == STEPS
    assert summary["rank_param_digests"][0] == summary["rank_param_digests"][1]
    trained = {k[5:] for r in records(summary) for k in r if k.startswith("loss/")}
    assert trained & {"sentiment", "score"}, trained  # a streamed task was drawn and trained
    assert set(summary["test"]) == {"sentiment", "score", "match"}


# --------------------------------------------------------------------------- fail fast


@pytest.mark.parametrize(
    "ray_cfg, message",
    [
        ({"num_workers": 8}, r"CPU: needs 8 \(8 workers × 1 CPU\), the cluster has 4"),
        ({"num_workers": 2, "use_gpu": True}, r"GPU: needs 2 .* the cluster has 0"),
        ({"num_workers": 1, "cpus_per_worker": 6}, r"CPU: needs 6"),
        (
            {"num_workers": 2, "cpus_per_worker": 2, "streaming": True},
            r"CPU: needs 5 \(2 workers × 2 CPU \+ 1 CPU kept free for Ray Data",
        ),
    ],
)
def test_too_big_a_request_fails_within_seconds(
    train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path, ray_cfg, message
):
    cfg = make_config(
        tiny_encoder_dir, tiny_task_files, tmp_path / "run", workers=ray_cfg.pop("num_workers"), ray=ray_cfg
    )
    started = time.monotonic()
    with pytest.raises(MtlRayError, match=message):
        run_ray_training(cfg)
    assert time.monotonic() - started < 10


def test_bad_task_data_fails_on_the_driver_not_in_retried_workers(
    train_cluster, tiny_encoder_dir, tiny_task_files, tmp_path
):
    from mtl_ray.errors import DataError

    cfg = make_config(tiny_encoder_dir, tiny_task_files, tmp_path / "run", ray={"max_failures": 3})
    d = config_to_dict(cfg)
    d["tasks"]["sentiment"]["text_field"] = "nope"
    started = time.monotonic()
    with pytest.raises(DataError, match="missing column 'nope' \\(set by tasks.sentiment.text_field\\)"):
        run_ray_training(config_from_dict(d))
    assert time.monotonic() - started < 10


def _cli(*args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_unreachable_address_fails_within_seconds(tmp_path):
    started = time.monotonic()
    proc = _cli("-m", "mtl_ray.cli", "train", "--config", "configs/smoke.yaml", "--address", "127.0.0.1:9")
    # interpreter start and imports included (slow on a loaded 2-core machine); a hung connect would
    # take Ray's own timeout of several minutes
    assert time.monotonic() - started < 60
    assert proc.returncode == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:9'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_job_entrypoint_rejects_a_bad_config_without_a_traceback():
    proc = _cli("jobs/train.py", "--config", "configs/smoke.yaml", "train.lr=fast", "ray.num_wrkers=2")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ")
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- real encoder, real data


@pytest.mark.real
def test_real_minilm_on_real_slices_through_ray_train(train_cluster, tmp_path):
    """The pinned MiniLM on small real slices, 2 workers: trains, ranks agree, the best checkpoint predicts."""
    from mtl_ray.config import load_config
    from mtl_ray.predictor import Predictor

    cfg = load_config(
        REPO / "configs" / "smoke.yaml",
        [
            f"train.output_dir={tmp_path / 'smoke'}",
            "train.max_steps=6",
            "train.eval_every=3",
            "train.log_every=3",
            "ray.num_workers=2",
        ],
    )
    summary = run_ray_training(cfg)
    assert summary["steps"] == 6
    assert summary["rank_param_digests"][0] == summary["rank_param_digests"][1]
    assert set(summary["test"]) == {"rt_sentiment", "tweet_valence"}
    assert summary["majority_baseline"]["rt_sentiment"]["accuracy"] > 0
    out = Predictor.from_checkpoint(summary["best_checkpoint"], device="cpu").predict(texts=["a fine film"])
    assert set(out) == {"rt_sentiment", "tweet_valence"}
