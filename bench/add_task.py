"""Adding a task to a live model (real MiniLM): time to answer over HTTP, the trunk cache's speed-up,
and the quality cost of a frozen trunk against joint training from scratch.

    python bench/add_task.py base  --work runs/bench-add-task     # base checkpoints at k = 6 and k = 4
    python bench/add_task.py live  --work runs/bench-add-task     # add-task -> serve build -> serve run -> answers
    python bench/add_task.py cache --work runs/bench-add-task     # per-epoch time, cache on vs off (interleaved)
    python bench/add_task.py joint --work runs/bench-add-task     # the new task trained jointly from scratch

The base model: all-MiniLM-L6-v2 with bbc_topic + tweet_sentiment towers trained on its frozen
pretrained trunk (``cmd_base``). The new task: 2,000 Rotten Tomatoes snippets (fresh / rotten) written to a CSV, split
80/10/10 by the usual seeded hash. ``live`` runs what a user runs against a running app, each as a
subprocess: ``mtl-ray add-task`` (Ray Train, joining the app's Ray), ``mtl-ray serve build --set
heads.rt_new.checkpoint=...``, ``serve run --non-blocking`` (a declarative deploy), then polls
``/v1/predict`` for the new task; the wall time runs from starting add-task to the first 200.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENCODER = "builtin:all-MiniLM-L6-v2"
BASE_TASKS = {
    "bbc_topic": {
        "type": "classification",
        "source": "builtin:bbc_topic",
        "max_length": 64,
        "max_train_examples": 800,
        "max_eval_examples": 200,
    },
    "tweet_sentiment": {
        "type": "classification",
        "source": "builtin:tweet_sentiment",
        "max_length": 64,
        "max_train_examples": 800,
        "max_eval_examples": 200,
    },
}
NEW = "rt_new"
BASE_STEPS = 100
DEPTHS = (6, 4)
# add-task's own training options (my_task.yaml): 3 epochs of the ~1,600 training examples
ADD_TRAIN = {"max_steps": 150, "batch_size": 32, "eval_every": 50, "log_every": 25, "warmup_ratio": 0.0, "seed": 0}
ADD_LR = {6: 2e-3, 4: 1e-4}  # a head alone takes a larger step than transformer layers
ADD_STEPS = {6: 150, 4: 100}  # 3 epochs at k = 6; 2 at k = 4 (two transformer layers train: 2 shared cores)


def new_task_csv(work: Path, n: int = 2000) -> Path:
    from mtl_ray.config import DataConfig, TaskConfig
    from mtl_ray.data.sources import load_task_splits

    path = work / "rt_new.csv"
    if path.exists():
        return path
    splits, names = load_task_splits(TaskConfig(name="rt", source="builtin:rt_sentiment"), DataConfig())
    # 80/10/10 from the built-in splits: the CSV is split again by the same seeded hash of the text
    share = {"train": n * 8 // 10, "validation": n // 10, "test": n // 10}
    rows = [(t, names[y]) for s, m in share.items() for t, y in zip(splits[s]["text"][:m], splits[s]["label"][:m])]
    work.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["snippet", "verdict"])
        w.writerows(rows[:n])
    return path


def new_task(work: Path) -> dict:
    return {
        NEW: {
            "type": "classification",
            "source": str(new_task_csv(work)),
            "text_field": "snippet",
            "label_field": "verdict",
            "max_length": 64,
        }
    }


def base_dir(work: Path, k: int) -> Path:
    return work / f"base-k{k}"


def cmd_base(work: Path, depths: tuple[int, ...] = DEPTHS) -> None:
    """Base checkpoints at k = 6 and k = 4: pretrained MiniLM, the base tasks' towers trained on the
    frozen pretrained trunk (cached), ``BASE_STEPS`` steps of 16. On 2 shared cores a fine-tuned base
    is out of benchmark time; what add-task costs does not depend on how the base trunk was trained."""
    from mtl_ray.config import config_from_dict
    from mtl_ray.training.run import train

    for k in depths:
        steps = BASE_STEPS if k == 6 else BASE_STEPS // 3  # k = 4: two transformer layers train per task
        cfg = {
            "tasks": BASE_TASKS,
            "model": {"encoder": ENCODER, "sharing_depth": k},
            "train": {
                "max_steps": steps,
                "batch_size": 16,
                "lr": 2e-3 if k == 6 else 1e-4,
                "eval_every": steps,
                "log_every": 20,
                "device": "cpu",
                "sampler": "uniform",
                "freeze_shared": True,
                "output_dir": str(base_dir(work, k)),
            },
        }
        start = time.perf_counter()
        summary = train(config_from_dict(cfg), progress=False)
        print(f"base k={k}: {time.perf_counter() - start:.0f} s, checkpoint {summary['best_checkpoint']}")
        (base_dir(work, k) / "BEST").write_text(summary["best_checkpoint"])


def base_checkpoint(work: Path, k: int) -> str:
    return (base_dir(work, k) / "BEST").read_text().strip()


def run(args: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def cmd_live(work: Path, depths: tuple[int, ...] = DEPTHS) -> None:
    import ray
    import yaml

    port = start_ray_and_serve()
    gcs = ray.get_runtime_context().gcs_address
    env = {"RAY_ADDRESS": gcs, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    url = f"http://127.0.0.1:{port}"
    rows = []
    for k in depths:
        base = base_checkpoint(work, k)
        conf = work / f"serve-k{k}.yaml"
        cheap = [x for d in ("ingress", "encoder", "head") for x in ("--set", f"{d}.num_cpus=0.25")]
        build = [str(BIN / "mtl-ray"), "serve", "build", "--checkpoint", base, "--port", str(port), *cheap]
        run([*build, "-o", str(conf)])
        run([str(BIN / "serve"), "run", str(conf), "--non-blocking", "-a", gcs], env)
        wait_ok(url, ["bbc_topic"])  # the live app, before the change
        task_yaml = work / f"{NEW}-k{k}.yaml"
        train_opts = {**ADD_TRAIN, "lr": ADD_LR[k], "max_steps": ADD_STEPS[k], "device": "cpu"}
        task_yaml.write_text(
            yaml.safe_dump(
                {"tasks": new_task(work), "train": train_opts, "ray": {"num_workers": 1, "cpus_per_worker": 2}}
            )
        )
        out = work / f"added-k{k}"
        start = time.perf_counter()
        t_train = run(
            [str(BIN / "mtl-ray"), "add-task", "--checkpoint", base, "-c", str(task_yaml), "-o", str(out)], env
        )
        head = out / "best"
        conf2 = work / f"serve-k{k}-{NEW}.yaml"
        t_build = run([*build, "--set", f"heads.{NEW}.checkpoint={head}", "-o", str(conf2)])
        t_deploy = run([str(BIN / "serve"), "run", str(conf2), "--non-blocking", "-a", gcs], env)
        t_answer = wait_ok(url, [NEW])
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
        rows.append(
            {
                "k": k,
                "wall_s": wall,
                "add_task_s": t_train,
                "train_s": summary["train_seconds"],
                "build_s": t_build,
                "deploy_s": t_deploy,
                "until_answer_s": t_answer,
                "test": summary["test"][NEW],
            }
        )
        from ray import serve

        serve.delete(f"mtl-head-{NEW}")
    serve.shutdown()
    ray.shutdown()
    (work / "live.json").write_text(json.dumps(rows, indent=2))
    print(
        "| k | add-task start → new task answers over HTTP | add-task (Ray Train, incl. start-up) | of which training | serve build | serve run | then until first 200 | new task test accuracy / macro-F1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['k']} | **{r['wall_s']:.1f} s** | {r['add_task_s']:.1f} s | {r['train_s']:.1f} s | {r['build_s']:.1f} s "
            f"| {r['deploy_s']:.1f} s | {r['until_answer_s']:.1f} s | {r['test']['accuracy']:.4f} / {r['test']['macro_f1']:.4f} |"
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray_and_serve() -> int:
    """A private local Ray on 127.0.0.1 (4 logical CPUs; the dashboard on, which Ray Train's
    placement-group cleaner asks) with Serve's HTTP proxy on a free port; returns the port."""
    import tempfile

    import ray
    from ray import serve

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        _node_ip_address="127.0.0.1",
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def wait_ok(url: str, tasks: list[str], timeout_s: float = 300) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        try:
            r = httpx.post(f"{url}/v1/predict", json={"texts": ["a gripping film"], "tasks": tasks}, timeout=30)
            if r.status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{tasks} not answering after {timeout_s} s")


