"""Distillation from single-task teachers (``train.distill_from``): the KD loss against a hand
computation, the teacher cache (computed once, equal to a direct teacher forward, reused with zero
teacher runs), teacher discovery, the mismatch errors, and a tiny teachers → student run."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_config_dict

from mtl_ray.config import config_from_dict
from mtl_ray.data.tokenize import collate
from mtl_ray.errors import ConfigError
from mtl_ray.predictor import Predictor
from mtl_ray.training import distill
from mtl_ray.training.builders import build_trainer, load_specs_and_splits
from mtl_ray.training.checkpointing import save_training_checkpoint, saved_aggregate
from mtl_ray.training.distill import Distiller, find_teachers
from mtl_ray.training.evaluation import rows
from mtl_ray.training.run import setup_run, train


def cfg_dict(encoder, files, out, tasks=("sentiment", "score"), **train_kw):
    d = tiny_config_dict(encoder, files, out, **train_kw)
    d["tasks"] = {t: d["tasks"][t] for t in tasks}
    d["data"]["cache_dir"] = str(out.parent / "cache")  # one data cache shared by teachers and students
    return d


@pytest.fixture(scope="module")
def teachers(tiny_encoder_dir, tiny_task_files, tmp_path_factory):
    """Two single-task teachers trained with ``mtl-ray train``'s in-process path, in a study layout
    ``<root>/<task>/{summary.json, checkpoints/step-*}``."""
    root = tmp_path_factory.mktemp("kd") / "teachers"
    for task in ("sentiment", "score"):
        d = cfg_dict(tiny_encoder_dir, tiny_task_files, root / task, tasks=(task,), max_steps=6, eval_every=3)
        train(config_from_dict(d), progress=False)
    return root


def best(run):
    return distill.best_of_run(run).resolve()


def student_cfg(tiny_encoder_dir, tiny_task_files, teachers, out, tasks=("sentiment", "score"), **train_kw):
    d = cfg_dict(tiny_encoder_dir, tiny_task_files, out, tasks=tasks, **train_kw)
    d["data"]["cache_dir"] = str(teachers.parent / "cache")
    d["train"].setdefault("distill_from", str(teachers))
    return config_from_dict(d)


# --------------------------------------------------------------------------- the loss


@pytest.fixture
def eval_model(tiny_config):
    cfg = tiny_config(model={"head_dropout": 0.0})
    setup = setup_run(cfg)
    setup.model.eval()  # no dropout: the forward is a fixed function the hand computation can repeat
    return setup


def batch_of(setup, task, idx):
    return collate(rows(setup.data[task].splits["train"], idx), setup.tokenizer.pad_token_id)


def test_classification_kd_loss_equals_a_hand_computation(eval_model):
    setup, idx, T, alpha = eval_model, [5, 0, 7, 3], 2.0, 0.3
    n = setup.data["sentiment"].size("train")
    teacher = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32) * 3
    kd = Distiller(setup.model, {"sentiment": teacher}, temperature=T, alpha=alpha)
    batch = batch_of(setup, "sentiment", idx)
    loss = kd.loss("sentiment", batch, idx).item()

    with torch.no_grad():
        z = setup.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["sentiment"].numpy()
    z = z.astype(np.float64)
    y = batch["labels"].numpy()

    def log_softmax(x):
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    ce = -np.mean(log_softmax(z)[np.arange(len(y)), y])
    log_pt, log_ps = log_softmax(teacher[idx].astype(np.float64) / T), log_softmax(z / T)
    kl = np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=1))
    assert loss == pytest.approx((1 - alpha) * ce + alpha * T**2 * kl, rel=1e-5)
    parts = kd.pop_metrics()
    assert parts == pytest.approx({"loss/sentiment/hard": ce, "loss/sentiment/soft": T**2 * kl}, rel=1e-5)
    assert kd.pop_metrics() == {}  # reset after each step


def test_regression_kd_loss_equals_a_hand_computation(eval_model):
    setup, idx, alpha = eval_model, [2, 9, 4], 0.75
    n = setup.data["score"].size("train")
    teacher = np.linspace(-2, 2, n, dtype=np.float32)
    kd = Distiller(setup.model, {"score": teacher}, temperature=5.0, alpha=alpha)  # T plays no part here
    batch = batch_of(setup, "score", idx)
    loss = kd.loss("score", batch, idx).item()
    with torch.no_grad():
        pred = setup.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["score"].numpy()
    hard = np.mean((pred - batch["labels"].numpy()) ** 2)
    soft = np.mean((pred - teacher[idx]) ** 2)
    assert loss == pytest.approx((1 - alpha) * hard + alpha * soft, rel=1e-5)


# --------------------------------------------------------------------------- teachers and their cache


def test_teachers_are_found_in_a_study_layout_a_run_folder_and_a_checkpoint(teachers, tmp_path):
    sentiment, score = best(teachers / "sentiment"), best(teachers / "score")
    summary = json.loads((teachers / "sentiment" / "summary.json").read_text())
    assert str(sentiment) == summary["best_checkpoint"] and sentiment.parent.name == "checkpoints"
    # without summary.json (a run still going): the checkpoint with the best validation aggregate
    unfinished = tmp_path / "unfinished"
    shutil.copytree(teachers / "score", unfinished)
    (unfinished / "summary.json").unlink()
    aggregates = {p.name: saved_aggregate(p) for p in (unfinished / "checkpoints").iterdir()}
    assert len(aggregates) == 2 and len(set(aggregates.values())) == 2
    assert distill.best_of_run(unfinished).name == max(aggregates, key=aggregates.get)
    assert find_teachers(str(teachers)) == [score, sentiment]  # <dir>/<task>/checkpoints/..., by name
    assert find_teachers([str(sentiment), str(teachers / "score")]) == [sentiment, score]
    assert find_teachers([str(teachers), str(sentiment)]) == [score, sentiment]  # each once


def test_teacher_outputs_are_computed_once_equal_a_direct_forward_and_are_reused(
    teachers, tiny_encoder_dir, tiny_task_files, tmp_path, monkeypatch
):
    loads = []
    real = distill.model_from_checkpoint
    monkeypatch.setattr(distill, "model_from_checkpoint", lambda ckpt: loads.append(ckpt.path) or real(ckpt))

    cfg = student_cfg(
        tiny_encoder_dir, tiny_task_files, teachers, tmp_path / "s1", tasks=("sentiment", "score", "match")
    )
    shutil.rmtree(cfg.data.resolved_cache_dir() / "teachers", ignore_errors=True)  # other tests may have filled it
    setup = setup_run(cfg)
    first = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id).distill
    assert sorted(loads) == sorted([best(teachers / "sentiment"), best(teachers / "score")])
    assert first.teacher_batches == 2 * -(-setup.data["sentiment"].size("train") // cfg.train.eval_batch_size)
    assert sorted(first.targets) == ["score", "sentiment"]  # "match" has no teacher: hard labels only
    files = sorted((cfg.data.resolved_cache_dir() / "teachers").glob("*/*.npy"))
    assert sorted(f.name for f in files) == ["score.npy", "sentiment.npy"]
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["teacher"] == str(best(teachers / meta["task"])) and meta["max_length"] == 32

    # the cached values equal the teacher's own predictions on the raw texts (Predictor: its tokenizer)
    _, raw = load_specs_and_splits(cfg)
    for task in ("sentiment", "score"):
        predicted = Predictor.from_checkpoint(best(teachers / task), device="cpu").predict(raw[task]["train"]["text"])
        if task == "sentiment":
            probs = torch.tensor(first.targets[task]).softmax(-1).numpy()
            want = np.array([[p["probabilities"][c] for c in ("neg", "pos")] for p in predicted[task]])
            np.testing.assert_allclose(probs, want, atol=1e-5)
        else:
            np.testing.assert_allclose(first.targets[task], [p["value"] for p in predicted[task]], atol=1e-5)

    # a later run (another seed) reads the files: no teacher loaded, none run
    loads.clear()
    cfg2 = student_cfg(tiny_encoder_dir, tiny_task_files, teachers, tmp_path / "s2", seed=3)
    setup2 = setup_run(cfg2)
    second = build_trainer(cfg2, setup2.model, setup2.data, setup2.tokenizer.pad_token_id).distill
    assert loads == [] and second.teacher_batches == 0
    for task in ("sentiment", "score"):
        np.testing.assert_array_equal(second.targets[task], first.targets[task])


def test_a_task_without_teacher_trains_on_hard_labels_and_is_logged(
    teachers, tiny_encoder_dir, tiny_task_files, tmp_path, capsys
):
    d = cfg_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "s", tasks=("sentiment", "match"), max_steps=6)
    d["tasks"]["unsup"] = {"type": "contrastive", "source": str(tiny_task_files["sentiment"]), "text_field": "sentence"}
    d["data"]["cache_dir"] = str(teachers.parent / "cache")
    d["train"]["distill_from"] = str(teachers)
    cfg = config_from_dict(d)
    setup = setup_run(cfg)
    trainer = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
    log = capsys.readouterr().out
    assert "distill: match not distilled (no teacher: hard labels only)" in log
    assert "distill: unsup not distilled (unsupervised: its own loss only)" in log
    assert f"distill: sentiment <- {best(teachers / 'sentiment')} (outputs " in log
    keys = set().union(*(trainer.train_step() for _ in range(6)))
    assert {"loss/match", "loss/sentiment", "loss/sentiment/soft", "loss/sentiment/hard", "loss/unsup"} <= keys
    assert not {"loss/match/soft", "loss/unsup/soft"} & keys


# --------------------------------------------------------------------------- bad input


def build(cfg):
    setup = setup_run(cfg)
    return build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)


def fake_teacher(cfg, path, tokenizer=None):
    """A checkpoint of ``cfg``'s (untrained) model, saved with ``tokenizer`` (default: its own)."""
    setup = setup_run(cfg)
    return save_training_checkpoint(path, cfg, setup.model, tokenizer or setup.tokenizer, None, {"aggregate": 0.5})


