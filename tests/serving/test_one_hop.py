"""The encoder's result goes to the heads in one hop: the gateway hands each head the pending result
and never reads it itself, except to tell a dead encoder from a dead head; retries keep their meaning."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from serving_helpers import TEXTS, assert_predictions_close, local_gateway

from mtl_ray.predictor import Predictor
from mtl_ray.serving.gateway import Gateway, LocalBackend, ParsedRequest
from mtl_ray.serving.http_api import build_http_api


class _Died(Exception):
    pass


class CountingBackend(LocalBackend):
    """LocalBackend whose first ``encoder_failures`` encoder calls die, counting what the gateway does."""

    def __init__(self, inner: LocalBackend, encoder_failures: int = 0):
        super().__init__(inner.encoder, inner.heads)
        self.encoder_failures = encoder_failures
        self.submitted = 0
        self.head_inputs: list[object] = []

    async def encode(self, batch):
        self.submitted += 1
        if self.submitted <= self.encoder_failures:
            raise _Died("encoder replica died")
        return await super().encode(batch)

    async def predict(self, task, pending):
        self.head_inputs.append(pending)
        return await super().predict(task, pending)


def gateway_over(path, encoder_failures: int = 0) -> Gateway:
    base = local_gateway(path)
    backend = CountingBackend(base.backend, encoder_failures)
    return Gateway(base.specs, base.tokenizer, backend, retries=1, retryable=(_Died,), max_batch_size=2)


@pytest.mark.parametrize("fixture", ["ckpt_dir", "ckpt_split_dir"])
def test_heads_get_the_pending_encoder_result_and_the_gateway_never_reads_it(request, fixture):
    path = request.getfixturevalue(fixture)
    gateway = gateway_over(path)
    got = asyncio.run(gateway.predict(ParsedRequest(TEXTS, False, None)))
    assert_predictions_close(got["predictions"], Predictor.from_checkpoint(path, device="cpu").predict(texts=TEXTS))
    backend = gateway.backend
    assert backend.resolved == 0  # never materialised in the gateway
    assert backend.submitted == 3  # 5 texts in chunks of 2: one encoder call per chunk, for every head
    assert len(backend.head_inputs) == 3 * 2 and all(isinstance(p, asyncio.Task) for p in backend.head_inputs)


def test_a_dead_encoder_is_resubmitted_once_for_all_heads_then_answers(ckpt_dir):
    gateway = gateway_over(ckpt_dir, encoder_failures=1)
    ref = Predictor.from_checkpoint(ckpt_dir, device="cpu").predict(texts=TEXTS[:2])
    got = asyncio.run(gateway.predict(ParsedRequest(TEXTS[:2], False, None)))  # one chunk, two heads (sentiment, score)
    assert_predictions_close(got["predictions"], ref)
    assert gateway.backend.submitted == 2  # both failed head calls share one re-submission


def test_an_encoder_that_stays_dead_is_a_503_naming_it(ckpt_dir):
    gateway = gateway_over(ckpt_dir, encoder_failures=10)
    with TestClient(build_http_api(gateway)) as c:
        r = c.post("/v1/predict", json={"texts": ["x"]})
        assert r.status_code == 503 and r.json()["detail"] == "the encoder is temporarily unavailable; retry shortly"
    assert gateway.backend.submitted == 2  # the first call and one retry
