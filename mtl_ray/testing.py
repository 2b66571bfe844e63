"""Tiny in-process encoder + tokenizer for tests and smoke runs (no download, seconds to build).

`make_tiny_encoder(dir)` writes a real Hugging Face model folder (config.json, model.safetensors,
tokenizer files) so tests exercise the same loading code as a real encoder.
"""

from __future__ import annotations

import string
from pathlib import Path

TINY_WORDS = (
    "the a an and or not is was are be to of in on for with good bad great terrible movie film "
    "news sport music tech market game team vote government phone film plot actor happy sad love hate "
    "best worst boring fun win lose stock price election player song album app data"
).split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = specials + chars + pieces + TINY_WORDS
    return list(dict.fromkeys(vocab))


def make_tiny_encoder(
    out_dir: str | Path,
    *,
    num_layers: int = 4,
    hidden_size: int = 32,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random-init BERT (vocab ≈ 170) with its WordPiece tokenizer to ``out_dir``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_position)
    tok.save_pretrained(out)
    cfg = BertConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(seed)
    hf_logging.disable_progress_bar()
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    return out
