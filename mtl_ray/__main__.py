"""``python -m mtl_ray ...`` is ``mtl-ray ...`` (useful where the console script is not on PATH, e.g. a
Ray job's interpreter)."""

import sys

from mtl_ray.cli import main

sys.exit(main())
