"""A local Ray for the Ray Train integration tests.

One Ray per test module (module scope, so a module that starts its own Ray, like the Serve tests,
never meets one left running): 4 logical CPUs on this 2-core machine, loopback only, its own short
temp dir (Ray's socket paths must stay short). Teardown removes leftover placement groups of failed
runs before shutting down, so a broken test cannot leave CPUs reserved for the next one.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: bind 127.0.0.1


@pytest.fixture(scope="module")
def train_cluster():
    import ray
    from ray_helpers import local_ray

    with local_ray(dashboard=True):  # Ray Train's placement-group cleaner queries the state API
        try:
            yield ray.cluster_resources()
        finally:
            _remove_placement_groups()


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
