"""Early stopping: the patience rule on scripted scores, a run that stops at the right evaluation and
scores its best checkpoint (not the last), exact resume of the counters and best weights, rank
agreement under torch.distributed, config errors."""

import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtl_ray.checkpoint import load_meta
from mtl_ray.config import config_from_dict
from mtl_ray.errors import ConfigError
from mtl_ray.evaluate import evaluate_checkpoint
from mtl_ray.training.early_stopping import EarlyStopping, RunEarlyStopping
from mtl_ray.training.loop import MultiTaskTrainer
from mtl_ray.training.run import train


@pytest.mark.parametrize(
    "scores, patience, min_delta, stopped_at, best_step",
    [
        ([0.5, 0.6, 0.6, 0.59, 0.7], 2, 0.0, 4, 2),  # ties and drops count against patience
        ([0.5, 0.6, 0.55, 0.61, 0.60, 0.59], 2, 0.0, 6, 4),  # an improvement resets the count
        ([0.5, 0.505, 0.509, 0.7], 2, 0.01, 3, 3),  # +0.005, +0.009 < min_delta: best moves, patience runs out
        ([math.nan, math.nan, 0.1], 2, 0.0, 2, None),  # NaN never improves
        ([0.1, 0.2, 0.3, 0.4], 1, 0.0, None, 4),  # always improving: never stops
    ],
)
def test_patience_on_a_scripted_sequence(scores, patience, min_delta, stopped_at, best_step):
    es = EarlyStopping(patience, min_delta)
    decisions = [es.update(i + 1, s) for i, s in enumerate(scores)]  # evaluation i+1 at "step" i+1
    assert es.stopped_at == stopped_at and es.best_step == best_step
    first_stop = decisions.index(True) + 1 if True in decisions else None
    assert first_stop == stopped_at
    restored = EarlyStopping(patience, min_delta)
    restored.load_state_dict(es.state_dict())
    assert restored.state_dict() == es.state_dict()


SCRIPT = [0.30, 0.70, 0.50, 0.40, 0.90, 0.95]  # validation aggregates at steps 3, 6, 9, 12 (, 15, 18)


