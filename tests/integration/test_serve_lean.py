"""A k = L app over real HTTP on 127.0.0.1: numpy heads and a tokenizers-only ingress (no torch in
either replica), answers equal to the Predictor's, malformed bodies 4xx, and a short schemathesis run
against the served /openapi.json."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVING_TESTS))

from serving_helpers import PAIRS, TEXTS, assert_predictions_close, make_checkpoint  # noqa: E402

from mtl_ray.predictor import Predictor  # noqa: E402
from mtl_ray.testing import make_tiny_encoder  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lean_app(tmp_path_factory):
    import ray
    from ray import serve

    from mtl_ray.ray.serve.app import build_app
    from mtl_ray.serving.config import serve_config_from_dict

    root = tmp_path_factory.mktemp("serve-lean")
    ckpt = make_checkpoint(root / "ckpt", make_tiny_encoder(root / "encoder"))  # k = L
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=temp_dir)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cheap = {d: {"num_cpus": 0.25} for d in ("ingress", "encoder", "head")}
    try:
        serve.run(build_app(serve_config_from_dict({"checkpoint": str(ckpt), **cheap})), name="lean", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield {"client": client, "checkpoint": ckpt, "base": f"http://127.0.0.1:{port}"}
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def info(deployment: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name="lean").info.remote().result(timeout_s=30)


def test_lean_answers_equal_the_predictor(lean_app):
    predictor = Predictor.from_checkpoint(lean_app["checkpoint"], device="cpu")
    client = lean_app["client"]
    for body, kwargs in [
        ({"texts": TEXTS}, {"texts": TEXTS}),
        ({"pairs": PAIRS}, {"pairs": PAIRS}),
        ({"texts": TEXTS, "tasks": ["unsup", "score"]}, {"texts": TEXTS, "tasks": ["unsup", "score"]}),
    ]:
        r = client.post("/v1/predict", json=body)
        assert r.status_code == 200, r.text
        assert_predictions_close(r.json()["predictions"], predictor.predict(**kwargs))


def test_heads_and_ingress_run_without_torch(lean_app):
    assert lean_app["client"].post("/v1/predict", json={"texts": ["warm"]}).status_code == 200
    for task in ("sentiment", "score", "match", "unsup"):
        head = info(f"Head-{task}")
        assert (head["head"], head["torch_loaded"]) == ("numpy", False), head
    ingress = info("Ingress")
    assert ingress["torch_loaded"] is False and ingress["encoder_results_read"] == 0
    assert info("Encoder")["torch_loaded"] is True


def test_a_deeply_nested_body_is_a_400_and_the_next_request_answers(lean_app):
    client = lean_app["client"]
    r = client.post("/v1/predict", content=b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    assert client.post("/v1/predict", json={"texts": ["fine"]}).status_code == 200


def test_schemathesis_over_real_http(lean_app):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{lean_app['base']}/openapi.json")
    mode = schemathesis.GenerationMode
    for generation in (mode.POSITIVE, mode.NEGATIVE):
        operation = schema["/v1/predict"]["POST"]

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            case.call_and_validate(base_url=lean_app["base"], checks=checks)

        fuzz()
    assert lean_app["client"].get("/healthz").json() == {"status": "ok"}