def test_two_teachers_of_one_task_fail_naming_both(teachers, tiny_encoder_dir, tiny_task_files, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(best(teachers / "sentiment"), copy)
    cfg = student_cfg(
        tiny_encoder_dir, tiny_task_files, teachers, tmp_path / "s", distill_from=[str(teachers), str(copy)]
    )
    with pytest.raises(ConfigError) as exc:
        build(cfg)
    assert str(exc.value) == (
        f"train.distill_from: task 'sentiment' is held by two teachers, {best(teachers / 'sentiment')} and "
        f"{copy.resolve()}; give one teacher per task"
    )


def test_label_type_and_tokenizer_mismatches_fail_before_training(
    teachers, tiny_encoder_dir, tiny_task_files, tmp_path
):
    base = cfg_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "s", tasks=("sentiment",))
    base["data"]["cache_dir"] = str(teachers.parent / "cache")
    teacher = best(teachers / "sentiment")

    def build_error(teacher, sentiment: dict | None = None) -> str:
        """The ConfigError of a student of ``base`` (its task "sentiment" replaced by ``sentiment``) that
        distills from ``teacher``."""
        d = json.loads(json.dumps(base))
        if sentiment is not None:
            d["tasks"]["sentiment"] = sentiment
        d["train"]["distill_from"] = str(teacher)
        with pytest.raises(ConfigError) as exc:
            build(config_from_dict(d))
        return str(exc.value)

    assert build_error(teacher, {**base["tasks"]["sentiment"], "label_names": ["pos", "neg"]}) == (
        f"train.distill_from: task 'sentiment': teacher {teacher} has labels ['neg', 'pos'], the student has "
        "['pos', 'neg'] (the same classes in another order)"
    )

    # a student task "sentiment" that is a regression
    regression = {"type": "regression", "source": str(tiny_task_files["score"]), "max_length": 32}
    assert build_error(teacher, regression) == (
        f"train.distill_from: task 'sentiment': teacher {teacher} trained it as classification, this config has "
        "regression"
    )

    # a teacher whose tokenizer numbers two words the other way round
    from transformers import BertTokenizerFast

    vocab = list(BertTokenizerFast.from_pretrained(str(tiny_encoder_dir)).get_vocab().items())
    swapped = {t: i for t, i in vocab}
    swapped["good"], swapped["bad"] = swapped["bad"], swapped["good"]
    other = BertTokenizerFast(vocab=swapped, do_lower_case=True)
    wrong = fake_teacher(config_from_dict(base), tmp_path / "wrong-tokenizer", tokenizer=other)
    assert build_error(wrong) == (
        f"train.distill_from: task 'sentiment': teacher {wrong.resolve()} has a different tokenizer than "
        f"model.encoder {str(tiny_encoder_dir)!r} (vocabularies of {len(vocab)} tokens that differ in 2 entries); "
        "it would read other token ids than the student"
    )


