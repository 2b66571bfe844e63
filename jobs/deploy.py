"""Ray Jobs entrypoint: deploy the Serve app for a checkpoint onto the cluster the job runs on.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        "$PWD/.venv/bin/python" jobs/deploy.py --checkpoint /abs/runs/smoke/checkpoints/step-0000010 \
        --port 8000 [--config serve.yaml] [--set encoder.num_cpus=2 ...]

The checkpoint is verified before anything is deployed. The job waits until ``/healthz`` answers,
prints the URL and exits 0; the app keeps running on the cluster (Serve apps outlive the job's
driver). Remove it with ``serve delete <app-name>`` or ``serve shutdown -y -a <dashboard address>``.
A config or checkpoint problem exits with status 2 and one ``error:`` line (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import mtl_ray  # noqa: F401
except ImportError:  # `python jobs/deploy.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtl_ray.errors import MtlRayError
from mtl_ray.ray.job_env import add_address_arg, job_parser, run_job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser(__file__, __doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (verified before deploying)")
    p.add_argument("--config", "-c", default=None, help="serve config YAML (mtl_ray.serving.config.ServeConfig)")
    p.add_argument("--set", action="append", default=[], metavar="key=value", help="serve config override")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host of the Serve proxy")
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the Serve proxy")
    p.add_argument("--app-name", default="mtl", help="Serve application name")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /healthz")
    add_address_arg(p)
    p.add_argument("--ssl-certfile", default=None, help="HTTPS: PEM certificate for Serve's proxy (with --ssl-keyfile)")
    p.add_argument("--ssl-keyfile", default=None, help="HTTPS: PEM private key of that certificate")
    return p.parse_args(argv)


def wait_healthy(url: str, timeout_s: float, verify: str | bool = True) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5, verify=verify)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise MtlRayError(f"deploy: {url} did not answer within {timeout_s:.0f} s (last: {last})")


def deploy(args: argparse.Namespace) -> int:
    from mtl_ray.ray.serve.app import build_app, https_options
    from mtl_ray.serving.config import load_serve_config, read_api_key

    cfg = load_serve_config(args.config, args.set, checkpoint=args.checkpoint)
    read_api_key(cfg.auth)  # auth configured but no key: fail here, not in a replica
    app = build_app(cfg)  # verifies the checkpoint (manifest, sizes, sha256) before Ray is touched
    tls = https_options(args.ssl_certfile, args.ssl_keyfile)

    import ray
    from ray import serve

    from mtl_ray.ray.session import resolve_address

    started = time.perf_counter()
    ray.init(address=resolve_address(args.address) or "auto", log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port, **tls})
    try:
        serve.run(app, name=args.app_name, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # the deploy failed in a replica: Serve's message says why
        raise MtlRayError(f"deploy of app {args.app_name!r} failed: {str(exc).strip().splitlines()[-1]}") from None
    base = f"{'https' if tls else 'http'}://{args.host}:{args.port}"
    # a liveness probe of our own proxy (no data sent): the certificate may be self-signed or chain to
    # a CA this pod does not hold, so it is not checked here; clients check it
    wait_healthy(f"{base}/healthz", args.timeout, verify=not tls)
    print(f"deployed {cfg.checkpoint} as app {args.app_name!r} in {time.perf_counter() - started:.1f} s")
    print(f"serving at {base}/v1/predict (docs: {base}/docs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_job(__file__, lambda: deploy(args))


if __name__ == "__main__":
    sys.exit(main())
