import json
from collections import Counter

import datasets
import pandas as pd
import pytest

from mtl_ray.config import DataConfig
from mtl_ray.data.sources import load_task_splits, subsample
from mtl_ray.errors import ConfigError, DataError

FIELDS = {"text_field": "review", "label_field": "verdict"}


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".json", ".parquet"])
def test_single_file_is_split_by_hash_with_field_renames(
    ext, tmp_path, data_cfg, make_task, write_rows, sentiment_rows
):
    rows = sentiment_rows(300)
    path = write_rows(tmp_path / f"reviews{ext}", rows)
    dd, names = load_task_splits(make_task(path, **FIELDS), data_cfg)
    assert names == ["neg", "neutral", "pos"]  # inferred, sorted
    assert list(dd) == ["train", "validation", "test"]
    assert all(dd[s].column_names == ["text", "label"] for s in dd)
    assert dd["train"].features["label"].dtype == "int64"
    assert sum(len(dd[s]) for s in dd) == 300
    # no text in two splits, labels mapped by name
    by_text = {r["review"]: r["verdict"] for r in rows}
    seen = set()
    for s in dd:
        texts = set(dd[s]["text"])
        assert not texts & seen
        seen |= texts
        assert all(names[y] == by_text[t] for t, y in zip(dd[s]["text"], dd[s]["label"]))
    assert 200 < len(dd["train"]) < 280


def test_same_file_same_splits_any_format(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    rows = sentiment_rows(200)
    a, _ = load_task_splits(make_task(write_rows(tmp_path / "a.csv", rows), **FIELDS), data_cfg)
    b, _ = load_task_splits(make_task(write_rows(tmp_path / "b.parquet", rows[::-1]), **FIELDS), data_cfg)
    for s in a:
        assert sorted(a[s]["text"]) == sorted(b[s]["text"])


def test_regression_and_pair_fields(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    path = write_rows(tmp_path / "r.jsonl", sentiment_rows(100))
    dd, names = load_task_splits(make_task(path, type="regression", text_field="review", label_field="score"), data_cfg)
    assert names is None and dd["train"].features["label"].dtype == "float32"
    pair = make_task(
        path, type="pair_classification", text_field="review", text_pair_field="answer", label_field="verdict"
    )
    dd, names = load_task_splits(pair, data_cfg)
    assert dd["test"].column_names == ["text", "text_pair", "label"]
    row = dd["train"][0]
    assert row["text_pair"] == "answer " + row["text"].split()[2]


def test_contrastive_has_text_only(tmp_path, data_cfg, make_task, write_rows):
    path = write_rows(tmp_path / "u.csv", [{"text": f"sentence {i}"} for i in range(100)])
    dd, names = load_task_splits(make_task(path, type="contrastive"), data_cfg)
    assert names is None and dd["train"].column_names == ["text"]


def test_folder_of_split_files(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    rows = sentiment_rows(90)
    write_rows(tmp_path / "d" / "train.csv", rows[:60])
    write_rows(tmp_path / "d" / "dev.csv", rows[60:75])
    write_rows(tmp_path / "d" / "test.csv", rows[75:])
    dd, _ = load_task_splits(make_task(tmp_path / "d", **FIELDS), data_cfg)
    assert {s: len(dd[s]) for s in dd} == {"train": 60, "validation": 15, "test": 15}
    assert dd["validation"]["text"] == [r["review"] for r in rows[60:75]]


def test_folder_with_train_only_is_split(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    write_rows(tmp_path / "d" / "train.jsonl", sentiment_rows(200))
    dd, _ = load_task_splits(make_task(tmp_path / "d", **FIELDS), data_cfg)
    assert sum(len(dd[s]) for s in dd) == 200 and min(len(dd[s]) for s in dd) > 5


def test_save_to_disk_datasetdict_and_dataset(tmp_path, data_cfg, make_task, sentiment_rows):
    df = pd.DataFrame(sentiment_rows(120))
    ddict = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(df[:80]),
            "validation": datasets.Dataset.from_pandas(df[80:100].reset_index(drop=True)),
            "test": datasets.Dataset.from_pandas(df[100:].reset_index(drop=True)),
        }
    )
    ddict.save_to_disk(str(tmp_path / "dd"))
    dd, names = load_task_splits(make_task(tmp_path / "dd", **FIELDS), data_cfg)
    assert {s: len(dd[s]) for s in dd} == {"train": 80, "validation": 20, "test": 20}
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path / "single"))
    dd2, _ = load_task_splits(make_task(tmp_path / "single", **FIELDS), data_cfg)
    assert sum(len(dd2[s]) for s in dd2) == 120


