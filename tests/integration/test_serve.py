"""The Serve app over real HTTP on 127.0.0.1, deployed the way users deploy it:

    mtl-ray serve build --checkpoint CK -o config.yaml   ->   serve run config.yaml --non-blocking

One local Ray for the module; a tiny checkpoint cut at k = 2 of 4, so hidden states (not only pooled
vectors) cross from the encoder deployment to the head deployments. Checks: answers equal the
Predictor's, every bad input is a 4xx and the server stays healthy, API keys, a head replaced in place
while the encoder keeps answering, a tampered checkpoint failing its deploy with a clear message.
"""

from __future__ import annotations

import copy
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVING_TESTS))

from ray_helpers import checkpoint_and_new_head, offer_head, replica_info, serve_cluster, serve_run, wait_for_app  # noqa: E402
from serving_helpers import PAIRS, TEXTS, assert_predictions_close, make_checkpoint  # noqa: E402

from mtl_ray.cli import main  # noqa: E402
from mtl_ray.predictor import Predictor  # noqa: E402
from mtl_ray.tasks.base import TaskSpec  # noqa: E402

KEY = "integration-key"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-int")
    encoder, main_ck, new_head = checkpoint_and_new_head(root, "main", "new-head")
    extra_spec = {"extra": TaskSpec("extra", "classification", ("x", "y", "z"), ("accuracy",), max_length=32)}
    extra = make_checkpoint(root / "extra", encoder, sharing_depth=2, head_seed=3, specs=extra_spec)
    foreign = make_checkpoint(root / "foreign", encoder, sharing_depth=2, perturb_encoder=True)
    tampered = Path(shutil.copytree(main_ck, root / "tampered"))
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-5] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    key_file = root / "api.key"
    key_file.write_text(KEY + "\n")
    return {
        "root": root,
        "main": main_ck,
        "new_head": new_head,
        "extra": extra,
        "foreign": foreign,
        "tampered": tampered,
        "key_file": key_file,
        "build_args": [],
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with serve_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def app(cluster, checkpoints):
    """The generated config, deployed with `serve run`; every replica on a quarter CPU."""
    config = checkpoints["root"] / "serve" / "config.yaml"
    cheap = [f"{d}.num_cpus=0.25" for d in ("ingress", "encoder", "head")]
    args = ["serve", "build", "--checkpoint", str(checkpoints["main"]), "-o", str(config)]
    args += ["--port", str(cluster["port"]), "--api-key-file", str(checkpoints["key_file"])]
    args += [x for s in cheap for x in ("--set", s)] + ["--set", "limits.max_inputs_per_request=16"]
    assert main(args) == 0
    checkpoints["build_args"] = args
    serve_run(config, cluster["gcs"])
    status = wait_for_app("mtl")
    assert status.status == "RUNNING", status.message
    base = f"http://127.0.0.1:{cluster['port']}"
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as client:
        # "config": the file last deployed; a deploy replaces the whole set of apps, so later configs
        # start from it
        yield {"client": client, "config": config, "base": base}


def test_answers_equal_the_predictor(app, checkpoints):
    predictor = Predictor.from_checkpoint(checkpoints["main"], device="cpu")
    client = app["client"]
    r = client.post("/v1/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    assert_predictions_close(r.json()["predictions"], predictor.predict(texts=TEXTS))
    r = client.post("/v1/predict", json={"pairs": PAIRS})
    assert_predictions_close(r.json()["predictions"], predictor.predict(pairs=PAIRS))
    r = client.post("/v1/predict", json={"texts": TEXTS, "tasks": ["unsup"]})
    assert_predictions_close(r.json()["predictions"], predictor.predict(texts=TEXTS, tasks=["unsup"]))


BAD = [
    ({"json": {"texts": []}}, 422, "'texts' is empty"),
    ({"json": {"texts": ["ok", ""]}}, 422, "texts[1]: empty text"),
    ({"json": {"texts": ["x"] * 17}}, 413, "the limit per request is 16"),
    ({"json": {"pairs": [["only one"]]}}, 422, "pairs[0]: expected exactly 2 texts"),
    ({"json": {"texts": ["x"], "tasks": ["nope"]}}, 422, "valid tasks: match, score, sentiment, unsup"),
    ({"json": {"texts": ["x"], "tasks": ["match"]}}, 422, "task 'match' takes pairs, not texts"),
    ({"json": {"texts": [1]}}, 422, "texts[0]: expected a string, got number"),
    ({"content": b"{not json"}, 400, "not valid JSON"),
    ({"content": b'{"texts": ["\xff"]}'}, 400, "not valid UTF-8"),
]


def test_bad_inputs_are_4xx_and_the_server_stays_healthy(app):
    client = app["client"]
    for kwargs, status, message in BAD:
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == status and message in r.json()["detail"], (kwargs, r.status_code, r.text)
    big = client.post("/v1/predict", json={"texts": ["great film " * 100_000], "tasks": ["sentiment"]})
    assert big.status_code == 200 and "truncated to 32 tokens" in " ".join(big.json()["warnings"])
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/v1/predict", json={"texts": ["fine"]}).status_code == 200


def test_api_key_docs_and_tasks(app):
    with httpx.Client(base_url=app["base"], timeout=30) as anonymous:
        assert anonymous.post("/v1/predict", json={"texts": ["x"]}).status_code == 401
        wrong = anonymous.post("/v1/predict", json={"texts": ["x"]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid API key"
        ok = anonymous.post("/v1/predict", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert anonymous.get("/healthz").status_code == 200
        assert "/v1/predict" in anonymous.get("/openapi.json").json()["paths"]
        assert anonymous.get("/docs").status_code == 200
    tasks = {t["name"]: t for t in app["client"].get("/v1/tasks").json()["tasks"]}
    assert tasks["match"]["input"] == "pairs" and tasks["sentiment"]["labels"] == ["neg", "pos"]


def test_a_head_is_replaced_in_place_while_the_encoder_keeps_answering(app, cluster, checkpoints):
    old_pred = Predictor.from_checkpoint(checkpoints["main"], device="cpu")
    new_pred = Predictor.from_checkpoint(checkpoints["new_head"], device="cpu")
    assert new_pred.predict(texts=TEXTS, tasks=["sentiment"]) != old_pred.predict(texts=TEXTS, tasks=["sentiment"])
    encoder_before, score_before = replica_info("Encoder"), replica_info("Head-score")
    head_before = replica_info("Head-sentiment")

    results: list[tuple[float, int, dict | None]] = []
    stop = threading.Event()

    def load() -> None:  # keeps asking every task while the head is swapped
        with httpx.Client(base_url=app["base"], headers={"X-API-Key": KEY}, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/predict", json={"texts": TEXTS})
                    results.append((time.monotonic(), r.status_code, r.json() if r.status_code == 200 else None))
                except httpx.HTTPError:
                    results.append((time.monotonic(), -1, None))
                time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        config = yaml.safe_load(app["config"].read_text())
        deployments = config["applications"][0]["deployments"]
        head = next(d for d in deployments if d["name"] == "Head-sentiment")
        head["user_config"] = {"checkpoint": str(checkpoints["new_head"])}
        new_config = app["config"].with_name("config-new-head.yaml")
        new_config.write_text(yaml.safe_dump(config))
        serve_run(new_config, cluster["gcs"])
        app["config"] = new_config
        expected = new_pred.predict(texts=TEXTS, tasks=["sentiment"])["sentiment"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if results and results[-1][2] and results[-1][2]["predictions"]["sentiment"] == expected:
                break
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=30)

    assert results and all(code == 200 for _, code, _ in results), [c for _, c, _ in results if c != 200]
    last = results[-1][2]["predictions"]
    assert_predictions_close({"sentiment": last["sentiment"]}, {"sentiment": expected})
    old = old_pred.predict(texts=TEXTS)
    assert_predictions_close({"score": last["score"]}, {"score": old["score"]})  # other heads untouched
    same = ("replica", "pid", "loaded_at", "checkpoint")
    encoder_after = replica_info("Encoder")
    assert {k: encoder_after[k] for k in same} == {k: encoder_before[k] for k in same}  # never restarted
    assert encoder_after["texts"] > encoder_before["texts"]  # and kept encoding throughout
    assert replica_info("Head-score") == score_before
    head_after = replica_info("Head-sentiment")
    assert head_after["replica"] == head_before["replica"] and head_after["pid"] == head_before["pid"]  # in place
    assert head_after["checkpoint"] == str(checkpoints["new_head"])


def test_a_task_is_added_while_the_encoder_keeps_answering(app, cluster, checkpoints):
    encoder_before, score_before = replica_info("Encoder"), replica_info("Head-score")
    extra_pred = Predictor.from_checkpoint(checkpoints["extra"], device="cpu")
    # the same build command plus the added head, minus what the previous test changed by hand
    config = app["config"].with_name("config-extra.yaml")
    args = list(checkpoints["build_args"])
    args[args.index("-o") + 1] = str(config)
    args += ["--set", f"heads.extra.checkpoint={checkpoints['extra']}"]
    args += ["--set", f"heads.sentiment.checkpoint={checkpoints['new_head']}"]  # keep the replaced head
    assert main(args) == 0
    errors = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=app["base"], headers={"X-API-Key": KEY}, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/predict", json={"texts": TEXTS, "tasks": ["score"]})
                if r.status_code != 200:
                    errors.append(r.status_code)
                time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        serve_run(config, cluster["gcs"])
        app["config"] = config
        assert wait_for_app("mtl-head-extra").status == "RUNNING"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = {t["name"] for t in app["client"].get("/v1/tasks").json()["tasks"]}
            if "extra" in tasks:
                break
            time.sleep(0.3)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert errors == []
    r = app["client"].post("/v1/predict", json={"texts": TEXTS, "tasks": ["extra", "score"]})
    assert r.status_code == 200, r.text
    assert_predictions_close({"extra": r.json()["predictions"]["extra"]}, extra_pred.predict(texts=TEXTS))
    same = ("replica", "pid", "loaded_at")
    assert {k: replica_info("Encoder")[k] for k in same} == {k: encoder_before[k] for k in same}
    assert replica_info("Head-score") == score_before
    assert replica_info("Head-sentiment")["checkpoint"] == str(checkpoints["new_head"])


def test_a_tampered_checkpoint_fails_its_deploy_with_a_clear_message(app, cluster, checkpoints):
    from ray import serve

    config = yaml.safe_load(app["config"].read_text())  # keeps the running app as it is
    entry = copy.deepcopy(config["applications"][0])
    entry.update(name="tampered", route_prefix="/tampered", deployments=[])
    entry["args"]["checkpoint"] = str(checkpoints["tampered"])
    config["applications"].append(entry)
    path = app["config"].with_name("config-tampered.yaml")
    path.write_text(yaml.safe_dump(config))
    serve_run(path, cluster["gcs"])
    status = wait_for_app("tampered")  # the failing build is retried 3 times by Serve: slow on a loaded machine
    try:
        assert status.status == "DEPLOY_FAILED"
        assert "model.safetensors: sha256 mismatch" in status.message
    finally:
        serve.delete("tampered")
    assert serve.status().applications["mtl"].status == "RUNNING"
    assert app["client"].post("/v1/predict", json={"texts": ["still serving"]}).status_code == 200


def test_a_head_from_another_encoder_is_refused_and_the_old_one_keeps_serving(app, cluster, checkpoints):
    before = app["client"].post("/v1/predict", json={"texts": TEXTS, "tasks": ["score"]}).json()
    foreign = app["config"].with_name("config-foreign.yaml")
    info = offer_head(app["config"], "score", checkpoints["foreign"], foreign, cluster["gcs"], timeout_s=30)
    assert "different shared encoder weights" in info["refused"]
    assert info["checkpoint"] == str(checkpoints["main"])
    after = app["client"].post("/v1/predict", json={"texts": TEXTS, "tasks": ["score"]})
    assert after.status_code == 200 and after.json() == before


def test_hidden_states_go_to_the_heads_in_one_hop(app):
    r = app["client"].post("/v1/predict", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    ingress = replica_info("Ingress")
    assert ingress["encoder_results_read"] == 0  # handed to the heads by reference, never read here
    assert ingress["torch_loaded"] is False
    assert replica_info("Head-score")["head"] == "torch"  # k < L: the task's own layers run in torch
