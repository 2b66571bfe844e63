"""The Ray shell: the only package of mtl_ray that imports ``ray`` (ruff's banned-api rule and
``tests/test_boundaries.py`` keep it so).

``session`` (join or start a Ray, reachability and resource checks), ``train`` (Ray Train around the
plain-torch loop), ``tune`` (Ray Tune trials and driver), ``data`` (Ray Data streaming of user files),
``demo`` (``mtl-ray demo``), ``cluster`` (offline ``cluster.yaml`` validation) and ``serve/``
(the Serve deployments and the app builder). Everything here calls into the Ray-free core.
Nothing here starts Ray at import.
"""