def test_folder_missing_validation_is_carved_from_train(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    rows = sentiment_rows(400)
    write_rows(tmp_path / "d" / "train.csv", rows[:350])
    write_rows(tmp_path / "d" / "test.csv", rows[350:])
    dd, _ = load_task_splits(make_task(tmp_path / "d", **FIELDS), data_cfg)
    assert len(dd["test"]) == 50
    assert 15 < len(dd["validation"]) < 60 and len(dd["train"]) + len(dd["validation"]) == 350


def test_declared_label_names_order_and_integer_labels(tmp_path, data_cfg, make_task, write_rows):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(150)]
    path = write_rows(tmp_path / "ints.jsonl", rows)
    dd, names = load_task_splits(make_task(path, label_names=["zero", "one", "two"]), data_cfg)
    assert names == ["zero", "one", "two"]
    assert all(int(t[1:]) % 3 == y for t, y in zip(dd["train"]["text"], dd["train"]["label"]))
    # inferred integer labels sort numerically, not as strings
    rows = [{"text": f"t{i}", "label": [2, 10, 1][i % 3]} for i in range(150)]
    _, names = load_task_splits(make_task(write_rows(tmp_path / "i2.csv", rows)), data_cfg)
    assert names == ["1", "2", "10"]
    rows = [{"text": f"t{i}", "label": ["b", "a"][i % 2]} for i in range(100)]
    dd, names = load_task_splits(make_task(write_rows(tmp_path / "n.csv", rows), label_names=["b", "a"]), data_cfg)
    assert names == ["b", "a"] and Counter(dd["train"]["label"]).keys() == {0, 1}


