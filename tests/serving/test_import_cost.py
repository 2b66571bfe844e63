"""What a Serve replica imports: the serving path loads the task types (every replica does), but not the
metric libraries, which only evaluation needs (scikit-learn and scipy.stats: ≈ 0.6 s of CPU per replica
start on this 2-core machine). The metrics' values are checked in tests/training/test_metrics.py."""

import subprocess
import sys


def test_the_serving_path_does_not_import_the_metric_libraries():
    code = (
        "import sys, mtl_ray.ray.serve.app, mtl_ray.serving.parts, mtl_ray.tasks; "
        "print(sorted(m for m in ('sklearn', 'scipy.stats', 'mtl_ray.tasks.mlm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    # the task types are loaded, the metric libraries are not
    assert out.stdout.strip().splitlines()[-1] == "['mtl_ray.tasks.mlm']"
