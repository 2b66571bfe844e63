"""A local Ray for the Ray Train integration tests, and a dropout-free tiny encoder.

One Ray per test module (module scope, so a module that starts its own Ray, like the Serve tests,
never meets one left running): 4 logical CPUs on this 2-core machine, loopback only, its own short
temp dir (Ray's socket paths must stay short). Teardown removes leftover placement groups of failed
runs before shutting down, so a broken test cannot leave CPUs reserved for the next one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: bind 127.0.0.1


@pytest.fixture(scope="module")
def train_cluster():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,  # Ray Train's placement-group cleaner queries the state API
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
    )
    try:
        yield ray.cluster_resources()
    finally:
        _remove_placement_groups()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def no_leftover_placement_groups():
    """After the test: remove placement groups a failed or timed-out run left reserved."""
    yield
    import ray

    if ray.is_initialized():
        _remove_placement_groups()


def _remove_placement_groups() -> None:
    from ray._raylet import PlacementGroupID
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    for pg_id, info in placement_group_table().items():
        if info.get("state") != "REMOVED":
            try:
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
            except Exception:  # removed meanwhile
                pass


@pytest.fixture(scope="session")
def nodrop_encoder_dir(tmp_path_factory) -> Path:
    """The tiny encoder with dropout off: data-parallel and single-process runs are then the same
    function of the same batches (dropout masks are drawn per rank)."""
    from mtl_ray.testing import make_tiny_encoder

    path = make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder-nodrop"))
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
