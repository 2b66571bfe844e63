"""cluster.yaml and the KubeRay manifests are validated offline, so a broken edit fails CI."""

from pathlib import Path

import pytest
import yaml

from mtl_ray.errors import ConfigError
from mtl_ray.ray.cluster import validate_cluster_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_own_schema():
    prepared = validate_cluster_config(ROOT / "cluster.yaml")
    workers = prepared["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert prepared["head_node_type"] == "head"
    assert prepared["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "torch==" in c for c in prepared["setup_commands"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(unknown_key=1), r"\(top level\): Additional properties are not allowed \('unknown_key'"),
        (lambda c: c["auth"].update(ssh_usr="x"), r"auth: Additional properties are not allowed \('ssh_usr'"),
        (lambda c: c.update(max_workers="four"), r"max_workers: 'four' is not of type 'integer'"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1),
            r"available_node_types.gpu_worker: Additional properties are not allowed \('min_worker'",
        ),
    ],
)
def test_a_broken_edit_names_the_offending_key(tmp_path, edit, message):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    edit(cfg)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        validate_cluster_config(path)
