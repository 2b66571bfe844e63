import pickle

import datasets
import pytest
import torch

from mtl_ray.data.tokenize import collate, tokenize_split


def test_single_text_columns_and_no_padding(tiny_tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["good movie", "the best film of the year and more"], "label": [1, 0]})
    out = tokenize_split(ds, tiny_tokenizer, max_length=16, is_pair=False)
    assert out.column_names == ["input_ids", "attention_mask", "token_type_ids", "labels"]
    lengths = [len(x) for x in out["input_ids"]]
    assert lengths[0] < lengths[1] <= 16  # variable length: no padding
    assert out[0]["attention_mask"] == [1] * lengths[0]
    assert out[0]["token_type_ids"] == [0] * lengths[0]
    assert out["labels"] == [1, 0]
    assert isinstance(out[0]["input_ids"], list)


def test_pairs_get_segment_ids_and_truncate_longest_first(tiny_tokenizer):
    long = " ".join(["movie"] * 50)
    ds = datasets.Dataset.from_dict({"text": ["good film", "bad"], "text_pair": ["sad song", long], "label": [0, 1]})
    out = tokenize_split(ds, tiny_tokenizer, max_length=12, is_pair=True)
    first = out[0]
    sep = tiny_tokenizer.sep_token_id
    first_sep = first["input_ids"].index(sep)
    assert set(first["token_type_ids"][: first_sep + 1]) == {0}
    assert set(first["token_type_ids"][first_sep + 1 :]) == {1}
    assert len(out[1]["input_ids"]) == 12  # the long second text was cut, the short first one kept
    assert tiny_tokenizer.convert_ids_to_tokens(out[1]["input_ids"][1]) == "bad"


def test_unlabeled_has_no_labels(tiny_tokenizer):
    out = tokenize_split(datasets.Dataset.from_dict({"text": ["good", "bad"]}), tiny_tokenizer, 8, is_pair=False)
    assert "labels" not in out.column_names


def test_pair_without_column_raises(tiny_tokenizer):
    with pytest.raises(ValueError, match="text_pair"):
        tokenize_split(datasets.Dataset.from_dict({"text": ["a"]}), tiny_tokenizer, 8, is_pair=True)


def test_tokenize_worker_pickles(tiny_tokenizer):
    from mtl_ray.data.tokenize import _Tokenize

    fn = pickle.loads(pickle.dumps(_Tokenize(tiny_tokenizer, 8, False)))
    assert fn({"text": ["good"]})["input_ids"] == [tiny_tokenizer("good")["input_ids"]]
    assert pickle.loads(pickle.dumps(tokenize_split)) is tokenize_split


def test_collate_pads_to_longest_with_dtypes():
    feats = [
        {"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0], "labels": 1},
        {"input_ids": [2, 3], "attention_mask": [1, 1], "token_type_ids": [0, 1], "labels": 0},
    ]
    batch = collate(feats, pad_token_id=9)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 1, 0]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["token_type_ids"].dtype == torch.int64
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [1, 0]


def test_collate_float_labels_and_no_labels():
    feats = [
        {"input_ids": [1], "attention_mask": [1], "labels": 0.5},
        {"input_ids": [1, 2], "attention_mask": [1, 1], "labels": -1},
    ]
    batch = collate(feats, pad_token_id=0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, -1.0]
    assert batch["token_type_ids"].tolist() == [[0, 0], [0, 0]]  # absent → zeros
    assert "labels" not in collate([{"input_ids": [1], "attention_mask": [1]}], pad_token_id=0)
    assert collate(feats, 0)["input_ids"].shape == (2, 2)


def test_collate_on_tokenized_dataset(tiny_tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["good", "the best film ever"], "label": [0.25, 1.5]})
    rows = list(tokenize_split(ds, tiny_tokenizer, 16, is_pair=False))
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    assert batch["labels"].dtype == torch.float32
    assert batch["input_ids"][0, -1].item() == tiny_tokenizer.pad_token_id
