"""`mtl-ray add-task --no-ray`: a new task trained on a base checkpoint's frozen trunk; the result
merged back with `--head` (Predictor, eval) equals the head checkpoint's own answers, the base's
other tasks are untouched bit for bit, and every bad input is one clear error with nothing written."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config_dict, write_tiny_tasks, write_tone_csv

from mtl_ray.add_task import add_task
from mtl_ray.checkpoint import load_meta, verify_checkpoint
from mtl_ray.cli import main
from mtl_ray.config import config_from_dict
from mtl_ray.errors import CheckpointError
from mtl_ray.evaluate import evaluate_checkpoint
from mtl_ray.predictor import Predictor
from mtl_ray.serving.checkpoint_info import read_checkpoint_info, shared_fingerprint
from mtl_ray.training.run import train

TEXTS = ["good fun film", "the worst boring plot", "news about the team"]
TRAIN = {"max_steps": 12, "batch_size": 8, "lr": 3e-3, "eval_every": 6, "log_every": 6, "device": "cpu"}


@pytest.fixture(scope="module")
def base(tiny_encoder_dir, tmp_path_factory):
    """A trained base (sentiment, score, match) at k = L, with its run and data files."""
    root = tmp_path_factory.mktemp("add-task")
    files = write_tiny_tasks(root / "data")
    d = tiny_config_dict(tiny_encoder_dir, files, root / "base", max_steps=6)
    summary = train(config_from_dict(d), progress=False)
    tone = write_tone_csv(root / "data" / "tone.csv")
    return {"root": root, "ckpt": Path(summary["best_checkpoint"]), "tone": tone, "files": files}


def task_yaml(path: Path, tasks: dict, **sections) -> Path:
    path.write_text(yaml.safe_dump({"tasks": tasks, "train": dict(TRAIN), **sections}))
    return path


def tone_task(base) -> dict:
    return {
        "tone": {"type": "classification", "source": str(base["tone"]), "text_field": "body", "label_field": "tone"}
    }


def test_add_task_trains_a_head_that_merges_back_onto_the_base(base, tmp_path):
    cfg = task_yaml(tmp_path / "tone.yaml", tone_task(base), data={"cache_dir": str(tmp_path / "cache")})
    summary = add_task(base["ckpt"], cfg, tmp_path / "run", use_ray=False, progress=False)
    head = Path(summary["head_checkpoint"])
    assert head == (tmp_path / "run" / "best").absolute()
    verify_checkpoint(head)  # an ordinary verified checkpoint ...
    meta = load_meta(head)
    assert list(meta["specs"]) == ["tone"] and meta["config"]["model"]["init_from"] == str(base["ckpt"].absolute())
    assert meta["config"]["train"]["freeze_shared"] is True
    # ... whose shared weights are the base's, as Serve's check computes it
    assert shared_fingerprint(read_checkpoint_info(head)) == shared_fingerprint(read_checkpoint_info(base["ckpt"]))
    assert summary["test"]["tone"]["accuracy"] > 0.34  # learned something beyond chance (3 balanced classes)

    merged = Predictor.from_checkpoint(base["ckpt"], device="cpu", heads={"tone": head})
    alone = Predictor.from_checkpoint(head, device="cpu")
    plain = Predictor.from_checkpoint(base["ckpt"], device="cpu")
    got = merged.predict(texts=TEXTS)
    assert sorted(got) == ["score", "sentiment", "tone"]
    for a, b in zip(got["tone"], alone.predict(texts=TEXTS)["tone"]):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    base_answers = plain.predict(texts=TEXTS)
    assert {t: got[t] for t in base_answers} == base_answers  # the other tasks bit for bit

    report = evaluate_checkpoint(base["ckpt"], "test", heads={"tone": str(head)})
    assert sorted(report.metrics) == ["match", "score", "sentiment", "tone"]
    assert report.metrics["tone"] == pytest.approx(summary["test"]["tone"], abs=1e-6)


def test_cli_add_task_then_predict_and_eval_with_head(base, tmp_path, capsys):
    cfg = task_yaml(tmp_path / "tone.yaml", tone_task(base), data={"cache_dir": str(tmp_path / "cache")})
    out = tmp_path / "cli-run"
    args = ["add-task", "--checkpoint", str(base["ckpt"]), "--config", str(cfg), "-o", str(out), "--no-ray"]
    assert main([*args, "--no-progress", "train.max_steps=6"]) == 0
    printed = capsys.readouterr().out
    assert f"--set heads.tone.checkpoint={(out / 'best').absolute()}" in printed
    head = f"tone={out / 'best'}"
    assert (
        main(["predict", "--checkpoint", str(base["ckpt"]), "--head", head, "--text", "good", "--device", "cpu"]) == 0
    )
    assert '"tone"' in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(base["ckpt"]), "--head", head, "--json"]) == 0
    assert '"tone"' in capsys.readouterr().out


def test_replace_trains_a_new_head_for_an_existing_task(base, tmp_path):
    sentiment = tiny_config_dict(Path("unused"), base["files"], tmp_path)["tasks"]["sentiment"]
    cfg = task_yaml(tmp_path / "s.yaml", {"sentiment": sentiment}, data={"cache_dir": str(tmp_path / "cache")})
    with pytest.raises(Exception, match="already has a task 'sentiment'; pass --replace"):
        add_task(base["ckpt"], cfg, tmp_path / "run", use_ray=False, progress=False)
    assert not (tmp_path / "run").exists()
    summary = add_task(base["ckpt"], cfg, tmp_path / "run", replace=True, use_ray=False, progress=False)
    merged = Predictor.from_checkpoint(base["ckpt"], device="cpu", heads={"sentiment": summary["head_checkpoint"]})
    plain = Predictor.from_checkpoint(base["ckpt"], device="cpu")
    new, old = merged.predict(texts=TEXTS), plain.predict(texts=TEXTS)
    assert new["score"] == old["score"] and new["sentiment"] != old["sentiment"]


def add_task_error(capsys, checkpoint: Path, cfg: Path, out: Path, *flags: str) -> str:
    """The stderr of an in-process `mtl-ray add-task --no-ray` that must exit 2."""
    assert main(["add-task", "--checkpoint", str(checkpoint), "-c", str(cfg), "-o", str(out), "--no-ray", *flags]) == 2
    return capsys.readouterr().err


BAD_YAML = [
    ({"model": {"sharing_depth": 2}}, "model.sharing_depth: comes from the base checkpoint"),
    ({"model": {"encoder": "builtin:all-MiniLM-L6-v2"}}, "model.encoder: comes from the base checkpoint"),
    ({"model": {"pooling": "cls"}}, "model.pooling: comes from the base checkpoint"),
    ({"train": {**TRAIN, "freeze_shared": False}}, "train.freeze_shared: add-task always trains on the frozen trunk"),
    ({"tune": {}}, "tune: not allowed in"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_YAML)
def test_a_yaml_that_sets_what_the_base_owns_is_refused(base, tmp_path, capsys, extra, message):
    cfg = task_yaml(tmp_path / "bad.yaml", tone_task(base), **extra)
    out = tmp_path / "run"
    err = add_task_error(capsys, base["ckpt"], cfg, out)
    assert message in err and not out.exists()


def test_bad_base_and_bad_task_data_are_refused(base, tmp_path, capsys):
    cfg = task_yaml(tmp_path / "tone.yaml", tone_task(base), data={"cache_dir": str(tmp_path / "cache")})
    err = add_task_error(capsys, tmp_path / "nope", cfg, tmp_path / "run")
    assert "no checkpoint directory there" in err
    tampered = Path(shutil.copytree(base["ckpt"], tmp_path / "tampered"))
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-3] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    err = add_task_error(capsys, tampered, cfg, tmp_path / "run")
    assert "model.safetensors: sha256 mismatch" in err and "the checkpoint was modified or truncated" in err
    # a task whose data lacks the column, or has a label outside its declared classes
    no_column = {"tone": {**tone_task(base)["tone"], "text_field": "text"}}
    err = add_task_error(capsys, base["ckpt"], task_yaml(tmp_path / "c.yaml", no_column), tmp_path / "run")
    assert "missing column 'text' (set by tasks.tone.text_field)" in err
    bad_label = {"tone": {**tone_task(base)["tone"], "label_names": ["pos", "neg"]}}
    err = add_task_error(capsys, base["ckpt"], task_yaml(tmp_path / "l.yaml", bad_label), tmp_path / "run")
    assert "label 'flat' is not in label_names (pos, neg)" in err and "tone.csv: row" in err
    assert not (tmp_path / "run" / "best").exists()


def test_a_contrastive_task_on_a_k_equals_L_base_is_refused(base, tmp_path, capsys):
    unsup = {"unsup": {"type": "contrastive", "source": str(base["tone"]), "text_field": "body"}}
    cfg = task_yaml(tmp_path / "u.yaml", unsup)
    err = add_task_error(capsys, base["ckpt"], cfg, tmp_path / "run", "--no-progress")
    assert "tasks.unsup: a contrastive task at sharing depth k = L (4) has no weights of its own" in err


def test_an_interrupted_add_task_leaves_no_checkpoint_that_looks_complete(base, tmp_path, monkeypatch):
    cfg = task_yaml(tmp_path / "tone.yaml", tone_task(base), data={"cache_dir": str(tmp_path / "cache")})
    out = tmp_path / "run"
    add_task(base["ckpt"], cfg, out, use_ray=False, progress=False, overrides=["train.max_steps=6"])
    assert (out / "best" / "manifest.json").is_file()  # a previous run's export ...

    import mtl_ray.training.loop as loop

    real_step = loop.MultiTaskTrainer.train_step

    def step_then_die(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(loop.MultiTaskTrainer, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        add_task(base["ckpt"], cfg, out, use_ray=False, progress=False)
    assert not (out / "best").exists()  # ... is gone once a new run starts; nothing replaced it
    monkeypatch.setattr(loop.MultiTaskTrainer, "train_step", real_step)

    import mtl_ray.checkpoint as checkpoint

    def die_while_writing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_install", die_while_writing)  # killed during the export
    with pytest.raises(KeyboardInterrupt):
        add_task(base["ckpt"], cfg, out, use_ray=False, progress=False, overrides=["train.max_steps=6"])
    assert not (out / "best").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_the_head_equals_the_base_trunk_at_k_below_L(tiny_encoder_dir, tmp_path):
    files = write_tiny_tasks(tmp_path / "data")
    d = tiny_config_dict(tiny_encoder_dir, files, tmp_path / "base", max_steps=3)
    d["model"]["sharing_depth"] = 2
    base_ckpt = Path(train(config_from_dict(d), progress=False)["best_checkpoint"])
    tone = write_tone_csv(tmp_path / "tone.csv")
    task = {"tone": {"type": "classification", "source": str(tone), "text_field": "body", "label_field": "tone"}}
    cfg = task_yaml(tmp_path / "t.yaml", task, data={"cache_dir": str(tmp_path / "cache")})
    head = Path(add_task(base_ckpt, cfg, tmp_path / "run", use_ray=False, progress=False)["head_checkpoint"])
    assert shared_fingerprint(read_checkpoint_info(head)) == shared_fingerprint(read_checkpoint_info(base_ckpt))
    merged = Predictor.from_checkpoint(base_ckpt, device="cpu", heads={"tone": head})
    alone = Predictor.from_checkpoint(head, device="cpu")
    with torch.no_grad():
        a = merged.predict(texts=TEXTS, tasks=["tone"])["tone"]
        b = alone.predict(texts=TEXTS, tasks=["tone"])["tone"]
    assert [x["label"] for x in a] == [x["label"] for x in b]
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)


def test_a_head_from_another_trunk_is_refused_by_head(base, tmp_path):
    d = tiny_config_dict(Path(load_meta(base["ckpt"])["config"]["model"]["encoder"]), base["files"], tmp_path / "o")
    d["train"].update(max_steps=2, eval_every=2)
    other = Path(train(config_from_dict(d), progress=False)["best_checkpoint"])  # its own trunk, trained apart
    with pytest.raises(Exception, match="different shared encoder weights"):
        Predictor.from_checkpoint(base["ckpt"], device="cpu", heads={"sentiment": other})


def test_head_arguments_and_replace_checks(base, tmp_path):
    from mtl_ray.added_heads import parse_head_args
    from mtl_ray.errors import ConfigError

    assert parse_head_args(["a=x/best", " b = y "]) == {"a": "x/best", "b": "y"}
    with pytest.raises(ConfigError, match="--head 'a': expected TASK=PATH"):
        parse_head_args(["a"])
    with pytest.raises(ConfigError, match="--head a: given twice"):
        parse_head_args(["a=x", "a=y"])
    with pytest.raises(CheckpointError, match="has no task 'tone'; it has: match, score, sentiment"):
        Predictor.from_checkpoint(base["ckpt"], device="cpu", heads={"tone": base["ckpt"]})
    with pytest.raises(ConfigError, match="tasks.score.type: 'classification', the base's 'score' has 'regression'"):
        add_task(
            base["ckpt"],
            task_yaml(tmp_path / "s.yaml", {"score": tone_task(base)["tone"]}),
            tmp_path / "r",
            replace=True,
            use_ray=False,
        )
    with pytest.raises(ConfigError, match="--replace, but .* has no task 'tone' to replace"):
        add_task(
            base["ckpt"], task_yaml(tmp_path / "t.yaml", tone_task(base)), tmp_path / "r", replace=True, use_ray=False
        )
    assert not (tmp_path / "r").exists()


def test_the_job_entrypoint_reports_a_bad_base_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("add_task_job", Path(__file__).parents[1] / "jobs" / "add_task.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    cfg = task_yaml(tmp_path / "t.yaml", {"t": {"source": "x.csv"}})
    assert job.main(["--checkpoint", str(tmp_path / "nope"), "-c", str(cfg), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no checkpoint directory there"


def test_a_bad_storage_path_is_refused_before_training(base, tmp_path, unwritable_storage, capsys):
    from mtl_ray.errors import StorageError

    cfg = task_yaml(tmp_path / "tone.yaml", tone_task(base))
    with pytest.raises(StorageError, match=rf"storage_path '{unwritable_storage}' is not writable \(Not a directory\)"):
        add_task(base["ckpt"], cfg, tmp_path / "run", storage_path=str(unwritable_storage))
    args = ["add-task", "--checkpoint", str(base["ckpt"]), "-c", str(cfg), "-o", str(tmp_path / "run")]
    assert main([*args, "--no-ray", "--storage-path", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == "error: --storage-path needs Ray; drop --no-ray"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["uri", "inside-out"])
def test_the_run_folder_gets_the_head_and_the_summary(tiny_encoder_dir, tmp_path, monkeypatch, where):
    """After a Ray run: a storage outside OUT gets ``<run folder>/best`` (a copy of OUT/best) and the
    add-task summary; the default storage (OUT/ray) only the summary, since OUT/best is next to it."""
    import json
    import tempfile

    from mtl_ray.add_task import _record_in_run_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    out = tmp_path / "run"
    cfg = config_from_dict(tiny_config_dict(tiny_encoder_dir, write_tiny_tasks(tmp_path / "data"), out))
    export = out / "best"
    export.mkdir(parents=True)
    (export / "model.safetensors").write_bytes(b"weights")
    storage = f"file://{tmp_path / 'bucket'}" if where == "uri" else None
    location = f"{storage}/run-1" if storage else str(out / "ray" / "run-1")
    staged = tmp_path / "node-tmp" / "mtl-ray-runs" / "run-1" if storage else out / "ray" / "run-1"
    staged.mkdir(parents=True)
    summary = {"output_dir": location, "head_checkpoint": str(export), "added_tasks": ["tone"]}
    _record_in_run_folder(summary, cfg, storage, export)
    folder = tmp_path / "bucket" / "run-1" if storage else out / "ray" / "run-1"
    written = json.loads((folder / "summary.json").read_text())
    assert written["head_checkpoint"] == str(export) and written["added_tasks"] == ["tone"]
    if storage:
        assert (folder / "best" / "model.safetensors").read_bytes() == b"weights"
        assert written["run_head_checkpoint"] == f"{storage}/run-1/best"
    else:
        assert not (folder / "best").exists() and "run_head_checkpoint" not in written
