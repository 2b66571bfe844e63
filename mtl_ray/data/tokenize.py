"""Batched tokenization of a standardized split and ``collate`` with dynamic padding.

Both are module-level functions (the ``map`` worker is a small picklable class), so Ray workers and
``datasets`` fingerprinting can ship them.
"""

from __future__ import annotations

from typing import Any

from mtl_ray.data._quiet import quiet_datasets

TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


class _Tokenize:
    """``batch -> {input_ids, attention_mask, token_type_ids[, labels]}`` (no padding)."""

    def __init__(self, tokenizer: Any, max_length: int, is_pair: bool) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.is_pair = is_pair

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pair = batch["text_pair"] if self.is_pair else None
        # pairs: "longest_first" trims the longer text token by token until both fit max_length
        enc = self.tokenizer(
            batch["text"],
            pair,
            truncation="longest_first",
            max_length=self.max_length,
            padding=False,
            return_token_type_ids=True,
        )
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        types = enc.get("token_type_ids")
        out["token_type_ids"] = types if types is not None else [[0] * len(ids) for ids in enc["input_ids"]]
        if "label" in batch:
            out["labels"] = batch["label"]
        return out


def tokenize_split(ds: Any, tokenizer: Any, max_length: int, is_pair: bool) -> Any:
    """Tokenize a standardized ``datasets.Dataset`` (columns ``text`` [, ``text_pair``] [, ``label``]).

    Returns a Dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (zeros where the
    tokenizer has none; 1 on the second text of a pair for BERT-style tokenizers) and ``labels``
    (copied from ``label`` when present), as python lists of variable length (no padding).
    """
    if is_pair and "text_pair" not in ds.column_names:
        raise ValueError(f"tokenize_split(is_pair=True) needs a 'text_pair' column; columns: {ds.column_names}")
    fn = _Tokenize(tokenizer, max_length, is_pair)
    with quiet_datasets():
        out = ds.map(fn, batched=True, batch_size=1000, remove_columns=ds.column_names, keep_in_memory=True)
    return out.with_format(None)


def collate(features: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Pad a list of tokenized examples to the longest one.

    Returns ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` (0 on padding) and
    ``token_type_ids`` (0 on padding), all int64 ``(B, T)``; ``labels`` ``(B,)`` int64 for integer
    labels, float32 for float labels, absent when the examples have none.
    """
    import torch

    if not features:
        raise ValueError("collate: empty batch")
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, Any] = {}
    for key, pad in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        rows = []
        for f in features:
            seq = list(f[key]) if key in f else [0] * len(f["input_ids"])
            rows.append(seq + [pad] * (longest - len(seq)))
        batch[key] = torch.tensor(rows, dtype=torch.int64)  # (B, T)
    if "labels" in features[0]:
        labels = torch.stack([torch.as_tensor(f["labels"]) for f in features])  # (B,)
        batch["labels"] = labels.to(torch.float32) if labels.is_floating_point() else labels.to(torch.int64)
    return batch