def test_config_errors_name_the_key(tiny_encoder_dir, tiny_task_files, tmp_path):
    def cfg(**train_kw):
        return config_from_dict(cfg_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "s", **train_kw))

    with pytest.raises(ConfigError, match=r"^train.distill_alpha: must be in \[0, 1\], got 1.5$"):
        cfg(distill_alpha=1.5)
    with pytest.raises(ConfigError, match=r"^train.distill_temperature: must be > 0, got 0.0$"):
        cfg(distill_temperature=0.0)
    with pytest.raises(ConfigError, match=r"^train.distill_from: not supported with train.freeze_shared"):
        cfg(distill_from="x", freeze_shared=True)
    d = cfg_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "s", distill_from="x")
    d["ray"] = {"streaming": True}
    with pytest.raises(ConfigError, match=r"^train.distill_from: not supported with ray.streaming"):
        config_from_dict(d)
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as exc:
        build(cfg(distill_from=str(missing)))
    assert str(exc.value) == f"train.distill_from: {missing} does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as exc:
        build(cfg(distill_from=str(tmp_path / "empty")))
    assert str(exc.value) == (
        f"train.distill_from: {tmp_path / 'empty'} holds no mtl-ray checkpoint (give a checkpoint, a run folder, "
        "or a folder of those one level deep)"
    )


