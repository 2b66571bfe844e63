"""mtl-ray: multi-task NLP on Ray — one encoder, a sharing-depth dial, per-task heads."""

__version__ = "0.1.0"
