"""Import path for the Serve CLI, from the repository root:

    serve run serve.app:app_builder checkpoint=/abs/path/to/checkpoint
    serve build serve.app:app_builder ...      (or, with every option: mtl-ray serve build --checkpoint PATH -o serve/config.yaml)

The builder is :func:`mtl_ray.ray.serve.app.build_app`, typed by :class:`mtl_ray.serving.config.ServeConfig`.
"""

from mtl_ray.ray.serve.app import build_app as app_builder

__all__ = ["app_builder"]
