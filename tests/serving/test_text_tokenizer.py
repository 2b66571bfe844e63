"""The ingress's tokenizers-only tokenizer gives the Predictor's (transformers) ids exactly."""

from __future__ import annotations

import pytest
from serving_helpers import PAIRS, TEXTS, hf_tokenizer

from mtl_ray.errors import CheckpointError
from mtl_ray.serving.parts import read_checkpoint_info, tokenize
from mtl_ray.serving.text_tokenizer import CheckpointTokenizer

LONG = ["great film " * 40, "the plot " * 3]


@pytest.mark.parametrize("max_length", [8, 32, 48])
@pytest.mark.parametrize("inputs", [TEXTS + LONG, PAIRS + [LONG]], ids=["texts", "pairs"])
def test_ids_types_and_truncation_equal_the_hf_tokenizer(ckpt_dir, inputs, max_length):
    is_pair = isinstance(inputs[0], list)
    lean = CheckpointTokenizer.from_dir(read_checkpoint_info(ckpt_dir).tokenizer_dir)
    got, got_cut = lean.tokenize(inputs, is_pair, max_length)
    ref, ref_cut = tokenize(hf_tokenizer(ckpt_dir), inputs, is_pair, max_length)
    assert got == ref  # input_ids, token_type_ids, pad_token_id
    assert got_cut == ref_cut and any(got_cut)  # LONG is cut at every max_length here
    assert max(len(ids) for ids in got.input_ids) <= max_length


def test_a_checkpoint_without_tokenizer_json_fails_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        CheckpointTokenizer.from_dir(tmp_path)
