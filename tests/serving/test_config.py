"""The typed serve config: validation names the key; options map onto Serve's."""

from __future__ import annotations

import pytest

from mtl_ray.errors import ConfigError
from mtl_ray.serving.config import (
    AuthConfig,
    DeploymentOptions,
    ServeConfig,
    load_serve_config,
    read_api_key,
    serve_config_from_dict,
    torch_threads_for,
)


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("checkpoint: ck\nencoder:\n  num_cpus: 2\n  max_replicas: 3\n")
    cfg = load_serve_config(
        path, ["batching.max_batch_size=8", "heads.sentiment.options.num_cpus=0.5"], precision="int8"
    )
    assert cfg.checkpoint == str(tmp_path.cwd() / "ck")  # made absolute: replicas run elsewhere
    assert cfg.precision == "int8" and cfg.batching.max_batch_size == 8
    assert cfg.encoder.num_cpus == 2 and cfg.encoder.max_replicas == 3 and cfg.encoder.min_replicas == 1
    assert cfg.encoder.max_ongoing_requests == 64  # a partial section keeps that section's own defaults
    assert cfg.head_options("sentiment").num_cpus == 0.5
    assert cfg.head_options("score") == cfg.head  # no override: the shared head default
    assert cfg.head_checkpoint("score") == cfg.checkpoint


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "checkpoint: Field required"),
        ({"checkpoint": "x", "encoderr": {}}, "encoderr: Extra inputs are not permitted"),
        ({"checkpoint": "x", "encoder": {"num_cpus": "two"}}, "encoder.num_cpus"),
        ({"checkpoint": "x", "encoder": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas (3) > max_replicas (2)"),
        ({"checkpoint": "x", "precision": "fp8"}, "precision"),
        ({"checkpoint": "x", "batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"checkpoint": "x", "auth": {"api_key_env": "A", "api_key_file": "f"}}, "not both"),
        ({"checkpoint": "x", "head": {"graceful_shutdown_wait_loop_s": 0}}, "head.graceful_shutdown_wait_loop_s"),
    ],
)
def test_invalid_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match="serve config") as info:
        serve_config_from_dict(data)
    assert message in str(info.value)


def test_deployment_options_map_onto_serve_options():
    opts = DeploymentOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=8, num_cpus=0.5, num_gpus=1)
    assert opts.serve_options() == {
        "max_ongoing_requests": 16,
        "autoscaling_config": {
            "min_replicas": 1,
            "initial_replicas": 1,
            "max_replicas": 4,
            "target_ongoing_requests": 8.0,
        },
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 1.0},
        "graceful_shutdown_wait_loop_s": 0.25,  # Serve's default is 2 s: each replaced replica waited that long
    }
    assert "num_gpus" not in DeploymentOptions().serve_options()["ray_actor_options"]
    assert [torch_threads_for(c) for c in (0.25, 1, 1.6, 4)] == [1, 1, 2, 4]
    # ingress and encoder accept many concurrent requests: max_ongoing_requests caps the batch
    cfg = ServeConfig(checkpoint="x")
    assert cfg.encoder.max_ongoing_requests >= cfg.batching.max_batch_size and cfg.ingress.max_ongoing_requests >= 32


def test_api_key_sources(tmp_path, monkeypatch):
    assert read_api_key(AuthConfig()) is None
    monkeypatch.setenv("MTL_KEY", " k1 \n")
    assert read_api_key(AuthConfig(api_key_env="MTL_KEY")) == "k1"
    monkeypatch.delenv("MTL_KEY")
    with pytest.raises(ConfigError, match="'MTL_KEY' is unset or empty"):
        read_api_key(AuthConfig(api_key_env="MTL_KEY"))
    key = tmp_path / "key"
    key.write_text("k2\n")
    assert read_api_key(AuthConfig(api_key_file=str(key))) == "k2"
    with pytest.raises(ConfigError, match="cannot read"):
        read_api_key(AuthConfig(api_key_file=str(tmp_path / "missing")))
    key.write_text("  ")
    with pytest.raises(ConfigError, match="is empty"):
        read_api_key(AuthConfig(api_key_file=str(key)))
