"""``ray.num_workers: [min, max]`` (elastic training) without starting Ray: the YAML and ``key=value``
forms, the errors, the driver's resource check on the min, the global batch and the ScalingConfig."""

from __future__ import annotations

import pytest

from mtl_ray.config import config_from_dict, load_config
from mtl_ray.errors import ConfigError, MtlRayError
from mtl_ray.ray.session import check_resources
from mtl_ray.ray.train import RAY_TRAIN_ENV_DEFAULTS, build_torch_trainer, global_batch_size, resource_request

TASKS = {"t": {"source": "x.csv"}}


def cfg(**ray):
    return config_from_dict({"tasks": TASKS, "ray": ray})


def test_yaml_list_and_override_give_the_same_range(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks: {t: {source: x.csv}}\nray:\n  num_workers: [1, 2]\n")
    from_yaml = load_config(path)
    from_override = load_config(path, ["ray.num_workers=[1,2]"])
    for c in (from_yaml, from_override):
        assert c.ray.num_workers == [1, 2]
        assert (c.ray.elastic, c.ray.min_workers, c.ray.max_workers) == (True, 1, 2)
    fixed = load_config(path, ["ray.num_workers=3"]).ray
    assert (fixed.elastic, fixed.min_workers, fixed.max_workers) == (False, 3, 3)


@pytest.mark.parametrize(
    "ray, message",
    [
        ({"num_workers": [2, 1]}, "ray.num_workers: min 2 is larger than max 1 in [2, 1]"),
        ({"num_workers": [0, 2]}, "ray.num_workers: min must be >= 1, got [0, 2]"),
        ({"num_workers": [1, 2, 3]}, "ray.num_workers: expected an int or [min, max], got 3 values [1, 2, 3]"),
        ({"num_workers": ["a", 2]}, "ray.num_workers: expected int | list[int], got list ['a', 2]"),
        (
            {"num_workers": [1, 2], "streaming": True},
            "ray.num_workers: elastic [1, 2] is not supported with ray.streaming (Ray Data splits the stream for a "
            "fixed number of workers); give an int or set ray.streaming=false",
        ),
        ({"elastic_resize_interval_s": -1.0}, "ray.elastic_resize_interval_s: must be >= 0, got -1.0"),
    ],
)
def test_bad_ranges_name_the_key(ray, message):
    with pytest.raises(ConfigError) as exc:
        cfg(**ray)
    assert str(exc.value) == message


def test_a_min_the_cluster_can_never_hold_fails_naming_the_key_and_the_cpus():
    c = cfg(num_workers=[3, 4], cpus_per_worker=1.0)
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    with pytest.raises(MtlRayError) as exc:
        check_resources(resource_request(c), {"CPU": 2.0}, nodes)
    assert str(exc.value) == (
        "the Ray cluster cannot fit this run: CPU: needs 3 (ray.num_workers min 3 of [3, 4]: 3 workers × 1 CPU), "
        "the cluster has 2 (lower ray.num_workers / ray.cpus_per_worker, set ray.use_gpu=false, or use a bigger "
        "cluster)"
    )
    # the max may exceed the cluster: elastic training starts with what fits
    check_resources(resource_request(cfg(num_workers=[2, 8])), {"CPU": 2.0}, nodes)


def test_the_global_batch_is_the_max_workers_one():
    c = config_from_dict(
        {"tasks": TASKS, "train": {"batch_size": 8, "grad_accum_steps": 3}, "ray": {"num_workers": [1, 4]}}
    )
    assert global_batch_size(c) == 8 * 4 * 3


def test_the_torch_trainer_gets_an_elastic_scaling_config(tmp_path, monkeypatch):
    for key, value in RAY_TRAIN_ENV_DEFAULTS.items():  # build_torch_trainer sets them: undone after the test
        monkeypatch.setenv(key, value)
    c = cfg(num_workers=[1, 2], elastic_resize_interval_s=5.0)
    trainer = build_torch_trainer(c, name="x", storage=str(tmp_path), loop_config={}, num_to_keep=1)
    scaling = trainer.scaling_config
    assert (scaling.num_workers, scaling.min_workers, scaling.max_workers) == ((1, 2), 1, 2)
    assert scaling.elastic_resize_monitor_interval_s == 5.0
    fixed = build_torch_trainer(cfg(num_workers=2), name="x", storage=str(tmp_path), loop_config={}, num_to_keep=1)
    assert fixed.scaling_config.num_workers == 2 and not fixed.scaling_config.elasticity_enabled
