"""Loading encoders (built-in, local folder, saved config) and the layer-by-layer forward."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from transformers import AutoConfig, AutoModel

from mtl_ray.errors import ConfigError
from mtl_ray.model.encoder import (
    attention_mask_4d,
    check_encoder,
    embed,
    encoder_config_dict,
    encoder_from_config,
    load_encoder,
    run_layers,
)

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_layer_by_layer_equals_the_full_forward(tiny_encoder, batch):
    with torch.no_grad():
        full = tiny_encoder(**batch).last_hidden_state
        hidden = embed(tiny_encoder, batch["input_ids"], batch["token_type_ids"])
        mask = attention_mask_4d(tiny_encoder.config, hidden, batch["attention_mask"])
        mine = run_layers(tiny_encoder.encoder.layer, hidden, mask)
    assert mask is not None and mask.shape == (4, 1, hidden.shape[1], hidden.shape[1])
    assert (full - mine).abs().max() <= 1e-6


def test_load_local_folder(tiny_dir):
    encoder, tokenizer = load_encoder(str(tiny_dir))
    assert getattr(encoder, "pooler", None) is None  # mtl-ray pools itself
    assert encoder.config.num_hidden_layers == 4
    assert tokenizer("good movie")["input_ids"][0] == tokenizer.cls_token_id


def test_builtin_encoder_comes_from_the_assets_module(tiny_dir, tmp_path, monkeypatch):
    seen = []

    def encoder_dir(cache_dir):
        seen.append(cache_dir)
        return tiny_dir

    monkeypatch.setitem(sys.modules, "mtl_ray.data.assets", types.SimpleNamespace(encoder_dir=encoder_dir))
    encoder, _ = load_encoder("builtin:all-MiniLM-L6-v2", tmp_path)
    assert seen == [tmp_path] and encoder.config.hidden_size == 32


def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown built-in encoder 'builtin:bert'; valid: builtin:all-MiniLM-L6-v2"):
        load_encoder("builtin:bert")
    with pytest.raises(ConfigError, match="model.encoder: folder not found"):
        load_encoder(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not a Hugging Face model folder \\(no config.json\\)"):
        load_encoder(str(tmp_path))


@pytest.mark.parametrize("model_type, extra", [("bert", {}), ("roberta", {}), ("electra", {"embedding_size": 16})])
def test_bert_style_architectures_pass_the_check(model_type, extra):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **extra)
    check_encoder(AutoModel.from_config(config), model_type)  # no error


def test_deberta_is_refused_because_its_layers_need_relative_positions():
    torch.manual_seed(0)
    encoder = AutoModel.from_config(AutoConfig.for_model("deberta-v2", **TINY))
    with pytest.raises(ConfigError, match=r"\(DebertaV2Model\) is not supported: its layers need inputs"):
        check_encoder(encoder, "tiny-deberta")


def test_models_without_bert_structure_are_refused():
    encoder = AutoModel.from_config(
        AutoConfig.for_model("distilbert", vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    )
    with pytest.raises(ConfigError, match=r"\(DistilBertModel\) is not supported: .*`\.encoder\.layer`"):
        check_encoder(encoder, "distil")


def test_encoder_from_saved_config_rebuilds_the_architecture(tiny_encoder):
    saved = json.loads(json.dumps(encoder_config_dict(tiny_encoder.config)))
    rebuilt = encoder_from_config(saved)
    assert type(rebuilt) is type(tiny_encoder)
    assert getattr(rebuilt, "pooler", None) is None
    assert rebuilt.state_dict().keys() == tiny_encoder.state_dict().keys()
    assert encoder_config_dict(rebuilt.config) == saved
    with pytest.raises(ConfigError, match="no model_type"):
        encoder_from_config({"hidden_size": 32})


def test_weights_missing_from_the_folder_are_an_error_not_a_random_layer(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "five_layers"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 5  # the weights file has 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"lacks pretrained weights for \['encoder\.layer\.4\."):
        load_encoder(str(folder))
