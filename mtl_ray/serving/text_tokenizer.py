"""The ingress's tokenizer: the checkpoint's ``tokenizer.json`` run by the ``tokenizers`` library
directly (no transformers, no torch), giving exactly the ids the Predictor's fast tokenizer gives.

A Hugging Face fast tokenizer called with ``truncation=True, max_length=m`` sets the Rust tokenizer's
truncation to (m, "longest_first", stride 0, right) and adds the special tokens; so does this. One
configured copy per ``max_length`` (the served tasks have a handful), so concurrent requests never
reconfigure a tokenizer another thread is using.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from mtl_ray.errors import CheckpointError
from mtl_ray.serving.wire import TokenBatch

TOKENIZER_FILE = "tokenizer.json"


def _pad_token(tokenizer_dir: Path) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = tokenizer_dir / name
        if f.is_file():
            pad = json.loads(f.read_text(encoding="utf-8")).get("pad_token")
            if isinstance(pad, dict):  # AddedToken serialised as {"content": ...}
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return None


class CheckpointTokenizer:
    """``tokenize(inputs, is_pair, max_length) -> (TokenBatch, truncated flags)``."""

    def __init__(self, tokenizer: Tokenizer, pad_token_id: int):
        self._base = tokenizer
        self._base.no_padding()  # the encoder pads, once, over everything it batches
        self._base.no_truncation()
        self.pad_token_id = pad_token_id
        self._by_length: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path) -> CheckpointTokenizer:
        """From a checkpoint's ``tokenizer/`` folder (what ``save_pretrained`` wrote)."""
        root = Path(tokenizer_dir)
        path = root / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{root}: no {TOKENIZER_FILE} (the ingress needs a fast tokenizer's file)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise CheckpointError(f"{path}: not a readable tokenizer file ({exc})") from None
        pad = _pad_token(root)
        pad_id = tokenizer.token_to_id(pad) if pad is not None else None
        if pad_id is None:
            padding = tokenizer.padding
            pad_id = padding.get("pad_id") if padding else None
        if pad_id is None:
            raise CheckpointError(f"{root}: no pad token found (special_tokens_map.json / tokenizer_config.json)")
        return cls(tokenizer, int(pad_id))

    def _for_length(self, max_length: int) -> Tokenizer:
        with self._lock:
            tok = self._by_length.get(max_length)
            if tok is None:
                tok = Tokenizer.from_str(self._base.to_str())
                tok.no_padding()
                tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
                self._by_length[max_length] = tok
            return tok

    def tokenize(
        self, inputs: Sequence[str] | Sequence[Sequence[str]], is_pair: bool, max_length: int
    ) -> tuple[TokenBatch, list[bool]]:
        """Unpadded ids of ``inputs`` (texts, or [text, text_pair] pairs), and which lost tokens to ``max_length``."""
        tok = self._for_length(max_length)
        batch = [(p[0], p[1]) for p in inputs] if is_pair else list(inputs)
        encodings = tok.encode_batch(batch, add_special_tokens=True)
        ids = [list(e.ids) for e in encodings]
        types = [list(e.type_ids) for e in encodings]
        truncated = [bool(e.overflowing) for e in encodings]
        return TokenBatch(ids, types, self.pad_token_id), truncated
