"""The HTTP API without a cluster: FastAPI's TestClient over a Gateway with in-process parts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving_helpers import PAIRS, TEXTS, assert_predictions_close, local_gateway

from mtl_ray.predictor import Predictor
from mtl_ray.serving.config import LimitsConfig
from mtl_ray.serving.gateway import ApiError, Gateway
from mtl_ray.serving.http_api import build_http_api

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def client(ckpt_dir):
    limits = LimitsConfig(max_inputs_per_request=8, max_chars_per_text=2000, max_body_bytes=1_100_000 * 2)
    gateway = local_gateway(ckpt_dir, limits=limits, max_batch_size=4, api_key=KEY)
    with TestClient(build_http_api(gateway), headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def predictor(ckpt_dir):
    return Predictor.from_checkpoint(ckpt_dir, device="cpu")


def test_predict_equals_predictor(client, predictor):
    r = client.post("/v1/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    assert_predictions_close(r.json()["predictions"], predictor.predict(texts=TEXTS))
    r = client.post("/v1/predict", json={"pairs": PAIRS, "tasks": ["match"]})
    assert_predictions_close(r.json()["predictions"], predictor.predict(pairs=PAIRS, tasks=["match"]))
    r = client.post("/v1/predict", json={"texts": TEXTS[:2], "tasks": ["unsup"]})
    assert len(r.json()["predictions"]["unsup"][0]["embedding"]) == 32


def test_a_megabyte_text_is_cut_and_the_response_says_so(client, predictor):
    big = "good movie " * 100_000  # 1.1 MB
    r = client.post("/v1/predict", json={"texts": [big, "bad"], "tasks": ["sentiment"]})
    assert r.status_code == 200, r.text
    warnings = " ".join(r.json()["warnings"])
    assert "texts[0]: longer than 2000 characters" in warnings
    assert "texts[0]: truncated to 32 tokens" in warnings and "texts[1]" not in warnings
    # the first 32 tokens are the same either way, so the answer equals the Predictor's on the full text
    assert_predictions_close(r.json()["predictions"], predictor.predict(texts=[big, "bad"], tasks=["sentiment"]))


BAD_REQUESTS = [
    ({"json": {"texts": []}}, 422, "'texts' is empty"),
    ({"json": {"texts": ["ok", ""]}}, 422, "texts[1]: empty text"),
    ({"json": {"texts": ["ok", "   "]}}, 422, "texts[1]: empty text"),
    ({"json": {"texts": ["x"] * 9}}, 413, "'texts' has 9 inputs; the limit per request is 8"),
    ({"json": {"pairs": [["only one"]]}}, 422, "pairs[0]: expected exactly 2 texts"),
    ({"json": {"pairs": ["a b"]}}, 422, "pairs[0]: expected [text, text_pair], got string"),
    (
        {"json": {"texts": ["x"], "tasks": ["nope"]}},
        422,
        "unknown task 'nope'; valid tasks: match, score, sentiment, unsup",
    ),
    ({"json": {"texts": ["x"], "tasks": ["match"]}}, 422, "task 'match' takes pairs, not texts"),
    ({"json": {"pairs": [["a", "b"]], "tasks": ["sentiment"]}}, 422, "task 'sentiment' takes texts, not pairs"),
    ({"json": {"texts": "just a string"}}, 422, "'texts' must be an array, got string"),
    ({"json": {"texts": [1, 2]}}, 422, "texts[0]: expected a string, got number"),
    ({"json": {"texts": ["x"], "tasks": "sentiment"}}, 422, "'tasks' must be an array of task names"),
    ({"json": {"texts": ["x"], "tasks": []}}, 422, "'tasks' is empty"),
    ({"json": {"texts": ["x"], "pairs": [["a", "b"]]}}, 422, "exactly one of 'texts'"),
    ({"json": {}}, 422, "got neither"),
    ({"json": {"text": ["x"]}}, 422, "unknown field(s) 'text'"),
    ({"json": ["x"]}, 422, "must be a JSON object"),
    ({"content": b"texts=hello"}, 400, "not valid JSON"),
    ({"content": b'{"texts": ["caf\xe9"]}'}, 400, "not valid UTF-8 (byte 0xe9 at offset 15)"),
    ({"content": b""}, 400, "empty request body"),
]


@pytest.mark.parametrize("kwargs, status, message", BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, kwargs, status, message):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert client.post("/v1/predict", json={"texts": ["still fine"]}).status_code == 200


def test_body_over_the_byte_limit_is_413(ckpt_dir):
    gateway = local_gateway(ckpt_dir, limits=LimitsConfig(max_body_bytes=1024))
    with TestClient(build_http_api(gateway)) as c:
        r = c.post("/v1/predict", json={"texts": ["x" * 2000]})
    assert r.status_code == 413 and "the limit is 1024" in r.json()["detail"]


@pytest.mark.parametrize(
    "headers, status, message",
    [
        ({}, 401, "missing API key"),
        ({"X-API-Key": "wrong"}, 401, "invalid API key"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid API key"),
        ({"Authorization": "Basic " + KEY}, 401, "missing API key"),
        ({"Authorization": "Bearer " + KEY}, 200, None),
        ({"X-API-Key": KEY}, 200, None),
    ],
)
def test_api_key(ckpt_dir, client, headers, status, message):
    with TestClient(client.app) as anonymous:  # no default key header
        r = anonymous.post("/v1/predict", json={"texts": ["x"]}, headers=headers)
        assert r.status_code == status, r.text
        if message:
            assert message in r.json()["detail"] and r.headers["www-authenticate"].startswith("Bearer")
            assert anonymous.get("/v1/tasks", headers=headers).status_code == 401
        assert anonymous.get("/healthz").status_code == 200  # probes need no key


def test_tasks_health_and_openapi(client):
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert tasks["match"] == {
        "name": "match",
        "type": "pair_classification",
        "input": "pairs",
        "labels": ["diff", "same"],
        "max_length": 48,
    }
    assert tasks["score"]["labels"] is None and tasks["unsup"]["input"] == "texts"
    assert client.get("/healthz").json() == {"status": "ok"}
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"texts", "pairs", "tasks"}
    assert {"200", "401", "413", "422"} <= set(doc["paths"]["/v1/predict"]["post"]["responses"])
    assert client.get("/docs").status_code == 200


class _Died(Exception):
    pass


class FlakyBackend:
    """Fails the first ``failures`` head calls with a 'replica died' error."""

    def __init__(self, inner, failures: int):
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def submit_encode(self, batch):
        return self.inner.submit_encode(batch)

    async def resolve(self, pending):
        return await self.inner.resolve(pending)

    async def predict(self, task, pending):
        self.calls += 1
        if self.calls <= self.failures:
            raise _Died("replica died")
        return await self.inner.predict(task, pending)

    async def spec(self, task):
        return await self.inner.spec(task)


@pytest.mark.parametrize("failures, status", [(1, 200), (5, 503)])
def test_a_dead_head_replica_is_retried_then_503(ckpt_dir, failures, status):
    base = local_gateway(ckpt_dir)
    gateway = Gateway(
        base.specs,
        base.tokenizer,
        FlakyBackend(base.backend, failures),
        retries=1,
        retryable=(_Died,),
    )
    with TestClient(build_http_api(gateway)) as c:
        r = c.post("/v1/predict", json={"texts": ["x"], "tasks": ["sentiment"]})
        assert r.status_code == status, r.text
        if status == 503:
            assert "task 'sentiment' is temporarily unavailable" in r.json()["detail"]


def test_unexpected_errors_are_a_500_with_a_json_body(ckpt_dir):
    gateway = local_gateway(ckpt_dir)

    async def boom(*_):
        raise RuntimeError("bug")

    gateway.backend.encode = boom
    with TestClient(build_http_api(gateway), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", json={"texts": ["x"]})
    assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]


def test_api_error_carries_status_and_headers():
    exc = ApiError(401, "nope", {"WWW-Authenticate": "Bearer"})
    assert (exc.status, exc.message, exc.headers["WWW-Authenticate"]) == (401, "nope", "Bearer")