CACHE_EXAMPLES = 640  # the per-epoch ratio does not depend on the epoch's size: keep the arms short


def cmd_cache(work: Path, depths: tuple[int, ...] = DEPTHS, epochs: int = 3) -> None:
    """Per-epoch wall time of the same add-task training with the trunk cache on and off, epoch by
    epoch interleaved (on 1, off 1, on 2, off 2, ...), in this process, 2 threads, on
    ``CACHE_EXAMPLES`` training examples of the new task."""
    import torch

    from mtl_ray.add_task import add_task_config
    from mtl_ray.training.builders import build_trainer
    from mtl_ray.training.run import setup_run

    torch.set_num_threads(2)
    print(
        "| k | epoch 1, cache on (fills it) | later epochs, cache on | every epoch, cache off | speed-up per later epoch |"
    )
    print("|---|---|---|---|---|")
    for k in depths:
        trainers = {}
        for mode in ("memory", "off"):
            opts = {**ADD_TRAIN, "lr": ADD_LR[k], "device": "cpu", "trunk_cache": mode}
            cfg = add_task_config(
                base_checkpoint(work, k), {"tasks": new_task(work), "train": opts}, work / f"cache-{mode}"
            )
            setup = setup_run(cfg)
            trainers[mode] = build_trainer(cfg, setup.model, setup.data, setup.tokenizer.pad_token_id)
        steps = -(-trainers["off"].data[NEW].size("train") // ADD_TRAIN["batch_size"])  # one epoch
        times: dict[str, list[float]] = {"memory": [], "off": []}
        for _ in range(epochs):
            for mode, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step()
                times[mode].append(time.perf_counter() - start)
        on_later = sum(times["memory"][1:]) / (epochs - 1)
        off = sum(times["off"]) / epochs
        print(f"| {k} | {times['memory'][0]:.1f} s | {on_later:.2f} s | {off:.1f} s | **{off / on_later:.1f}×** |")


def cmd_joint(work: Path, steps: int) -> None:
    """The new task trained jointly with the base tasks from the pretrained encoder (k = 6, the whole
    encoder fine-tuned), ``steps`` steps of 16 under uniform sampling (a third of them the new task's)."""
    from mtl_ray.config import config_from_dict
    from mtl_ray.training.run import train

    cfg = {
        "tasks": {**BASE_TASKS, **new_task(work)},
        "model": {"encoder": ENCODER, "sharing_depth": 6},
        "train": {
            "max_steps": steps,
            "batch_size": 16,
            "lr": 1e-4,
            "eval_every": steps,
            "log_every": 20,
            "device": "cpu",
            "sampler": "uniform",
            "output_dir": str(work / "joint"),
        },
    }
    start = time.perf_counter()
    summary = train(config_from_dict(cfg), progress=False)
    print(f"joint: {time.perf_counter() - start:.0f} s; {NEW} test: {summary['test'][NEW]}")
    (work / "joint.json").write_text(json.dumps(summary["test"], indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["base", "live", "cache", "joint"])
    ap.add_argument("--work", default="runs/bench-add-task")
    ap.add_argument("--epochs", type=int, default=3, help="cache: epochs per arm")
    ap.add_argument("--joint-steps", type=int, default=120, help="joint: optimizer steps of 16")
    ap.add_argument("--depths", default="6,4", help="sharing depths to run (base, live, cache)")
    args = ap.parse_args()
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    depths = tuple(int(k) for k in args.depths.split(","))
    if args.phase == "base":
        cmd_base(work, depths)
    elif args.phase == "live":
        cmd_live(work, depths)
    elif args.phase == "cache":
        cmd_cache(work, depths, args.epochs)
    else:
        cmd_joint(work, args.joint_steps)


if __name__ == "__main__":
    main()