def test_subsampling_is_deterministic_and_nested(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    path = write_rows(tmp_path / "s.csv", sentiment_rows(400))
    t = make_task(path, max_train_examples=50, max_eval_examples=7, **FIELDS)
    a, _ = load_task_splits(t, data_cfg)
    b, _ = load_task_splits(t, data_cfg)
    assert len(a["train"]) == 50 and len(a["validation"]) == len(a["test"]) == 7
    assert a["train"]["text"] == b["train"]["text"]
    small, _ = load_task_splits(make_task(path, max_train_examples=20, **FIELDS), data_cfg)
    assert set(small["train"]["text"]) <= set(a["train"]["text"])
    other, _ = load_task_splits(
        make_task(path, max_train_examples=50, **FIELDS), DataConfig(cache_dir=data_cfg.cache_dir, split_seed=99)
    )
    assert other["train"]["text"] != a["train"]["text"]
    df = pd.DataFrame({"x": range(10)})
    assert subsample(df, 4, 0)["x"].tolist() == sorted(subsample(df, 4, 0)["x"].tolist())


# --------------------------------------------------------------------------- errors


def _error(task, cfg) -> str:
    with pytest.raises(DataError) as info:
        load_task_splits(task, cfg)
    return str(info.value)


def test_missing_column_lists_available(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    path = write_rows(tmp_path / "m.csv", sentiment_rows(20))
    msg = _error(make_task(path, text_field="body", label_field="verdict"), data_cfg)
    assert str(path) in msg and "'body'" in msg and "tasks.t.text_field" in msg
    assert "available columns: review, answer, verdict, score" in msg


def test_empty_file_and_header_only(tmp_path, data_cfg, make_task):
    (tmp_path / "e.csv").write_text("")
    assert _error(make_task(tmp_path / "e.csv"), data_cfg) == f"{tmp_path / 'e.csv'}: empty file"
    (tmp_path / "h.csv").write_text("text,label\n")
    assert _error(make_task(tmp_path / "h.csv"), data_cfg) == f"{tmp_path / 'h.csv'}: no data rows"
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert "empty file" in _error(make_task(tmp_path / "e.jsonl"), data_cfg)


def test_label_outside_declared_set_names_row(tmp_path, data_cfg, make_task, write_rows):
    rows = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    rows[16]["label"] = "maybe"
    path = write_rows(tmp_path / "l.csv", rows)
    msg = _error(make_task(path, label_names=["neg", "pos"]), data_cfg)
    assert msg == f"{path}: row 17, field 'label': label 'maybe' is not in label_names (neg, pos)"


def test_integer_label_out_of_range(tmp_path, data_cfg, make_task, write_rows):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(30)]
    rows[4]["label"] = 5
    path = write_rows(tmp_path / "l.jsonl", rows)
    msg = _error(make_task(path, label_names=["a", "b"]), data_cfg)
    assert msg == f"{path}: line 5, field 'label': label index 5 is outside 0..1 (label_names: a, b)"


def test_label_unseen_in_train_when_inferred(tmp_path, data_cfg, make_task, write_rows, sentiment_rows):
    rows = sentiment_rows(60)
    write_rows(tmp_path / "d" / "train.csv", rows[:40])
    test_rows = rows[40:]
    test_rows[2]["verdict"] = "sarcastic"
    write_rows(tmp_path / "d" / "validation.csv", rows[40:50])
    write_rows(tmp_path / "d" / "test.csv", test_rows)
    msg = _error(make_task(tmp_path / "d", **FIELDS), data_cfg)
    assert f"{tmp_path / 'd' / 'test.csv'}: row 3, field 'verdict': label 'sarcastic'" in msg
    assert "set label_names" in msg


@pytest.mark.parametrize("bad", ["abc", "nan", "", "inf"])
def test_regression_target_not_a_finite_number(bad, tmp_path, data_cfg, make_task, write_rows):
    rows = [{"text": f"t{i}", "y": i / 10} for i in range(30)]
    rows[9]["y"] = bad
    path = write_rows(tmp_path / "r.csv", rows)
    msg = _error(make_task(path, type="regression", label_field="y"), data_cfg)
    assert msg.startswith(f"{path}: row 10, field 'y': regression target must be a finite number")


def test_null_regression_target_in_jsonl(tmp_path, data_cfg, make_task, write_rows):
    rows = [{"text": f"t{i}", "y": i / 10} for i in range(30)]
    rows[0]["y"] = None
    msg = _error(make_task(write_rows(tmp_path / "r.jsonl", rows), type="regression", label_field="y"), data_cfg)
    assert ": line 1, field 'y': regression target must be a finite number, got null" in msg


@pytest.mark.parametrize(
    "ext,bad,expected",
    [(".csv", "   ", "empty text"), (".jsonl", None, "missing (null) text"), (".parquet", None, "missing (null) text")],
)
def test_empty_or_null_text(ext, bad, expected, tmp_path, data_cfg, make_task, write_rows):
    rows = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(30)]
    rows[21]["text"] = bad
    path = write_rows(tmp_path / f"x{ext}", rows)
    word = "line" if ext == ".jsonl" else "row"
    assert _error(make_task(path), data_cfg) == f"{path}: {word} 22, field 'text': {expected}"


def test_empty_pair_text_and_null_label(tmp_path, data_cfg, make_task, write_rows):
    rows = [{"q": f"t{i}", "p": f"p{i}", "label": "a" if i % 2 else "b"} for i in range(30)]
    rows[3]["p"] = ""
    path = write_rows(tmp_path / "p.csv", rows)
    t = make_task(path, type="pair_classification", text_field="q", text_pair_field="p")
    assert _error(t, data_cfg) == f"{path}: row 4, field 'p': empty text"
    rows[3]["p"] = "x"
    rows[5]["label"] = None
    path = write_rows(tmp_path / "p.jsonl", rows)
    t = make_task(path, type="pair_classification", text_field="q", text_pair_field="p")
    assert _error(t, data_cfg) == f"{path}: line 6, field 'label': missing (null) label"


def test_hf_folder_error_names_split_and_index(tmp_path, data_cfg, make_task):
    texts = [f"t{i}" for i in range(20)]
    texts[7] = ""
    ds = datasets.Dataset.from_dict({"text": texts, "label": ["a", "b"] * 10})
    datasets.DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    msg = _error(make_task(tmp_path / "dd"), data_cfg)
    assert msg == f"{tmp_path / 'dd'} [split train]: index 7, field 'text': empty text"


