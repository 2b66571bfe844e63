"""API fuzzing with schemathesis against the app's own /openapi.json, in process (ASGI, no Ray, no
sockets): no generated request may get a server error, and every response must match the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serving_helpers import local_gateway

from mtl_ray.serving.http_api import build_http_api

KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

OPERATIONS = [("POST", "/v1/predict"), ("GET", "/v1/tasks"), ("GET", "/healthz")]
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
# bodies that match the request schema, and (the body being all the API takes) bodies that break it
CASES = [(*op, POSITIVE) for op in OPERATIONS] + [("POST", "/v1/predict", NEGATIVE)]


@pytest.fixture(scope="module")
def asgi_schema(ckpt_dir):
    return schemathesis.openapi.from_asgi("/openapi.json", build_http_api(local_gateway(ckpt_dir, api_key=KEY)))


def test_the_schema_lists_every_route(asgi_schema):
    listed = sorted((r.ok().method.upper(), r.ok().path) for r in asgi_schema.get_all_operations())
    assert listed == sorted(OPERATIONS)


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_server_errors_and_responses_match_the_schema(asgi_schema, method, path, mode):
    operation = asgi_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case) -> None:
        case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

    fuzz()
