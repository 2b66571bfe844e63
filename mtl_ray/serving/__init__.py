"""Ray Serve: a shared-encoder deployment that fans out to one head deployment per task.

Plain pieces (no Ray): ``config`` (typed serve config), ``parts`` (encoder / head loaded from a
checkpoint), ``gateway`` (validation, tokenization, fan-out, merge), ``http_api`` (FastAPI routes),
``schemas`` (request / response models). Ray: ``deployments`` and ``app`` (``build_app``).
Nothing here starts Ray at import.
"""
