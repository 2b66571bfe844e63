"""Serving pieces that import no Ray: ``config`` (typed serve config), ``parts`` (encoder / head
loaded from a checkpoint), ``gateway`` (validation, tokenization, fan-out, merge), ``http_api``
(FastAPI routes), ``schemas`` (request / response models). The Serve deployments and the app builder
that wrap them are in :mod:`mtl_ray.ray.serve`. Nothing here starts Ray at import.
"""
