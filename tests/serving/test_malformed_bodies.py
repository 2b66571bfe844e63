"""Every malformed body is a 4xx with a message, and the next good request still answers 200."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving_helpers import local_gateway

from mtl_ray.serving.http_api import build_http_api

DEEP = 100_000  # far past Python's recursion limit: json.loads raises RecursionError
MALFORMED = [
    (b"[" * DEEP + b"]" * DEEP, 400, "nested too deeply"),
    (b'{"texts": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, "nested too deeply"),
    (b'{"texts": ["a"], "tasks": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}", 400, "nested too deeply"),
    (b'{"texts": [' + b"1" * 5000 + b"]}", 400, "not valid JSON: Exceeds the limit"),
    (b'{"texts": ["\\ud800 lone surrogate"]}', 422, "texts[0]: holds an unpaired UTF-16 surrogate ('\\ud800' at"),
    (b'{"pairs": [["ok", "\\udfff"]]}', 422, "pairs[0][1]: holds an unpaired UTF-16 surrogate"),
    (b'{"texts": ["ok"], "tasks": ["\\ud800"]}', 422, "unknown task '\\ud800'"),
    (b'{"\\ud800": 1}', 422, "unknown field(s) '\\ud800'"),
    (b'{"texts": [NaN, Infinity]}', 422, "texts[0]: expected a string, got number"),
    (b'{"texts": [[["deep"]]]}', 422, "texts[0]: expected a string, got array"),
    (b"\xef\xbb\xbf" + b'{"texts": ["bom"]}', 400, "not valid JSON: Unexpected UTF-8 BOM"),
    (b'{"texts": ["a"', 400, "not valid JSON: Expecting"),
    (b"\x00\x01\x02", 400, "not valid JSON"),
    (b"null", 422, "the body must be a JSON object"),
    (b'"texts"', 422, "got string"),
    (b"   \n", 400, "empty request body"),
    (b'{"texts": "one string"}', 422, "'texts' must be an array, got string"),
    (b'{"texts": ["a"], "tasks": "sentiment"}', 422, "'tasks' must be an array of task names, got string"),
    (b'{"texts": ["a"], "tasks": [1]}', 422, "'tasks' must be an array of task names"),
]


@pytest.fixture(scope="module")
def client(ckpt_dir):
    with TestClient(build_http_api(local_gateway(ckpt_dir)), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("body,status,message", MALFORMED, ids=[f"body{i}" for i in range(len(MALFORMED))])
def test_a_malformed_body_is_a_4xx_with_a_message_then_a_good_request_answers(client, body, status, message):
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, message in r.json()["detail"]) == (status, True), (r.status_code, r.text[:300])
    assert client.post("/v1/predict", json={"texts": ["a good film"]}).status_code == 200
