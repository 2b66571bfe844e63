"""What a Serve replica imports: the serving path loads the task types (every replica does), but not the
metric libraries, which only evaluation needs (scikit-learn and scipy.stats: ≈ 0.6 s of CPU per replica
start on this 2-core machine)."""

import subprocess
import sys

from mtl_ray.tasks.metric_fns import CLASSIFICATION_METRICS, REGRESSION_METRICS


def test_the_serving_path_does_not_import_the_metric_libraries():
    code = (
        "import sys, mtl_ray.ray.serve.app, mtl_ray.serving.parts, mtl_ray.tasks; "
        "print(sorted(m for m in ('sklearn', 'scipy.stats', 'mtl_ray.tasks.mlm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "['mtl_ray.tasks.mlm']"  # the task types are there, the metric libraries not


def test_the_metrics_import_their_libraries_when_first_computed():
    import numpy as np

    pred, gold = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    assert CLASSIFICATION_METRICS["accuracy"](pred, gold, 2) == 0.75
    assert CLASSIFICATION_METRICS["macro_f1"](pred, gold, 2) == (0.8 + 2 / 3) / 2
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 2.5, 5.0])
    assert abs(REGRESSION_METRICS["pearson"](x, y, 0) - float(np.corrcoef(x, y)[0, 1])) < 1e-12
    assert REGRESSION_METRICS["spearman"](x, y, 0) == 1.0
    assert REGRESSION_METRICS["mse"](x, y, 0) == (0.25 + 1.0) / 4
