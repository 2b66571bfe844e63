"""MultiTaskModel: the sharing-depth cut, parameter accounting, equivalence with the uncut encoder."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from mtl_ray.errors import ConfigError
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.model.pooling import mean_pool
from mtl_ray.tasks.contrastive import info_nce

L = 4  # layers of the tiny encoder


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference_outputs(encoder, model: MultiTaskModel, batch) -> dict[str, torch.Tensor]:
    """Plain HF forward of the uncut encoder + mean pooling + each task's own head weights."""
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, batch["attention_mask"])
        return {t: model.heads[t](pooled) for t in model.task_names}


def model_inputs(batch):
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


@pytest.mark.parametrize("k", range(L + 1))
def test_parameter_counts_follow_the_formula(k, tiny_encoder, specs):
    embeddings = n_params(tiny_encoder.embeddings)  # E
    per_layer = n_params(tiny_encoder.encoder.layer[0])  # P
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=k)
    counts = model.parameter_counts()
    heads = sum(counts["heads"].values())
    n_tasks = len(specs)
    assert counts["shared"] == embeddings + k * per_layer
    assert counts["task_layers"] == {t: (L - k) * per_layer for t in specs}
    assert counts["total"] == embeddings + k * per_layer + n_tasks * (L - k) * per_layer + heads
    # heads: C*(H+1) for classification, H+1 for regression, none for contrastive
    h = model.hidden_size
    assert counts["heads"] == {"topic": 3 * (h + 1), "match": 2 * (h + 1), "valence": h + 1, "simcse": 0}


def test_extremes_k_L_and_k_0(tiny_encoder, specs):
    """k = L is one encoder for all tasks; k = 0 is one full encoder per task (plus heads)."""
    full_encoder = n_params(tiny_encoder)  # no pooler: embeddings + L layers
    hard = MultiTaskModel(tiny_encoder, specs, sharing_depth=None)
    heads = sum(hard.parameter_counts()["heads"].values())
    assert hard.sharing_depth == L
    assert hard.parameter_counts()["total"] == full_encoder + heads
    split = MultiTaskModel(tiny_encoder, specs, sharing_depth=0)
    embeddings = n_params(tiny_encoder.embeddings)
    assert split.parameter_counts()["total"] == embeddings + len(specs) * (full_encoder - embeddings) + heads


def test_hard_sharing_equals_automodel_plus_mean_pool_plus_head(tiny_encoder, specs, batch):
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=L).eval()
    ref = reference_outputs(tiny_encoder, model, batch)
    with torch.no_grad():
        out = model(*model_inputs(batch))
    assert set(out) == set(specs)
    w, b = model.heads["topic"].proj.weight, model.heads["topic"].proj.bias
    with torch.no_grad():
        pooled = mean_pool(tiny_encoder(**batch).last_hidden_state, batch["attention_mask"])
        assert (out["topic"] - F.linear(pooled, w, b)).abs().max() < 1e-6
    for t in specs:
        assert (out[t] - ref[t]).abs().max() < 1e-6, t


@pytest.mark.parametrize("k", range(L + 1))
def test_cut_model_is_the_uncut_encoder_function(k, tiny_encoder, specs, batch):
    """With task layers still equal to their pretrained clones, every task sees the full encoder."""
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=k).eval()
    ref = reference_outputs(tiny_encoder, model, batch)
    with torch.no_grad():
        out = model(*model_inputs(batch))
    for t in specs:
        assert out[t].shape == ref[t].shape
        assert (out[t] - ref[t]).abs().max() < 1e-6, (k, t)


@pytest.mark.parametrize("k", [0, 2, L])
def test_shared_part_runs_once_for_all_tasks(k, tiny_encoder, specs, batch):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=k).eval()
    calls: dict[str, int] = {}

    def counter(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1

        return hook

    model.shared.embeddings.register_forward_hook(counter("embeddings"))
    for i, layer in enumerate(model.shared.layers):
        layer.register_forward_hook(counter(f"shared{i}"))
    for t in specs:
        for j, layer in enumerate(model.task_layers[t]):
            layer.register_forward_hook(counter(f"{t}{j}"))
    with torch.no_grad():
        model(*model_inputs(batch))
    expected = {"embeddings": 1} | {f"shared{i}": 1 for i in range(k)}
    expected |= {f"{t}{j}": 1 for t in specs for j in range(L - k)}
    assert calls == expected


@pytest.mark.parametrize("k", [0, 2, L])
def test_forward_from_shared_equals_forward(k, tiny_encoder, specs, batch):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=k).eval()
    input_ids, attention_mask, token_type_ids = model_inputs(batch)
    with torch.no_grad():
        direct = model(input_ids, attention_mask, token_type_ids)
        shared = model.encode_shared(input_ids, attention_mask, token_type_ids)
        assert shared.shape == (*input_ids.shape, model.hidden_size)
        via = model.forward_from_shared(shared, attention_mask, model.task_names)
        for t in specs:
            assert torch.equal(direct[t], via[t])
            pieces = model.head(t, model.pool(model.task_hidden(t, shared, attention_mask), attention_mask))
            assert torch.equal(direct[t], pieces)


def test_tasks_selects_outputs_and_rejects_unknown(tiny_encoder, specs, batch):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=2).eval()
    with torch.no_grad():
        out = model(*model_inputs(batch), tasks=["valence", "topic"])
    assert list(out) == ["valence", "topic"]
    assert out["valence"].shape == (4,) and out["topic"].shape == (4, 3)
    with pytest.raises(ValueError, match="unknown tasks \\['nope'\\]; this model has: topic, match, valence, simcse"):
        model(*model_inputs(batch), tasks=["nope"])


