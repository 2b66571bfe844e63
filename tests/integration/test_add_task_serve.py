"""A task added to a live Serve app, end to end, on a real local Ray (127.0.0.1 only):

    base checkpoint (tiny BERT, k = 2 of 4) -> serve build + serve run -> load from 3 clients
    -> mtl-ray add-task (Ray Train) on a new CSV -> serve build --set heads.tone.checkpoint=OUT/best
    -> serve run -> the new task answers

Checks: the new task's answers equal the Predictor's on base + new head (1e-5); every request during
the change got 200; the encoder replica's id and pid are unchanged; the other heads' answers are
unchanged bit for bit (quiet single requests before and after; under load, where requests are
batched together and padded differently, to 1e-5 with the same labels).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

from helpers import tiny_config_dict, write_tiny_tasks, write_tone_csv  # noqa: E402
from ray_helpers import replica_info, serve_cluster, serve_run, wait_for_app  # noqa: E402

from mtl_ray.cli import main  # noqa: E402
from mtl_ray.config import config_from_dict  # noqa: E402
from mtl_ray.predictor import Predictor  # noqa: E402
from mtl_ray.ray.local_cluster import free_port  # noqa: E402
from mtl_ray.training.run import train  # noqa: E402

TEXTS = ["the movie was good", "bad", "a great film with a happy actor and a boring plot", "news", "sport"]
CLIENTS = 3


@pytest.fixture(scope="module")
def cluster():
    # with the dashboard: Ray Train's placement-group cleaner asks the state API
    with serve_cluster(dashboard=True, dashboard_port=free_port()) as cluster:
        yield cluster


def load(base: str, results: list, stop: threading.Event) -> None:
    """One client: every existing text task, one request after another, until stopped."""
    with httpx.Client(base_url=base, timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/predict", json={"texts": TEXTS, "tasks": ["score", "sentiment"]})
                results.append((r.status_code, r.json()["predictions"] if r.status_code == 200 else r.text))
            except httpx.HTTPError as exc:
                results.append((-1, repr(exc)))
            time.sleep(0.05)


def test_a_task_added_with_add_task_goes_live_while_the_app_keeps_answering(cluster, tiny_encoder_dir, tmp_path):
    # a trained base checkpoint
    files = write_tiny_tasks(tmp_path / "data")
    d = tiny_config_dict(tiny_encoder_dir, files, tmp_path / "base", max_steps=6)
    d["model"]["sharing_depth"] = 2
    base_ckpt = Path(train(config_from_dict(d), progress=False)["best_checkpoint"])

    # the running app
    conf = tmp_path / "serve" / "config.yaml"
    cheap = [x for dep in ("ingress", "encoder", "head") for x in ("--set", f"{dep}.num_cpus=0.25")]
    build = ["serve", "build", "--checkpoint", str(base_ckpt), "--port", str(cluster["port"]), *cheap]
    assert main([*build, "-o", str(conf)]) == 0
    serve_run(conf, cluster["gcs"])
    assert wait_for_app("mtl").status == "RUNNING"
    url = f"http://127.0.0.1:{cluster['port']}"
    quiet = httpx.post(f"{url}/v1/predict", json={"texts": TEXTS, "tasks": ["score", "sentiment"]}, timeout=30)
    assert quiet.status_code == 200, quiet.text
    before = quiet.json()["predictions"]
    encoder_before = replica_info("Encoder")

    results: list = []
    stop = threading.Event()
    clients = [threading.Thread(target=load, args=(url, results, stop), daemon=True) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        # add the task through Ray Train (the default path), on the same Ray
        task = {
            "tone": {
                "type": "classification",
                "source": str(write_tone_csv(tmp_path / "tone.csv")),
                "text_field": "body",
                "label_field": "tone",
                "max_length": 32,
            }
        }
        train_opts = {"max_steps": 12, "batch_size": 8, "lr": 3e-3, "eval_every": 6, "device": "cpu"}
        task_yaml = tmp_path / "tone.yaml"
        task_yaml.write_text(
            yaml.safe_dump({"tasks": task, "train": train_opts, "data": {"cache_dir": str(tmp_path / "cache")}})
        )
        out = tmp_path / "tone-run"
        assert main(["add-task", "--checkpoint", str(base_ckpt), "-c", str(task_yaml), "-o", str(out)]) == 0
        head = out / "best"
        conf2 = tmp_path / "serve" / "config-tone.yaml"
        assert main([*build, "--set", f"heads.tone.checkpoint={head}", "-o", str(conf2)]) == 0
        serve_run(conf2, cluster["gcs"])
        assert wait_for_app("mtl-head-tone").status == "RUNNING"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = {t["name"] for t in httpx.get(f"{url}/v1/tasks", timeout=30).json()["tasks"]}
            if "tone" in tasks:
                break
            time.sleep(0.3)
        time.sleep(1.0)  # a little more load on the changed app
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=30)

    assert len(results) > 20 and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    for _, predictions in results:  # under load: batched with other requests, padded differently
        for t in before:
            assert [p.get("label") for p in predictions[t]] == [p.get("label") for p in before[t]]
            got = [p.get("score", p.get("value")) for p in predictions[t]]
            assert got == pytest.approx([p.get("score", p.get("value")) for p in before[t]], abs=1e-5)

    r = httpx.post(f"{url}/v1/predict", json={"texts": TEXTS, "tasks": ["score", "sentiment"]}, timeout=30)
    assert r.json()["predictions"] == before  # quiet: the other heads' answers bit for bit
    r = httpx.post(f"{url}/v1/predict", json={"texts": TEXTS, "tasks": ["tone"]}, timeout=30)
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]["tone"]
    expected = Predictor.from_checkpoint(base_ckpt, device="cpu", heads={"tone": head}).predict(
        texts=TEXTS, tasks=["tone"]
    )["tone"]
    assert [p["label"] for p in served] == [p["label"] for p in expected]
    for a, b in zip(served, expected):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    encoder_after = replica_info("Encoder")
    same = ("replica", "pid", "loaded_at", "checkpoint")
    assert {k: encoder_after[k] for k in same} == {k: encoder_before[k] for k in same}  # never restarted
    assert encoder_after["texts"] > encoder_before["texts"]
