"""``mtl-ray serve``: start (or join) Ray, run the app on 127.0.0.1 by default, block until Ctrl-C."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from ray import serve

from mtl_ray.ray.logs import RayLogging, serve_log_dir
from mtl_ray.ray.serve.app import build_app, https_options
from mtl_ray.ray.session import ray_session, resolve_address
from mtl_ray.serving.config import ServeConfig


def run_serve(
    cfg: ServeConfig,
    *,
    host: str,
    port: int,
    app_name: str,
    route_prefix: str,
    num_cpus: int | None = None,
    verbose: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Serve ``cfg`` until interrupted. On a shared cluster (``RAY_ADDRESS``) only this app is removed at
    the end; an embedded Ray's Serve is shut down whole. ``verbose``: Ray's and Serve's own logs on the
    terminal (default: the URL and errors; Serve's logs, access logs included, stay in its log files)."""
    app = build_app(cfg)  # verifies the checkpoint(s) before Ray starts
    tls = https_options(ssl_certfile, ssl_keyfile)
    address = resolve_address()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    logs = RayLogging(verbose=verbose, worker_output=False)
    logs.apply_to_driver()
    with ray_session(address, num_cpus=num_cpus, init_kwargs=logs.init_kwargs()):
        # Ctrl-C and `kill` (a service manager) both shut the app down cleanly. Set after ray.init,
        # which installs its own SIGTERM handler; SIGINT is re-armed because a shell starts
        # background jobs with it ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, stop)
        try:
            serve.start(http_options={"host": host, "port": port, **tls}, logging_config=logs.serve_logging_config())
            serve.run(app, name=app_name, route_prefix=route_prefix)
            base = f"{'https' if tls else 'http'}://{host}:{port}{route_prefix.rstrip('/')}"
            print(f"serving {cfg.checkpoint} at {base}/v1/predict (docs: {base}/docs); Ctrl-C to stop", flush=True)
            if not verbose and (where := serve_log_dir()):
                print(f"Serve logs (access logs included): {where}; --verbose shows them here", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
        finally:
            if address:  # a shared cluster: remove only our app
                serve.delete(app_name)
            else:
                serve.shutdown()
