"""The quality study end to end on tiny slices of the real data with the real MiniLM (what keeps the
script from rotting): every recipe trains once — the balanced sampler, mixed batches, distillation
from the single-task runs, MLM, an early-stopped run and stage-2 tops on it — the tables come out,
and a second call trains nothing. (The other samplers' arms differ from these only in a config value
the unit tests cover; ``python bench/quality/study.py --smoke`` runs every default arm by hand.)"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "quality"))

import study  # noqa: E402

pytestmark = pytest.mark.real

TASKS = {"bbc_topic", "tweet_valence", "bbc_headline_match"}
ARMS = "hard_balanced,hard_mixed,hard_kd,hard_mlm,hard_mlm_stage0,tops_k4"


@pytest.mark.timeout(1500)  # 10 trainings of the real encoder (~3 min on 2 idle cores)
def test_smoke_study_runs_every_recipe_and_resumes(tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["--smoke", "--out", str(out), "--no-progress", "--arms", ARMS]
    assert study.main(argv) == 0
    first = capsys.readouterr().out
    # + the arms they depend on: single_task (3 runs, the teachers), mlm_stage0 and hard_es (stage 1)
    assert "11 runs (9 arms × 1 seeds), 11 to train" in first
    assert "waiting for" not in first  # dependencies ran first, in the same process

    runs = out / "runs"
    results = {p.parent.relative_to(runs).as_posix(): json.loads(p.read_text()) for p in runs.glob("**/result.json")}
    assert len(results) == 11
    kept = {k for k in results if (runs / k / "checkpoints").exists()}
    assert kept == {f"single_task/seed0/{t}" for t in TASKS} | {"hard_es/seed0", "mlm_stage0/seed0"}

    hard, tops = results["hard_balanced/seed0"], results["tops_k4/seed0"]
    assert set(hard["test"]) == TASKS and set(results["hard_mlm/seed0"]["test"]) == TASKS  # mlm is not scored
    assert 1.25 * hard["params"] < tops["params"] < 1.5 * hard["params"]  # + three towers of 2 layers
    assert results["hard_es/seed0"]["protocol"] == "converged" and results["hard_es/seed0"]["best_step"] is not None
    config = (runs / "tops_k4/seed0/config.yaml").read_text()
    assert "hard_es/seed0/checkpoints" in config and "freeze_shared: true" in config
    assert "loss/bbc_topic/soft" in (runs / "hard_kd/seed0/metrics.jsonl").read_text()
    assert "loss/mlm" in (runs / "hard_mlm/seed0/metrics.jsonl").read_text()
    assert (
        results["mlm_stage0/seed0"]["test"] == {}
        and "mlm_stage0/seed0/checkpoints" in (runs / "hard_mlm_stage0/seed0/config.yaml").read_text()
    )

    rows = {r["arm"]: r for r in json.loads((out / "study.json").read_text())["rows"]}
    assert len(rows) == 8 and "mlm_stage0" not in rows  # nothing to score in the MLM-only stage 0
    assert rows["single_task"]["layers_per_request"] == 18
    assert rows["tops_k4"]["layers_per_request"] == 4 + 3 * 2
    report = (out / "report.md").read_text()
    assert "(11/11 runs finished)" in report and "mixed-task batches" in report
    assert (out / "quality.png").stat().st_size > 10_000

    # resumable: finished runs are not rerun; a lost result reruns only that run
    (runs / "hard_mixed/seed0/result.json").unlink()
    assert study.main(argv) == 0
    assert "11 runs (9 arms × 1 seeds), 1 to train" in capsys.readouterr().out
    assert (runs / "hard_mixed/seed0/result.json").is_file()


def test_unknown_arm_and_bad_override_fail_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown arm"):
        study.main(["--smoke", "--out", str(tmp_path), "--arms", "nope", "--no-progress"])
    assert study.main(["--smoke", "--out", str(tmp_path), "--set", "train.lrr=1", "--no-progress"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