@pytest.fixture
def scripted_aggregate(monkeypatch):
    """Validation aggregates follow SCRIPT (one value per evaluation, by step); test scores stay real."""
    evaluate, aggregate = MultiTaskTrainer.evaluate, MultiTaskTrainer.aggregate

    def evaluate_split(self, split="validation"):
        self._split = split
        return evaluate(self, split)

    def scripted(self, per_task):
        return SCRIPT[self.step // 3 - 1] if self._split == "validation" else aggregate(self, per_task)

    monkeypatch.setattr(MultiTaskTrainer, "evaluate", evaluate_split)
    monkeypatch.setattr(MultiTaskTrainer, "aggregate", scripted)


def es_config(tiny_config, run, **train):
    opts = {"max_steps": 30, "eval_every": 3, "log_every": 3, "early_stopping_patience": 2, **train}
    cfg = tiny_config(drop_tasks=("match",), run=run, **opts)
    cfg.ray.num_to_keep = 10  # keep every evaluation's checkpoint for the comparisons below
    return cfg


def test_a_run_stops_at_the_right_evaluation_and_scores_its_best_checkpoint(tiny_config, scripted_aggregate):
    summary = train(es_config(tiny_config, "es"), progress=False)
    # 0.30, 0.70 (best, step 6), 0.50, 0.40: two evaluations without improvement -> stop at step 12
    assert summary["steps"] == 12 and summary["best_step"] == 6
    assert summary["early_stopping"] == {"mode": "aggregate", "best_step": 6, "stopped_at": 12}
    ckpts = sorted(p.name for p in (Path(summary["output_dir"]) / "checkpoints").iterdir())
    assert ckpts == ["step-0000003", "step-0000006", "step-0000009", "step-0000012"]
    assert summary["best_checkpoint"].endswith("step-0000006")
    best = evaluate_checkpoint(summary["best_checkpoint"], "test").metrics
    last = evaluate_checkpoint(summary["best_checkpoint"].replace("0000006", "0000012"), "test").metrics
    assert summary["test"] == best  # the best checkpoint's test metrics, exactly
    assert summary["test"]["score"] != last["score"]  # ... and not the last one's


def test_resume_keeps_the_counters_and_the_best_weights(tiny_config, scripted_aggregate):
    straight = train(es_config(tiny_config, "straight"), progress=False)
    # a run interrupted after its step-9 checkpoint (best: step 6, one evaluation without improvement)
    resumed = train(es_config(tiny_config, "resumed"), resume_from=_step9(straight), progress=False)
    assert resumed["steps"] == 12 and resumed["early_stopping"] == straight["early_stopping"]
    assert resumed["test"] == straight["test"]  # step 6's weights came back from the step-9 training state


def test_a_run_resumed_in_its_own_folder_keeps_its_best_checkpoint_and_history(tiny_config, scripted_aggregate):
    straight = train(es_config(tiny_config, "straight"), progress=False)
    cfg = es_config(tiny_config, "own")
    own = Path(cfg.train.output_dir)
    shutil.copytree(straight["output_dir"], own)  # killed after logging step 12, before its checkpoint:
    shutil.rmtree(own / "checkpoints" / "step-0000012")
    ck9 = own / "checkpoints" / "step-0000009"
    resumed = train(cfg, resume_from=str(ck9), progress=False)
    assert resumed["resumed_from_step"] == 9 and resumed["steps"] == 12
    assert resumed["best_step"] == 6 and resumed["best_checkpoint"] == str(own / "checkpoints" / "step-0000006")
    assert resumed["test"] == straight["test"]
    steps = [json.loads(line)["step"] for line in (own / "metrics.jsonl").read_text().splitlines()]
    straight_steps = [json.loads(line)["step"] for line in Path(straight["output_dir"], "metrics.jsonl").open()]
    assert steps == straight_steps  # steps 10-12 of the abandoned attempt were dropped, then re-logged once
    before = load_meta(ck9)["metrics"]["train_seconds"]
    assert 0 < before < resumed["train_seconds"]  # the time before the resume counts too
    assert load_meta(own / "checkpoints" / "step-0000012")["metrics"]["train_seconds"] > before


def _step9(summary):
    return str(Path(summary["output_dir"]) / "checkpoints" / "step-0000009")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks_disagreeing(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    tracker = RunEarlyStopping(patience=1, min_delta=0.0)
    # rank 1 sees a score that would improve at evaluation 2; rank 0's (the broadcast one) does not
    scores = [0.5, 0.4 if rank == 0 else 0.9, 0.3]
    for step, score in enumerate(scores, start=1):
        tracker.observe(step, {}, score, model)
        if tracker.finished:
            break
    out[rank] = (step, tracker.es.state_dict())
    dist.destroy_process_group()


@pytest.mark.distributed
def test_every_rank_stops_at_the_same_evaluation_even_if_its_own_score_differs():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ranks_disagreeing, args=(_free_port(), out), nprocs=2, join=True)
        assert out[0] == out[1] == (2, {"best_score": 0.5, "best_step": 1, "bad_evals": 1, "stopped_at": 2})


BASE = {"tasks": {"t": {"source": "x.csv"}}}


@pytest.mark.parametrize(
    "train, message",
    [
        (
            {"early_stopping_patience": 0},
            "train.early_stopping_patience: must be >= 1 (evaluations), got 0",
        ),
        (
            {"early_stopping_patience": 3, "eval_every": 100, "max_steps": 100},
            "train.early_stopping_patience: the run evaluates only once (train.eval_every 100 >= train.max_steps "
            "100), so there is nothing to stop early; lower train.eval_every",
        ),
        (
            {"early_stopping_patience": 3, "early_stopping_min_delta": -0.1},
            "train.early_stopping_min_delta: must be >= 0, got -0.1",
        ),
    ],
)
def test_config_errors(train, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "train": train})
    assert str(err.value) == message


def test_seconds_before_a_resume_come_from_the_checkpoint_else_from_the_time_stamps():
    from mtl_ray.training.run import seconds_before

    history = [{"step": 20, "time": 100.0}, {"step": 40, "time": 110.0}, {"step": 60, "time": 120.0}]
    assert seconds_before({"metrics": {"train_seconds": 42.5}}, history, 60) == 42.5
    # 40 steps took 20 s: steps 0..60 are estimated at 30 s
    assert seconds_before({"metrics": {"aggregate": 0.5}}, history, 60) == pytest.approx(30.0)
    assert seconds_before({}, history[:1], 20) == 0.0  # one stamp: nothing to scale
