"""The data layer: pinned assets, built-in corpora, user files, splits, tokenization.

Entry points (import them from their modules; this package imports nothing heavy):

- :func:`mtl_ray.data.sources.load_task_splits` — any task source → standardized ``DatasetDict``
- :func:`mtl_ray.data.prepare.prepare_builtin` — build the built-in corpora into the cache
- :func:`mtl_ray.data.tokenize.tokenize_split` / :func:`mtl_ray.data.tokenize.collate`
- :func:`mtl_ray.data.assets.fetch_asset` / :func:`mtl_ray.data.assets.encoder_dir`
"""
