"""The Ray shell's pure logic, without starting Ray: resource checks, addresses, fault switch, the
streamed-task row stream and its resume state."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mtl_ray.config import TaskConfig, config_from_dict
from mtl_ray.errors import ConfigError, DataError, MtlRayError
from mtl_ray.ray.data import ShardStream, stream_source
from mtl_ray.ray.session import ResourceRequest, _host_port, check_resources, resolve_address
from mtl_ray.training.driver import FAULT_RANK_ENV, FAULT_STEP_ENV, absolute_paths, fault_from_env, storage_location

NODE = {"Alive": True, "Resources": {"CPU": 4.0}}


def test_resources_that_fit_pass():
    check_resources(ResourceRequest(2, {"CPU": 1.0}, {"CPU": 1.0}, "for data"), {"CPU": 4.0}, [NODE])


@pytest.mark.parametrize(
    "request_, message",
    [
        (ResourceRequest(8, {"CPU": 1.0}), r"CPU: needs 8 \(8 workers × 1 CPU\), the cluster has 4"),
        (ResourceRequest(2, {"CPU": 1.0, "GPU": 1.0}), r"GPU: needs 2 \(2 workers × 1 GPU\), the cluster has 0"),
        (
            ResourceRequest(2, {"CPU": 2.0}, {"CPU": 1.0}, "for data"),
            r"needs 5 \(2 workers × 2 CPU \+ 1 CPU for data\)",
        ),
    ],
)
def test_resources_that_do_not_fit_name_what_is_missing(request_, message):
    with pytest.raises(MtlRayError, match=message):
        check_resources(request_, {"CPU": 4.0}, [NODE])


def test_a_worker_must_fit_on_one_node():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    with pytest.raises(MtlRayError, match="CPU: one worker needs 3, the largest node has 2"):
        check_resources(ResourceRequest(1, {"CPU": 3.0}), {"CPU": 4.0}, nodes)


def test_address_resolution_and_parsing(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None, None) is None
    assert resolve_address(None, "10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert resolve_address(None, None) == "head:6379"
    assert resolve_address("cli:1", "cfg:2") == "cli:1"
    assert _host_port("head") == ("head", 6379)
    assert _host_port("ray://head") == ("head", 10001)
    with pytest.raises(MtlRayError, match="dashboard / Ray Jobs address"):
        _host_port("http://127.0.0.1:8265")


def test_fault_switch_is_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(FAULT_STEP_ENV, raising=False)
    assert fault_from_env(tmp_path, 2) is None
    monkeypatch.setenv(FAULT_STEP_ENV, "5")
    assert fault_from_env(tmp_path, 2) == {
        "step": 5,
        "rank": 1,
        "marker": str(tmp_path / ".fault-injected-step-5-rank-1"),
    }
    monkeypatch.setenv(FAULT_RANK_ENV, "3")
    with pytest.raises(ConfigError, match="0 <= rank < workers"):
        fault_from_env(tmp_path, 2)


def test_local_paths_become_absolute_for_workers(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # Ray Train workers start in their run directory, not here
    rel = config_from_dict(
        {
            "tasks": {"t": {"type": "classification", "source": "data.csv"}},
            "train": {"output_dir": "runs/x"},
            "ray": {"storage_path": "ray-results"},
        }
    )
    (tmp_path / "data.csv").write_text("text,label\na,b\n")
    out = absolute_paths(rel)
    assert out.tasks["t"].source == str(tmp_path / "data.csv")
    assert out.train.output_dir == str(tmp_path / "runs" / "x")
    assert storage_location(out, None) == str(tmp_path / "ray-results")
    assert storage_location(out, "s3://bucket/runs") == "s3://bucket/runs"


def test_ray_config_validates():
    with pytest.raises(ConfigError, match="ray.num_workers: must be >= 1"):
        config_from_dict({"tasks": {"t": {"source": "x.csv"}}, "ray": {"num_workers": 0}})


# --------------------------------------------------------------------------- streaming sources and rows


def test_stream_sources(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    df.to_parquet(tmp_path / "one.parquet")
    cfg = {"type": "classification"}
    assert stream_source(TaskConfig(name="t", source=str(tmp_path / "one.parquet"), **cfg)).paths == {
        None: [str(tmp_path / "one.parquet")]
    }
    (tmp_path / "csv").mkdir()
    df.to_csv(tmp_path / "csv" / "a.csv")
    assert stream_source(TaskConfig(name="t", source=str(tmp_path / "csv" / "a.csv"), **cfg)) is None
    split = tmp_path / "split"
    (split / "train").mkdir(parents=True)
    df.to_json(split / "train" / "part-0.jsonl", orient="records", lines=True)
    df.to_json(split / "train" / "part-1.jsonl", orient="records", lines=True)
    df.to_json(split / "test.jsonl", orient="records", lines=True)
    src = stream_source(TaskConfig(name="t", source=str(split), **cfg))
    assert src.fmt == "json"
    assert src.paths == {
        "test": [f"{split}/test.jsonl"],
        "train": [f"{split}/train/part-0.jsonl", f"{split}/train/part-1.jsonl"],
    }
    df.to_parquet(split / "validation.parquet")
    with pytest.raises(DataError, match="mixes Parquet and JSONL"):
        stream_source(TaskConfig(name="t", source=str(split), **cfg))


class FakeShard:
    """A DataIterator stand-in: ``rows`` rows per epoch, split into pyarrow batches."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.epochs_opened = 0

    def iter_batches(self, *, batch_size, drop_last, **_):
        self.epochs_opened += 1
        epoch = self.epochs_opened
        for start in range(0, self.rows - batch_size + 1 if drop_last else self.rows, batch_size):
            ids = list(range(start, min(start + batch_size, self.rows)))
            yield pa.table({"input_ids": [[epoch, i] for i in ids], "labels": ids})


def test_shard_stream_cycles_epochs_and_resumes_inside_one():
    stream = ShardStream("t", FakeShard(10), num_examples=10, seed=0)
    got = [[r["labels"] for r in stream.next_rows(4)] for _ in range(3)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]  # 2 full batches per epoch, then epoch 2
    assert stream.state_dict() == {"epoch": 1, "batches": 1, "num_examples": 10}

    resumed = ShardStream("t", FakeShard(10), num_examples=10, seed=0)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.state_dict() == stream.state_dict()
    assert [r["labels"] for r in resumed.next_rows(4)] == [4, 5, 6, 7]  # the batch after the checkpoint
    with pytest.raises(DataError, match="streamed 10 train rows"):
        ShardStream("t", FakeShard(12), num_examples=12, seed=0).load_state_dict(stream.state_dict())


def test_shard_stream_without_a_full_batch_fails_instead_of_spinning():
    with pytest.raises(DataError, match="no full batch"):
        ShardStream("t", FakeShard(3), num_examples=3, seed=0).next_rows(4)