@pytest.mark.parametrize("k", [-1, 5])
def test_bad_sharing_depth_is_a_config_error(k, tiny_encoder, specs):
    with pytest.raises(ConfigError, match=r"model\.sharing_depth: .* must be in \[0, 4\]"):
        MultiTaskModel(tiny_encoder, specs, sharing_depth=k)


def test_other_config_errors(tiny_encoder, specs):
    with pytest.raises(ConfigError, match="model.pooling: unknown pooling 'max'; valid: mean, cls"):
        MultiTaskModel(tiny_encoder, specs, pooling="max")
    with pytest.raises(ConfigError, match="at least one task"):
        MultiTaskModel(tiny_encoder, {})
    with pytest.raises(ConfigError, match="tasks.other: spec is named 'topic'"):
        MultiTaskModel(tiny_encoder, {"other": specs["topic"]})
    with pytest.raises(ConfigError, match="model.contrastive_temperature"):
        MultiTaskModel(tiny_encoder, specs, contrastive_temperature=0.0)


def test_task_layers_are_independent_clones_of_the_pretrained_layers(tiny_encoder, specs):
    pretrained = {k: v.clone() for k, v in tiny_encoder.encoder.layer[3].state_dict().items()}
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=3)
    for t in specs:
        state = model.task_layers[t][0].state_dict()
        assert all(torch.equal(state[k], pretrained[k]) for k in pretrained)
    a, b = model.task_layers["topic"][0], model.task_layers["match"][0]
    assert a.attention.self.query.weight.data_ptr() != b.attention.self.query.weight.data_ptr()
    with torch.no_grad():
        a.attention.self.query.weight.add_(1.0)
    assert torch.equal(b.attention.self.query.weight, pretrained["attention.self.query.weight"])


def test_state_dict_names_are_stable_and_pooler_free(tiny_encoder, specs):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=2)
    keys = list(model.state_dict())
    assert not any("pooler" in k for k in keys)
    assert all(k.startswith(("shared.", "task_layers.", "heads.")) for k in keys)
    assert "shared.embeddings.word_embeddings.weight" in keys
    assert "shared.layers.1.output.dense.weight" in keys and "shared.layers.2.output.dense.weight" not in keys
    assert "task_layers.topic.0.attention.self.query.weight" in keys  # layer 3 of the encoder
    assert "task_layers.simcse.1.output.LayerNorm.bias" in keys
    assert {"heads.topic.proj.weight", "heads.valence.proj.bias"} <= set(keys)
    assert not any(k.startswith("heads.simcse") for k in keys)


def test_metadata_is_json_safe_and_rebuilds_the_model(tiny_encoder, specs, batch):
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=1, pooling="cls").eval()
    assert (model.num_layers, model.sharing_depth, model.hidden_size) == (4, 1, 32)
    assert model.task_names == ["topic", "match", "valence", "simcse"]
    text = json.dumps(model.encoder_config)
    assert json.loads(text) == model.encoder_config  # a checkpoint's meta.json compares equal
    assert "_name_or_path" not in model.encoder_config and "transformers_version" not in model.encoder_config
    torch.manual_seed(1)  # different random init, then the saved weights
    rebuilt = MultiTaskModel.from_encoder_config(json.loads(text), model.specs, sharing_depth=1, pooling="cls")
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        a, b = model(*model_inputs(batch)), rebuilt(*model_inputs(batch))
    for t in specs:
        assert torch.equal(a[t], b[t])
    assert rebuilt.encoder_config == model.encoder_config


def test_whole_model_starts_in_train_mode(tiny_encoder, specs):
    assert not tiny_encoder.training  # from_pretrained hands out eval-mode modules
    model = MultiTaskModel(tiny_encoder, specs)
    assert all(m.training for m in model.modules())


def test_contrastive_temperature_reaches_the_loss(tiny_encoder, specs, batch):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=2, contrastive_temperature=0.2).eval()
    assert model.specs["simcse"].temperature == 0.2
    assert model.specs["topic"].temperature is None
    rows: list[int] = []
    model.shared.embeddings.register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    with torch.no_grad():
        loss = model.loss("simcse", batch)
        z = model(*model_inputs(batch), tasks=["simcse"])["simcse"]
    assert rows == [8, 4]  # the contrastive batch is duplicated into one forward of 2B rows
    # eval mode: both views are identical, so the loss is InfoNCE of z against itself at tau = 0.2
    assert torch.allclose(loss, info_nce(z, z, 0.2), atol=1e-6)


def test_loss_is_the_type_loss_of_the_forward_output(tiny_encoder, specs, batch):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=2).eval()
    labels = torch.tensor([0, 2, 1, 1])
    values = torch.tensor([0.5, -1.0, 2.0, 0.0])
    with torch.no_grad():
        out = model(*model_inputs(batch), tasks=["topic", "valence"])
        assert torch.allclose(model.loss("topic", {**batch, "labels": labels}), F.cross_entropy(out["topic"], labels))
        assert torch.allclose(model.loss("valence", {**batch, "labels": values}), F.mse_loss(out["valence"], values))


def test_loss_trains_only_the_shared_part_and_that_tasks_parameters(tiny_encoder, specs, batch):
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=2)
    loss = model.loss("topic", {**batch, "labels": torch.tensor([0, 2, 1, 1])})
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    with_grad = {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"shared.embeddings", "shared.layers", "task_layers.topic", "heads.topic"}


@pytest.mark.parametrize("name", ["a.b", "keys"])
def test_task_names_must_be_usable_as_parameter_names(name, tiny_encoder, specs):
    spec = dataclasses.replace(specs["topic"], name=name)
    with pytest.raises(ConfigError, match="tasks"):
        MultiTaskModel(tiny_encoder, {name: spec})
