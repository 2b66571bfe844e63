"""``include_task_texts``: an unsupervised task also trains on the other tasks' training texts.

Task-adaptive pretraining (Gururangan et al. 2020, "Don't Stop Pretraining") trains the language
model on the task's own unlabeled inputs. Here an unsupervised task (``mlm``, ``contrastive``) with
``include_task_texts: true`` gets, appended to its own ``train`` split, the ``train``-split texts of
every other task in the config with their labels dropped. A pair task gives both of its texts, each
as a text of its own (an unsupervised task reads single texts).

No validation or test text of any task may be trained on (that would leak the texts the model is
scored on): only ``train`` splits are read, and a text that equals (whitespace-stripped) a validation
or test text of ANY task is dropped, from the added texts and from the task's own train split alike.
Texts already present are not added twice. The task's own validation / test splits are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mtl_ray.errors import DataError

TEXT_COLUMNS = ("text", "text_pair")
EVAL_SPLITS = ("validation", "test")


def _texts(ds: Any) -> Iterable[str]:
    for column in TEXT_COLUMNS:
        if column in ds.column_names:
            yield from ds[column]


def with_task_texts(task: str, splits: Any, others: Mapping[str, Any]) -> Any:
    """``splits`` (a ``DatasetDict`` with a ``text`` column) with the other tasks' train texts added
    to its train split, and every validation / test text of any task removed from that train split.

    ``others``: task name -> that task's standardized ``DatasetDict`` (the data layer's form)."""
    import datasets

    held_out: set[str] = set()
    for ds_dict in [splits, *others.values()]:
        for split in EVAL_SPLITS:
            if split in ds_dict:
                held_out.update(t.strip() for t in _texts(ds_dict[split]))
    own = [t for t in splits["train"]["text"] if t.strip() not in held_out]
    seen = {t.strip() for t in own}
    added: list[str] = []
    for name in sorted(others):
        if "train" not in others[name] or len(others[name]["train"]) == 0:
            raise DataError(
                f"tasks.{task}.include_task_texts: task {name!r} has no in-memory train split (streamed through "
                "Ray Data?); its texts cannot be added"
            )
        for text in _texts(others[name]["train"]):
            key = text.strip()
            if key not in held_out and key not in seen:
                seen.add(key)
                added.append(text)
    features = datasets.Features({"text": datasets.Value("string")})
    out = dict(splits)
    out["train"] = datasets.Dataset.from_dict({"text": own + added}, features=features)
    return datasets.DatasetDict(out)


def add_task_texts(tasks: Mapping[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (task -> splits) with :func:`with_task_texts` applied to every task whose config
    (``tasks``: name -> TaskConfig) sets ``include_task_texts``; the others' texts are their raw splits."""
    out = dict(raw)
    for name, task in sorted(tasks.items()):
        if getattr(task, "include_task_texts", False):
            others = {t: raw[t] for t in raw if t != name and not getattr(tasks[t], "include_task_texts", False)}
            out[name] = with_task_texts(name, raw[name], others)
    return out
