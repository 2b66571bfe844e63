"""Knowledge distillation from single-task teachers into the shared model (``train.distill_from``).

MT-DNN-KD (Liu, He, Chen & Gao 2019, "Improving Multi-Task Deep Neural Networks via Knowledge
Distillation for Natural Language Understanding"): train one model per task, then train the
multi-task model on each task's hard labels plus its teacher's soft targets; the distilled
multi-task model beat the undistilled one on 7 of 9 GLUE tasks at the serving cost of one model.
Per task with a teacher, by what its type's labels are (``label_kind``), with α = ``distill_alpha``
and T = ``distill_temperature``:

    "class" (classification, pair_classification):
        (1 - α) · CE(z_s, y) + α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))
        (Hinton, Vinyals & Dean 2015: the T² keeps the soft term's gradients at the scale of the
        hard term's as T changes)
    "value" (regression):
        (1 - α) · MSE(ŷ_s, y) + α · MSE(ŷ_s, ŷ_t)
    no labels (contrastive, other unsupervised types): not distilled, the task's own loss.

Teachers are mtl-ray checkpoints (single- or multi-task); each student task is taught by the one
teacher that holds it (two → an error naming both; none → hard labels only, said in the log). Their
outputs come from :mod:`mtl_ray.training.teacher_cache`: computed once over the train split and read
back by later runs, so no teacher is in memory while the student trains. Every mismatch that would
make a teacher's outputs meaningless (task type, class names and their order, tokenizer) fails here,
before the first step.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_ray.checkpoint import MANIFEST_FILE, TOKENIZER_DIR, load_checkpoint, load_meta, verify_checkpoint
from mtl_ray.config import Config
from mtl_ray.crypto import CheckpointKeys
from mtl_ray.errors import CheckpointError, ConfigError
from mtl_ray.model.multitask import MultiTaskModel
from mtl_ray.tasks.base import TaskSpec, get_task_type
from mtl_ray.training import distributed as dist_utils
from mtl_ray.training import teacher_cache
from mtl_ray.training.checkpointing import FORMAT, model_from_checkpoint, saved_aggregate
from mtl_ray.training.task_data import TaskData

KEY = "train.distill_from"
DISTILLED_KINDS = ("class", "value")  # label kinds with a soft target; others train on their own loss
# Text a tokenizer's normalisation shows on: case, accents, punctuation, digits, CJK
PROBE_TEXT = "Distillation: naïve CAFÉ façade, 1,234.5 tokens — Tōkyō 東京!"


# --------------------------------------------------------------------------- the loss


def soft_loss(label_kind: str, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """The soft term: T² · KL(p_t ‖ p_s) at temperature T, mean over the batch, for (B, C) logits;
    MSE to the teacher's predictions for (B,) values."""
    if label_kind == "class":
        log_p_s = F.log_softmax(student.float() / temperature, dim=-1)  # (B, C)
        log_p_t = F.log_softmax(teacher.float() / temperature, dim=-1)  # (B, C)
        kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")  # Σ p_t (log p_t - log p_s) / B
        return kl * temperature**2
    if label_kind == "value":
        return F.mse_loss(student.float().reshape(-1), teacher.float().reshape(-1))
    raise ValueError(f"no soft target for label kind {label_kind!r}; distilled kinds: {DISTILLED_KINDS}")


def mix(hard: Tensor, soft: Tensor, alpha: float) -> Tensor:
    """(1 - α) · hard + α · soft."""
    return (1.0 - alpha) * hard + alpha * soft


# --------------------------------------------------------------------------- finding teachers


