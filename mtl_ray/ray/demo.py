"""`mtl-ray demo` / `make demo`: the whole product on one machine, end to end.

Prepare the real corpora → train the multi-task model with Ray Train on an embedded local Ray →
evaluate on the test splits (per-task table next to the majority baseline) → serve the best
checkpoint with Ray Serve on 127.0.0.1 → answer one sample request per input kind (every task) →
shut down cleanly.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mtl_ray.config import Config

SAMPLE_TEXTS = [
    "A gripping, beautifully acted film that stays with you.",
    "Shares in the carmaker fell after profits missed forecasts.",
    "ugh my flight got cancelled again, worst day ever",
]
SAMPLE_PAIRS = [
    [
        "Chelsea clinch the Premiership title",
        "Chelsea won the league on Saturday after a 2-0 win at Bolton, their first title in 50 years.",
    ]
]


def _summarize(pred: dict[str, Any]) -> str:
    if "label" in pred:
        return f"{pred['label']} ({pred['score']:.2f})"
    if "value" in pred:
        return f"{pred['value']:+.2f}"
    return "embedding"


def run_demo(cfg: Config, *, port: int = 8000, num_cpus: int = 4, verbose: bool = False) -> dict[str, Any]:
    """``verbose``: Ray's and Serve's own logs on the terminal (default: answers, progress, errors)."""
    import httpx
    from ray import serve

    from mtl_ray.data.prepare import prepare_builtin
    from mtl_ray.ray.logs import RayLogging
    from mtl_ray.ray.serve.app import build_app
    from mtl_ray.ray.session import ray_session
    from mtl_ray.ray.train import run_ray_training
    from mtl_ray.serving.config import serve_config_from_dict

    builtins = sorted({t.source.split(":", 1)[1] for t in cfg.tasks.values() if t.source.startswith("builtin:")})
    print(f"[1/4] preparing the real corpora: {', '.join(builtins)}", flush=True)
    prepare_builtin(builtins, cfg.data, progress=True)
    start = time.perf_counter()
    logs = RayLogging(verbose=verbose)
    logs.apply_to_driver()
    with ray_session(None, num_cpus=num_cpus, init_kwargs=logs.init_kwargs()):
        print("[2/4] training with Ray Train (embedded local Ray)", flush=True)
        summary = run_ray_training(cfg)
        best = summary["best_checkpoint"]
        print(f"[3/4] serving {best} on http://127.0.0.1:{port}", flush=True)
        answers: dict[str, Any] = {}
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logs.serve_logging_config())
            serve.run(build_app(serve_config_from_dict({"checkpoint": best})), name="mtl", route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=60) as client:
                tasks = client.get(f"{base}/v1/tasks").json()["tasks"]
                answers["texts"] = client.post(f"{base}/v1/predict", json={"texts": SAMPLE_TEXTS}).json()
                if any(t["input"] == "pairs" for t in tasks):
                    answers["pairs"] = client.post(f"{base}/v1/predict", json={"pairs": SAMPLE_PAIRS}).json()
            print("[4/4] sample answers (one encoder pass per request, every task):")
            for kind, inputs in (("texts", SAMPLE_TEXTS), ("pairs", SAMPLE_PAIRS)):
                if kind not in answers:
                    continue
                for i, item in enumerate(inputs):
                    shown = item if kind == "texts" else " || ".join(item)
                    print(f"  {shown[:70]!r}")
                    for task, preds in sorted(answers[kind]["predictions"].items()):
                        print(f"      {task:<20} {_summarize(preds[i])}")
        finally:
            serve.shutdown()
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {summary['output_dir']}")
    return {"summary": summary, "answers": json.loads(json.dumps(answers))}
