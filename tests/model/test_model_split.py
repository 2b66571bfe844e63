"""Serving pieces: SharedEncoder and TaskTower built alone from the saved config + their state slices."""

from __future__ import annotations

import pytest
import torch

from mtl_ray.model.multitask import MultiTaskModel, SharedEncoder, TaskTower, split_state_dict

L = 4


@pytest.mark.parametrize("k", [0, 2, L])
def test_pieces_built_alone_reproduce_the_model(k, tiny_encoder, specs, batch):
    torch.manual_seed(0)
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=k, pooling="mean").eval()
    shared_state, tower_states = split_state_dict(model.state_dict(), model.task_names)
    assert set(tower_states) == set(specs)
    torch.manual_seed(1)  # pieces start from a different random init
    encoder = SharedEncoder.from_encoder_config(model.encoder_config, k)
    encoder.load_state_dict(shared_state, strict=True)
    encoder.eval()
    ids, am, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    with torch.no_grad():
        expected = model(ids, am, tt)
        hidden = encoder(ids, am, tt)  # what an encoder deployment sends on (B, T, H)
        for t, spec in model.specs.items():
            tower = TaskTower.from_encoder_config(model.encoder_config, spec, k, pooling="mean")
            tower.load_state_dict(tower_states[t], strict=True)
            tower.eval()
            assert len(tower.layers) == L - k
            assert torch.equal(tower(hidden, am), expected[t]), t
            if k == L:  # hard sharing: only the pooled vector (B, H) needs to cross
                pooled = model.pool(hidden, am)
                assert torch.equal(tower.forward_pooled(pooled), expected[t])


def test_model_views_share_parameters_and_state_keys(tiny_encoder, specs, batch):
    model = MultiTaskModel(tiny_encoder, specs, sharing_depth=3).eval()
    tower = model.tower("topic")
    assert tower.head is model.heads["topic"] and tower.layers is model.task_layers["topic"]
    shared_state, tower_states = split_state_dict(model.state_dict())
    assert set(model.shared_state_dict()) == set(shared_state)
    assert set(model.task_state_dict("topic")) == set(tower_states["topic"])
    assert set(tower_states["topic"]) == {k for k in tower_states["topic"] if k.startswith(("layers.0.", "head."))}
    with torch.no_grad():
        hidden = model.encode_shared(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        assert torch.equal(
            tower(hidden, batch["attention_mask"]), model.forward_from_shared(hidden, batch["attention_mask"])["topic"]
        )
    with pytest.raises(ValueError, match="send hidden states"):
        tower.forward_pooled(hidden[:, 0])


def test_split_rejects_foreign_keys():
    with pytest.raises(ValueError, match="'encoder.layer.0.x' is not part of a MultiTaskModel"):
        split_state_dict({"encoder.layer.0.x": torch.zeros(1)})