def is_checkpoint(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def best_of_run(run: Path) -> Path | None:
    """A run folder's best checkpoint: ``summary.json``'s ``best_checkpoint`` (``--no-ray`` and Ray Train
    runs write it), else the one with the highest validation aggregate under ``checkpoints/`` (``--no-ray``)
    or directly in the folder (Ray Train's ``step-*``), e.g. for a run that has not finished."""
    summary = run / "summary.json"
    if summary.is_file():
        best = json.loads(summary.read_text(encoding="utf-8")).get("best_checkpoint")
        if best:
            for candidate in (Path(best), run / "checkpoints" / Path(best).name, run / Path(best).name):
                if is_checkpoint(candidate):  # the last two: a run folder moved since it was written
                    return candidate
    found = [p for d in (run / "checkpoints", run) if d.is_dir() for p in sorted(d.iterdir()) if is_checkpoint(p)]
    if not found:
        return None
    return max(found, key=lambda p: (saved_aggregate(p), p.name))  # ties: the later step


def is_run_folder(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "checkpoints").is_dir()


def _checkpoints_at(path: Path) -> list[Path]:
    if is_checkpoint(path):
        return [path]
    if is_run_folder(path):
        best = best_of_run(path)
        if best is None:
            raise ConfigError(f"{KEY}: {path} is a run folder without a checkpoint (deleted after the run?)")
        return [best]
    return []


def find_teachers(distill_from: str | Sequence[str]) -> list[Path]:
    """Teacher checkpoint folders: each entry is a checkpoint, a run folder (its best checkpoint), or a
    folder holding those one level deep (e.g. a study's ``<dir>/<task>/checkpoints/...``)."""
    entries = [distill_from] if isinstance(distill_from, str) else list(distill_from)
    found: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.exists():
            raise ConfigError(f"{KEY}: {entry} does not exist")
        ckpts = _checkpoints_at(path)
        if not ckpts and path.is_dir():
            ckpts = [c for child in sorted(path.iterdir()) if child.is_dir() for c in _checkpoints_at(child)]
        if not ckpts:
            raise ConfigError(
                f"{KEY}: {entry} holds no mtl-ray checkpoint (give a checkpoint, a run folder, or a folder of "
                "those one level deep)"
            )
        found.extend(ckpts)
    return list({p.resolve(): None for p in found})  # in order, each once


@dataclass(frozen=True)
class Teacher:
    """A verified teacher checkpoint: where it is, what it holds, its content fingerprint."""

    path: Path
    specs: dict[str, TaskSpec]
    meta: dict[str, Any]
    fingerprint: str

    @classmethod
    def read(cls, path: Path, keys: CheckpointKeys | None) -> Teacher:
        """Verify the checkpoint (manifest hashes; the signature when a trusted key is configured) and read its meta."""
        verify_checkpoint(path, keys, hash_encrypted=False)  # the weights' ciphertext is hashed when loaded
        meta = load_meta(path)
        if meta.get("format") != FORMAT or not isinstance(meta.get("specs"), dict):
            raise CheckpointError(
                f"{KEY}: {path} is not an mtl-ray checkpoint (meta.json format={meta.get('format')!r})"
            )
        specs = {name: TaskSpec.from_dict(d) for name, d in meta["specs"].items()}
        return cls(path, specs, meta, teacher_cache.checkpoint_fingerprint(path))


def assign_teachers(specs: Mapping[str, TaskSpec], teachers: Sequence[Teacher]) -> dict[str, Teacher]:
    """``{task: its teacher}`` for the student's tasks that a teacher holds, after checking that the
    teacher trained the task as the same type with the same class names in the same order."""
    out: dict[str, Teacher] = {}
    for task in sorted(specs):
        holders = [t for t in teachers if task in t.specs]
        if len(holders) > 1:
            raise ConfigError(
                f"{KEY}: task {task!r} is held by two teachers, {holders[0].path} and {holders[1].path}; "
                "give one teacher per task"
            )
        if not holders:
            continue
        teacher, mine, theirs = holders[0], specs[task], holders[0].specs[task]
        if theirs.type != mine.type:
            raise ConfigError(
                f"{KEY}: task {task!r}: teacher {teacher.path} trained it as {theirs.type}, this config has {mine.type}"
            )
        if theirs.label_names != mine.label_names:
            order = (
                " (the same classes in another order)"
                if sorted(theirs.label_names or ()) == sorted(mine.label_names or ())
                else ""
            )
            raise ConfigError(
                f"{KEY}: task {task!r}: teacher {teacher.path} has labels {list(theirs.label_names or ())}, the "
                f"student has {list(mine.label_names or ())}{order}"
            )
        out[task] = teacher
    return out


def tokenizer_mismatch(teacher_tokenizer: Any, student_tokenizer: Any) -> str | None:
    """Why the two tokenizers would give one text different token ids, or None when they agree."""
    theirs, mine = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if len(theirs) != len(mine):
        return f"vocabularies of {len(theirs)} and {len(mine)} tokens"
    differ = sum(1 for token, i in theirs.items() if mine.get(token) != i)
    if differ:
        return f"vocabularies of {len(mine)} tokens that differ in {differ} entries"
    if teacher_tokenizer(PROBE_TEXT)["input_ids"] != student_tokenizer(PROBE_TEXT)["input_ids"]:
        return "the same vocabulary, but they split text differently (lower-casing, accents or normalisation)"
    return None


def check_tokenizer(task: str, teacher: Teacher, student_tokenizer: Any, encoder: str) -> None:
    """The teacher reads the student's token ids, so its tokenizer must be the student's."""
    from transformers import AutoTokenizer

    tok_dir = teacher.path / TOKENIZER_DIR
    if tok_dir.is_dir():
        why = tokenizer_mismatch(
            AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False), student_tokenizer
        )
    else:  # a checkpoint saved without its tokenizer: the encoder it names must be the student's
        theirs = teacher.meta.get("config", {}).get("model", {}).get("encoder")
        why = None if theirs == encoder else f"no tokenizer saved, and its model.encoder is {theirs!r}"
    if why is not None:
        raise ConfigError(
            f"{KEY}: task {task!r}: teacher {teacher.path} has a different tokenizer than model.encoder {encoder!r} "
            f"({why}); it would read other token ids than the student"
        )


