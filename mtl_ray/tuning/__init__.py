"""Plain-Python pieces of Ray Tune search (no ``ray`` here): the search space, the trial list,
Δm% against single-task baselines, the results table, the best-config export and the plots.
``mtl_ray/ray/tune.py`` is the Ray shell that runs the trials."""