def test_unreadable_and_corrupt_files(tmp_path, data_cfg, make_task):
    (tmp_path / "c.parquet").write_bytes(b"PAR1 not really parquet")
    assert "not a readable Parquet file" in _error(make_task(tmp_path / "c.parquet"), data_cfg)
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label\n')
    assert _error(make_task(tmp_path / "c.jsonl"), data_cfg).startswith(
        f"{tmp_path / 'c.jsonl'}: line 2: not valid JSON"
    )
    (tmp_path / "c.csv").write_bytes(b"text,label\n\xff\xfe bad,1\n")
    assert "not valid UTF-8" in _error(make_task(tmp_path / "c.csv"), data_cfg)
    (tmp_path / "c.json").write_text(json.dumps([{"text": "a", "label": 1}, ["not", "an", "object"]]))
    assert (
        _error(make_task(tmp_path / "c.json"), data_cfg)
        == f"{tmp_path / 'c.json'}: row 2: expected a JSON object, got list"
    )
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_dict.json").write_text("{broken")
    assert "not a readable HF dataset folder" in _error(make_task(tmp_path / "ds"), data_cfg)


def test_missing_path_unsupported_extension_and_odd_folder(tmp_path, data_cfg, make_task):
    assert _error(make_task(tmp_path / "nope.csv"), data_cfg) == f"{tmp_path / 'nope.csv'}: no such file or folder"
    (tmp_path / "data.xlsx").write_bytes(b"x")
    msg = _error(make_task(tmp_path / "data.xlsx"), data_cfg)
    assert msg.startswith(f"{tmp_path / 'data.xlsx'}: unsupported file type '.xlsx'; use one of .csv")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("x")
    assert "found: notes.txt" in _error(make_task(tmp_path / "odd"), data_cfg)


def test_unknown_builtin_lists_valid(data_cfg, make_task):
    msg = _error(make_task("builtin:imdb"), data_cfg)
    assert "unknown built-in dataset 'imdb'" in msg and "builtin:rt_sentiment" in msg and "builtin:bbc_topic" in msg


def test_builtin_type_mismatch_and_label_names_on_regression(data_cfg, make_task, tmp_path):
    with pytest.raises(ConfigError, match="builtin:tweet_valence is a regression dataset, not classification"):
        load_task_splits(make_task("builtin:tweet_valence"), data_cfg)
    with pytest.raises(ConfigError, match="only classification tasks have label names"):
        load_task_splits(make_task(tmp_path / "x.csv", type="regression", label_names=["a"]), data_cfg)


def test_single_class_and_tiny_data(tmp_path, data_cfg, make_task, write_rows):
    path = write_rows(tmp_path / "one.csv", [{"text": f"t{i}", "label": "a"} for i in range(50)])
    assert "needs at least 2" in _error(make_task(path), data_cfg)
    path = write_rows(tmp_path / "tiny.csv", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(3)])
    assert "is empty" in _error(make_task(path), data_cfg)


def test_csv_row_with_more_fields_than_header(tmp_path, data_cfg, make_task):
    (tmp_path / "x.csv").write_text("text,label\nhello, world,pos\nbye,neg\n")
    assert "a row has more fields than the header" in _error(make_task(tmp_path / "x.csv"), data_cfg)


def test_fsspec_uri_sources(data_cfg, make_task):
    import fsspec

    rows = "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(100))
    with fsspec.open("memory://mtl-ray-test/d/data.csv", "w") as f:
        f.write(rows)
    with fsspec.open("memory://mtl-ray-test/s/train.csv.gz", "wb", compression="gzip") as f:
        f.write(rows.encode())
    dd, names = load_task_splits(make_task("memory://mtl-ray-test/d/data.csv"), data_cfg)
    assert names == ["a", "b"] and sum(len(dd[s]) for s in dd) == 100
    dd, _ = load_task_splits(make_task("memory://mtl-ray-test/s"), data_cfg)
    assert sum(len(dd[s]) for s in dd) == 100