# --------------------------------------------------------------------------- training


class Distiller:
    """The distilled tasks' loss: ``loss(task, batch, indices)`` in place of ``model.loss(task, batch)``.

    ``targets[task]``: the teacher's outputs for every row of the task's train split, (N, C) or (N,)
    float32; ``indices`` are the batch's rows in that split (the task stream's indices)."""

    def __init__(
        self, model: MultiTaskModel, targets: Mapping[str, np.ndarray], *, temperature: float, alpha: float
    ) -> None:
        self.model = model
        self.targets = dict(targets)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.teacher_batches = 0  # teacher forwards this distiller ran (0 when every output came from the cache)
        self._parts: dict[str, list[float]] = defaultdict(list)  # "loss/<task>/hard|soft" -> this step's values

    def teaches(self, task: str) -> bool:
        return task in self.targets

    def loss(self, task: str, batch: dict[str, Tensor], indices: Sequence[int]) -> Tensor:
        """(1 - α) · the type's own loss + α · the soft loss against the teacher's outputs for ``indices``."""
        spec = self.model.specs[task]
        ttype = get_task_type(spec.type)
        batch = ttype.train_batch(batch)
        output = self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), [task])[task]
        teacher = torch.from_numpy(self.targets[task][np.asarray(indices, dtype=np.int64)]).to(output.device)
        hard = ttype.loss(output, batch, spec)
        soft = soft_loss(ttype.label_kind, output, teacher, self.temperature)
        self._parts[f"loss/{task}/hard"].append(float(hard.detach()))
        self._parts[f"loss/{task}/soft"].append(float(soft.detach()))
        return mix(hard, soft, self.alpha)

    def pop_metrics(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """The hard and soft losses of the step's distilled slices (mean over every slice of every rank;
        an elastic run's ranks may compute different numbers of slices), then reset."""
        local = {f"sum/{k}": float(np.sum(v)) for k, v in self._parts.items()}
        local.update({f"n/{k}": float(len(v)) for k, v in self._parts.items()})
        keys = sorted(self._parts)
        self._parts.clear()
        totals = dist_utils.sum_dict_across_ranks(local, device)  # every rank drew the same tasks: same keys
        return {k: totals[f"sum/{k}"] / totals[f"n/{k}"] for k in keys}

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_training(
        cls,
        cfg: Config,
        model: MultiTaskModel,
        data: Mapping[str, TaskData],
        pad_token_id: int,
        device: torch.device,
        echo: Any = print,
    ) -> Distiller:
        """Find and check the teachers of ``cfg.train.distill_from`` against the student's trained tasks
        (``data``: those with an in-memory train split), then read (or compute once) their outputs."""
        from transformers import AutoTokenizer

        from mtl_ray.training.driver import tokenizer_location

        tcfg = cfg.train
        keys = CheckpointKeys.from_config(cfg.checkpoint)
        teachers = [Teacher.read(p, keys) for p in find_teachers(tcfg.distill_from or [])]
        specs = {t: d.spec for t, d in data.items()}
        assigned = assign_teachers(specs, teachers)
        unsupervised = sorted(t for t in specs if get_task_type(specs[t].type).label_kind not in DISTILLED_KINDS)
        assigned = {t: teacher for t, teacher in assigned.items() if t not in unsupervised}
        student_tokenizer = AutoTokenizer.from_pretrained(tokenizer_location(cfg), trust_remote_code=False)
        for task, teacher in sorted(assigned.items()):
            check_tokenizer(task, teacher, student_tokenizer, cfg.model.encoder)

        cache_dir = cfg.data.resolved_cache_dir()
        entries = {}
        for task, teacher in sorted(assigned.items()):
            split = data[task].splits["train"]
            meta = teacher_cache.entry_meta(
                teacher.path,
                teacher.fingerprint,
                task,
                teacher_cache.split_digest(split),
                specs[task].max_length,
                len(split),
            )
            entries[task] = (teacher_cache.entry_path(cache_dir, meta), meta)
        distiller = cls(model, {}, temperature=tcfg.distill_temperature, alpha=tcfg.distill_alpha)
        rank, _ = dist_utils.rank_and_world()
        # rank 0 computes what is missing while the others wait; a rank that still finds nothing (another
        # node's cache dir) computes its own copy: atomic renames keep concurrent writers from clashing
        computed = (
            distiller._fill(entries, assigned, data, keys, pad_token_id, device, tcfg.eval_batch_size)
            if rank == 0
            else []
        )
        if dist_utils.is_distributed():
            torch.distributed.barrier()
        if rank != 0:
            computed = distiller._fill(entries, assigned, data, keys, pad_token_id, device, tcfg.eval_batch_size)
        for task, (path, meta) in entries.items():
            values = teacher_cache.read_entry(path, meta["num_examples"])
            if values is None:
                raise CheckpointError(f"{KEY}: task {task!r}: the teacher cache {path} could not be read back")
            distiller.targets[task] = values
        if rank == 0:
            for task, teacher in sorted(assigned.items()):
                how = "computed" if task in computed else "cached"
                echo(f"distill: {task} <- {teacher.path} (outputs {how}: {entries[task][0]})")
            for task in sorted(set(specs) - set(assigned)):
                reason = "unsupervised: its own loss only" if task in unsupervised else "no teacher: hard labels only"
                echo(f"distill: {task} not distilled ({reason})")
        return distiller

    def _fill(
        self,
        entries: Mapping[str, tuple[Path, dict[str, Any]]],
        assigned: Mapping[str, Teacher],
        data: Mapping[str, TaskData],
        keys: CheckpointKeys | None,
        pad_token_id: int,
        device: torch.device,
        batch_size: int,
    ) -> list[str]:
        """Compute and store every missing entry, loading each teacher once; returns the tasks computed."""
        missing = [
            t for t, (path, meta) in entries.items() if teacher_cache.read_entry(path, meta["num_examples"]) is None
        ]
        by_teacher: dict[Path, list[str]] = defaultdict(list)
        for task in missing:
            by_teacher[assigned[task].path].append(task)
        for path, tasks in by_teacher.items():
            ckpt = load_checkpoint(path, verify=True, load_training_state=False, keys=keys)
            teacher_model, _ = model_from_checkpoint(ckpt)
            teacher_model.to(device)
            for task in tasks:
                split = data[task].splits["train"]
                values = teacher_cache.run_teacher(
                    teacher_model, task, split, pad_token_id=pad_token_id, batch_size=batch_size, device=device
                )
                self.teacher_batches += -(-len(split) // batch_size)
                teacher_cache.write_entry(entries[task][0], values, entries[task][1])
            del teacher_model, ckpt  # no teacher stays in memory while the student trains
        return missing