# --------------------------------------------------------------------------- end to end


def test_student_distilled_from_a_folder_of_teachers_logs_the_soft_loss(
    teachers, tiny_encoder_dir, tiny_task_files, tmp_path
):
    alpha = 0.4
    cfg = student_cfg(
        tiny_encoder_dir, tiny_task_files, teachers, tmp_path / "student", max_steps=8, log_every=2, distill_alpha=alpha
    )
    summary = train(cfg, progress=False)
    assert summary["steps"] == 8 and summary["best_checkpoint"]
    logs = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "texts_per_s" in r]
    assert len(logs) == 4
    for task in ("sentiment", "score"):
        seen = [r for r in logs if f"loss/{task}" in r]
        assert seen, task
        for r in seen:  # each logged total is the mix of the logged hard and soft losses
            mixed = (1 - alpha) * r[f"loss/{task}/hard"] + alpha * r[f"loss/{task}/soft"]
            assert r[f"loss/{task}"] == pytest.approx(mixed, rel=1e-6)
            assert r[f"loss/{task}/soft"] > 0


def _distributed_worker(rank: int, cfg: dict, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        kd = build(config_from_dict(cfg)).distill
        result = {"teacher_batches": kd.teacher_batches, "sum": {t: float(v.sum()) for t, v in kd.targets.items()}}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_under_data_parallelism_rank_0_computes_and_the_other_rank_reads(
    teachers, tiny_encoder_dir, tiny_task_files, tmp_path
):
    d = cfg_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "s", distill_from=str(teachers))
    d["data"]["cache_dir"] = str(tmp_path / "own-cache")  # empty: nothing cached yet
    out = tmp_path / "result"
    torch.multiprocessing.spawn(_distributed_worker, args=(d, str(tmp_path / "rdv"), str(out)), nprocs=2)
    results = [json.loads((tmp_path / f"result.{r}").read_text()) for r in (0, 1)]
    assert results[0]["teacher_batches"] > 0 and results[1]["teacher_batches"] == 0
    assert results[0]["sum"] == results[1]["sum"] and sorted(results[0]["sum"]) == ["score", "sentiment"]


def test_workers_get_absolute_teacher_paths(tiny_encoder_dir, tiny_task_files, tmp_path, monkeypatch):
    from mtl_ray.training.driver import absolute_paths

    monkeypatch.chdir(tmp_path)
    for given, want in (("t/a", str(tmp_path / "t/a")), (["t/a", "b"], [str(tmp_path / "t/a"), str(tmp_path / "b")])):
        cfg = config_from_dict(cfg_dict(tiny_encoder_dir, tiny_task_files, tmp_path / "s", distill_from=given))
        assert absolute_paths(cfg).train.distill_from == want


def test_distillation_with_mixed_batches_is_refused_naming_both_keys():
    from mtl_ray.config import config_from_dict
    from mtl_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.distill_from: not supported with train.mixed_batches"):
        config_from_dict(
            {
                "tasks": {"a": {"type": "classification", "source": "a.csv"}},
                "train": {"distill_from": "teachers", "mixed_batches": True},
            }
        )
