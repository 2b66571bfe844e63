"""Checkpoint directories: bit-exact round trips, tamper detection, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mtl_ray.checkpoint as ckpt_mod
from mtl_ray.checkpoint import (
    flatten_state,
    load_checkpoint,
    load_meta,
    save_checkpoint,
    unflatten_state,
    verify_checkpoint,
)
from mtl_ray.errors import CheckpointError


class FakeTokenizer:
    """Anything with ``save_pretrained(dir)``; the real HF one writes a few JSON / txt files."""

    def save_pretrained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tokenizer.json").write_text('{"model": "wordpiece"}')
        (Path(directory) / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")


def _model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(6, 4)
    return {
        "encoder.weight": w,
        "head.weight": w,  # tied: shares storage
        "view.t": torch.randn(4, 6).t(),  # non-contiguous
        "half": torch.randn(3).to(torch.bfloat16),
        "ids": torch.arange(5),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 2),
    }


def _trained_adamw() -> tuple[nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(1)
    lin = nn.Linear(3, 2)
    opt = torch.optim.AdamW(
        [{"params": [lin.weight], "weight_decay": 0.1}, {"params": [lin.bias], "weight_decay": 0.0}], lr=0.01
    )
    for i in range(2):
        opt.zero_grad()
        lin(torch.full((4, 3), float(i + 1))).pow(2).sum().backward()
        opt.step()
    return lin, opt


def _save(path: Path, **kwargs) -> Path:
    defaults = {"model_state": {"w": torch.ones(2, 2)}, "meta": {"config": {"x": 1}}}
    return save_checkpoint(path, **{**defaults, **kwargs})


def test_round_trip_is_bit_exact(tmp_path):
    state = _model_state()
    meta = {"config": {"lr": 1e-3, "tasks": ["a", "b"]}, "labels": {"a": ["neg", "pos"]}}
    training = {
        "step": 7,
        "sampler": {"state": str(2**127 + 5), "tasks": ["a", "b"]},
        "pairs": (1, ("x", None), [2.5, True]),
        "by_int": {0: torch.ones(2), 3: {"nested": torch.zeros(1, dtype=torch.int64)}},
        "odd": {"__mtl_tensor__": "not a tag", "k/with/slash": float("inf"), "nan": float("nan")},
    }
    out = save_checkpoint(
        tmp_path / "ck",
        model_state=state,
        meta=meta,
        training_state=training,
        tokenizer=FakeTokenizer(),
        extra_files={"metrics.json": b"{}", "plots/loss.txt": b"1 2 3"},
    )
    assert out == (tmp_path / "ck").absolute()
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "manifest.json",
        "meta.json",
        "metrics.json",
        "model.safetensors",
        "plots/loss.txt",
        "tokenizer/tokenizer.json",
        "tokenizer/vocab.txt",
        "training_state.json",
        "training_state.safetensors",
    ]
    loaded = load_checkpoint(out)
    assert sorted(loaded.model_state) == sorted(state)
    for key, t in state.items():
        assert loaded.model_state[key].dtype == t.dtype
        assert torch.equal(loaded.model_state[key], t), key
    assert loaded.meta == meta
    assert loaded.tokenizer_dir == out / "tokenizer"
    ts = loaded.training_state
    assert ts["step"] == 7 and ts["sampler"] == training["sampler"]
    assert ts["pairs"] == (1, ("x", None), [2.5, True])  # tuples stay tuples
    assert set(ts["by_int"]) == {0, 3}  # int keys stay ints
    assert torch.equal(ts["by_int"][3]["nested"], training["by_int"][3]["nested"])
    assert ts["odd"]["__mtl_tensor__"] == "not a tag"
    assert ts["odd"]["k/with/slash"] == math.inf and math.isnan(ts["odd"]["nan"])
    assert json.loads((out / "training_state.json").read_text())  # strict JSON reader is happy
    no_training = load_checkpoint(out, load_training_state=False)
    assert no_training.training_state is None


def test_flatten_unflatten_keeps_optimizer_structure():
    _, opt = _trained_adamw()
    sd = opt.state_dict()
    skeleton, tensors = flatten_state({"optimizer": sd})
    json.dumps(skeleton, allow_nan=False)
    assert "optimizer/state/0/exp_avg" in tensors
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)["optimizer"]
    assert back["param_groups"] == sd["param_groups"]  # betas tuple, params lists, flags
    assert set(back["state"]) == {0, 1}


def test_adamw_state_resumes_identically(tmp_path):
    lin, opt = _trained_adamw()
    save_checkpoint(
        tmp_path / "ck",
        model_state=lin.state_dict(),
        meta={},
        training_state={"optimizer": opt.state_dict(), "step": 2},
    )
    loaded = load_checkpoint(tmp_path / "ck")
    lin2 = nn.Linear(3, 2)
    lin2.load_state_dict(loaded.model_state)
    opt2 = torch.optim.AdamW(
        [{"params": [lin2.weight], "weight_decay": 0.1}, {"params": [lin2.bias], "weight_decay": 0.0}], lr=0.01
    )
    opt2.load_state_dict(loaded.training_state["optimizer"])
    for key, value in opt.state[lin.weight].items():
        assert torch.equal(opt2.state[lin2.weight][key], value), key
    for model, optimizer in ((lin, opt), (lin2, opt2)):
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.linspace(-1, 1, 12).reshape(4, 3)).pow(2).sum().backward()
            optimizer.step()
    assert torch.equal(lin.weight, lin2.weight) and torch.equal(lin.bias, lin2.bias)


def test_tampered_byte_is_named(tmp_path):
    out = _save(tmp_path / "ck", model_state=_model_state())
    path = out / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: sha256 mismatch \(expected [0-9a-f]{64}, got") as e:
        load_checkpoint(out)
    assert "modified or truncated" in str(e.value)


def test_truncated_file_is_named(tmp_path):
    out = _save(tmp_path / "ck", model_state=_model_state())
    path = out / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model.safetensors: size mismatch \(expected \d+ bytes, got \d+\)"):
        verify_checkpoint(out)
    # without verification the corrupt file still fails with a CheckpointError, not a crash
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(out, verify=False)


def test_missing_manifest_missing_file_and_extra_weights(tmp_path):
    out = _save(tmp_path / "a", training_state={"x": torch.ones(1)})
    (out / "training_state.safetensors").unlink()
    with pytest.raises(CheckpointError, match="training_state.safetensors: listed in manifest.json but missing"):
        load_checkpoint(out)

    out = _save(tmp_path / "b")
    (out / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_checkpoint(out)

    out = _save(tmp_path / "c")
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: present but not listed"):
        verify_checkpoint(out)

    out = _save(tmp_path / "d", tokenizer=FakeTokenizer())
    (out / "tokenizer" / "special_tokens_map.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer/special_tokens_map.json: present but not listed"):
        verify_checkpoint(out)

    out = _save(tmp_path / "e")
    (out / ".metadata.json").write_text("{}")  # storage layers may add such files: ignored
    verify_checkpoint(out)

    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")


def test_unparsable_json_is_named(tmp_path):
    out = _save(tmp_path / "ck")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        load_checkpoint(out)


def test_load_meta_checks_only_meta(tmp_path):
    out = _save(tmp_path / "ck", meta={"specs": {"a": 1}})
    (out / "model.safetensors").write_bytes(b"garbage")  # weights are not read
    assert load_meta(out) == {"specs": {"a": 1}}
    meta_file = out / "meta.json"
    meta_file.write_text(meta_file.read_text().replace("1", "2"))  # same size, other content
    with pytest.raises(CheckpointError, match="meta.json: sha256 mismatch"):
        load_meta(out)


def test_overwrite_replaces_atomically_and_refuses_non_checkpoints(tmp_path):
    target = tmp_path / "ck"
    _save(target, meta={"v": 1})
    _save(target, meta={"v": 2})
    assert load_checkpoint(target).meta == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no .tmp-/.old- leftovers

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        _save(run_dir)
    assert (run_dir / "notes.txt").read_text() == "precious"


def test_crash_mid_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt_mod, "_sha256", boom)  # fails while building the manifest, after the weights
    with pytest.raises(RuntimeError, match="disk full"):
        _save(tmp_path / "ck", training_state={"x": torch.ones(3)}, tokenizer=FakeTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_crash_mid_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    _save(target, meta={"v": 1})
    monkeypatch.setattr(ckpt_mod, "_write_bytes", lambda *a, **k: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError, match="EIO"):
        _save(target, meta={"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(target).meta == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_unstorable_values_fail_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="training state: rng/gen: cannot store a set"):
        _save(tmp_path / "ck", training_state={"rng": {"gen": {1, 2}}})
    with pytest.raises(CheckpointError, match="meta.json: not JSON-serializable"):
        _save(tmp_path / "ck2", meta={"bad": object()})
    with pytest.raises(CheckpointError, match="collides"):
        _save(tmp_path / "ck3", extra_files={"meta.json": b"{}"})
    with pytest.raises(CheckpointError, match="plain relative path"):
        _save(tmp_path / "ck4", extra_files={"../escape.txt": b""})
    assert list(tmp_path.iterdir()) == []
