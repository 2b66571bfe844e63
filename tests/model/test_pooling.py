from __future__ import annotations

import torch

from mtl_ray.config import POOLINGS
from mtl_ray.model.pooling import POOLERS, cls_pool, mean_pool


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))


def test_mean_pool_of_an_all_padding_row_is_zero_not_nan():
    out = mean_pool(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
    assert torch.equal(out, torch.zeros(1, 3))


def test_cls_pool_takes_the_first_token():
    hidden = torch.arange(12.0).view(2, 3, 2)
    assert torch.equal(cls_pool(hidden, torch.ones(2, 3)), torch.tensor([[0.0, 1.0], [6.0, 7.0]]))


def test_registry_matches_the_config_choices():
    assert tuple(POOLERS) == POOLINGS
