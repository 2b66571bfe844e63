"""The quality study end to end on tiny slices of the real data with the real MiniLM (what keeps the
script from rotting): every arm trains, the tables come out, a second call trains nothing."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "quality"))

import study  # noqa: E402

pytestmark = pytest.mark.real


def test_smoke_study_runs_every_arm_and_resumes(tmp_path, capsys):
    out = tmp_path / "q"
    arms = ["--arms", "all"]
    assert study.main(["--smoke", "--out", str(out), "--no-progress", *arms]) == 0
    first = capsys.readouterr().out
    assert "12 runs (8 arms × 1 seeds), 12 to train" in first

    results = sorted(out.glob("runs/**/result.json"))
    assert len(results) == 12  # 5 single-task runs + 7 multi-task arms
    for path in results:
        assert not (path.parent / "checkpoints").exists()  # deleted after the run
    hard = json.loads((out / "runs/hard_sharing/seed0/result.json").read_text())
    k0 = json.loads((out / "runs/depth_k0/seed0/result.json").read_text())
    assert set(hard["test"]) == {"bbc_topic", "rt_sentiment", "tweet_sentiment", "tweet_valence", "bbc_headline_match"}
    assert k0["params"] > 2.5 * hard["params"]  # five full towers vs one shared encoder

    rows = {r["arm"]: r for r in json.loads((out / "study.json").read_text())["rows"]}
    assert len(rows) == 8 and rows["single_task"]["layers_per_request"] == 30
    report = (out / "report.md").read_text()
    assert "(12/12 runs finished)" in report and "k=6, DWA weighting" in report
    assert (out / "quality.png").stat().st_size > 10_000

    # resumable: finished runs are not rerun; a lost result reruns only that run
    (out / "runs/dwa/seed0/result.json").unlink()
    assert study.main(["--smoke", "--out", str(out), "--no-progress", *arms]) == 0
    assert "12 runs (8 arms × 1 seeds), 1 to train" in capsys.readouterr().out
    assert (out / "runs/dwa/seed0/result.json").is_file()


def test_unknown_arm_and_bad_override_fail_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown arm"):
        study.main(["--smoke", "--out", str(tmp_path), "--arms", "nope", "--no-progress"])
    assert study.main(["--smoke", "--out", str(tmp_path), "--set", "train.lrr=1", "--no-progress"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
