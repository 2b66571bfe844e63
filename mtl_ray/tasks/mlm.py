"""Masked-language modelling (Devlin et al. 2019, BERT) on unlabeled in-domain text: task-adaptive
pretraining (Gururangan et al. 2020, "Don't Stop Pretraining"), as an auxiliary task in the mix or as a
stage 0 before it (an mlm-only run whose checkpoint a later run starts from with ``model.init_from``).

Per batch, ``mask_probability`` (0.15) of the non-special, non-padding tokens are chosen; of those 80 %
become ``[MASK]``, 10 % a uniformly random token, 10 % stay as they are; the loss is the cross-entropy
of the original token at the chosen positions only (labels -100 elsewhere). The masks are drawn from a
generator seeded by one draw of torch's default CPU generator, which the loop seeds right before every
slice's forward from (seed, step, micro-batch, slice) (``MultiTaskTrainer._seed_slice``): a resumed run
masks exactly as the uninterrupted one, an elastic run's slice masks alike on any worker, and the masks do
not depend on the device.

The head is BERT's prediction head: dense H -> H, the encoder's activation, LayerNorm, then a decoder
to the vocabulary whose weight IS the encoder's input word-embedding matrix (weight tying, Press &
Wolf 2017; the same Parameter, not a copy) with a bias of its own. all-MiniLM-L6-v2 (a
sentence-transformers model) ships no MLM head, so the transform starts as BERT initialises it
(normal, std 0.02 = BERT's initializer_range; LayerNorm ones / zeros) and the bias at zero. The
decoder weight is not registered on the head, so it is saved once (``shared.embeddings.*``) and a
loaded model is tied again by construction. Only the masked positions are decoded: (M, V) logits
rather than (B, T, V), about 7x less decoder work at 15 %.

A fresh head's errors are large (its loss starts near ln V), and in its first steps they are what
the encoder learns from. ``head_warmup_steps: N`` trains only the head for the first N optimizer steps
of the run (the encoder and the tied embeddings get no gradient from this task; the loss is the same
value), the linear-probe-then-fine-tune order of Kumar et al. 2022. In an mlm-only run (a stage 0)
the encoder stays bit-identical through those steps.

Training only: no metrics (excluded from the aggregate and Δm%; the loop logs ``loss/<task>``), and
``served = False``: the Predictor and Serve refuse the task and never deploy its vocabulary-sized head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from mtl_ray.errors import ConfigError
from mtl_ray.tasks.base import LABELS, TaskSpec, register_task_type
from mtl_ray.tasks.heads import HEAD_INIT_STD
from mtl_ray.tasks.metric_fns import MetricFn

if TYPE_CHECKING:
    from mtl_ray.config import TaskConfig

DEFAULT_MASK_PROBABILITY = 0.15  # Devlin et al. 2019
IGNORE_INDEX = -100  # label of a position that is not predicted (F.cross_entropy's ignore_index)
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the chosen tokens: [MASK], a random token; the rest stay


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    mask_token_id: int,
    special_token_ids: Sequence[int],
    vocab_size: int,
    probability: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """BERT's masking of ``input_ids`` (B, T): ``(masked input ids, labels)``, both (B, T) int64 on the
    ids' device; labels hold the original id at the chosen positions and -100 elsewhere.

    Random numbers come from the CPU ``generator`` in a fixed order (choice, replacement kind, random
    ids), so the result is a function of the generator's state. A batch with no chosen token gets its
    one candidate of smallest draw chosen (a loss over no position would be NaN)."""
    ids = input_ids.detach().cpu()
    shape = ids.shape
    u = torch.rand(shape, generator=generator)  # which tokens are chosen
    v = torch.rand(shape, generator=generator)  # what a chosen token becomes
    random_ids = torch.randint(vocab_size, shape, generator=generator)
    special = torch.isin(ids, torch.tensor(sorted(special_token_ids), dtype=ids.dtype))
    candidates = attention_mask.detach().cpu().bool() & ~special  # (B, T)
    chosen = candidates & (u < probability)
    if not chosen.any() and candidates.any():
        chosen.view(-1)[torch.where(candidates, u, 2.0).view(-1).argmin()] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    masked = ids.clone()
    masked[chosen & (v < MASK_FRACTION)] = mask_token_id
    to_random = chosen & (v >= MASK_FRACTION) & (v < MASK_FRACTION + RANDOM_FRACTION)
    masked[to_random] = random_ids[to_random]
    return masked.to(input_ids.device), labels.to(input_ids.device)


def step_generator() -> torch.Generator:
    """A CPU generator for this micro-batch's masks, seeded by one draw of torch's default CPU generator
    (which ``MultiTaskTrainer._seed_slice`` seeds from (seed, step, micro-batch, slice) before each forward)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))


class MaskedLMHead(nn.Module):
    """BERT's MLM prediction head on token states (..., H) -> vocabulary logits (..., V).

    The decoder weight (V, H) is the encoder's input word-embedding matrix, handed in by
    :meth:`tie_input_embeddings` (``MultiTaskModel`` calls it); the bias (V,) is created then too."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act: nn.Module = nn.GELU()  # replaced by the encoder's hidden_act when tied
        self.layer_norm = nn.LayerNorm(hidden_size, eps=1e-12)  # ones / zeros; eps from the encoder when tied
        nn.init.normal_(self.dense.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.dense.bias)
        self.bias: nn.Parameter | None = None
        # a plain attribute, not a submodule: the weight belongs to (and is saved with) the shared encoder
        self.__dict__["_word_embeddings"] = None

    def tie_input_embeddings(self, word_embeddings: nn.Embedding, hf_config: Any) -> None:
        """Make ``word_embeddings.weight`` the decoder weight; take the encoder's activation and LN eps."""
        hidden = self.dense.out_features
        if word_embeddings.embedding_dim != hidden:
            raise ConfigError(
                f"mlm head: the encoder's word embeddings are {word_embeddings.embedding_dim}-dimensional but its "
                f"hidden size is {hidden} (factorised embeddings, e.g. ELECTRA); the tied decoder needs them equal"
            )
        self.__dict__["_word_embeddings"] = word_embeddings
        act = getattr(hf_config, "hidden_act", "gelu")
        self.act = ACT2FN[act] if isinstance(act, str) else act
        self.layer_norm.eps = float(getattr(hf_config, "layer_norm_eps", 1e-12))
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    @property
    def decoder_weight(self) -> nn.Parameter:
        """(V, H): the input word embeddings' own Parameter."""
        emb = self.__dict__["_word_embeddings"]
        if emb is None:
            raise RuntimeError("mlm head is not tied to input embeddings (build it through MultiTaskModel)")
        return emb.weight

    @property
    def vocab_size(self) -> int:
        return int(self.decoder_weight.shape[0])

    def forward(self, hidden: Tensor, *, train_decoder: bool = True) -> Tensor:  # (..., H) -> (..., V)
        """``train_decoder=False``: the tied weight is detached (the input embeddings get no gradient)."""
        h = self.layer_norm(self.act(self.dense(hidden)))
        weight = self.decoder_weight if train_decoder else self.decoder_weight.detach()
        return F.linear(h, weight, self.bias)


@dataclass(frozen=True)
class MaskedLMType:
    name: str = "mlm"
    is_pair: bool = False
    supervised: bool = False
    uses_temperature: bool = False
    has_classes: bool = False
    label_kind: str | None = None
    default_metrics: tuple[str, ...] = ()
    valid_metrics: tuple[str, ...] = ()
    primary_metric: str | None = None
    served: bool = False  # training only: the Predictor and Serve refuse it
    config_keys: tuple[str, ...] = ("mask_probability", "head_warmup_steps")  # TaskConfig keys only this type reads

    @property
    def metric_fns(self) -> Mapping[str, MetricFn]:
        return {}

    def resolve_options(self, task_cfg: TaskConfig, tokenizer: Any) -> dict[str, Any]:
        """The masking rate and the tokenizer's [MASK] and special token ids (``TaskSpec.options``)."""
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ConfigError(
                f"tasks.{task_cfg.name}: the encoder's tokenizer ({type(tokenizer).__name__}) has no mask token; an "
                "mlm task needs a BERT-style [MASK] token (model.encoder)"
            )
        p = task_cfg.mask_probability if task_cfg.mask_probability is not None else DEFAULT_MASK_PROBABILITY
        special = sorted({int(i) for i in tokenizer.all_special_ids} | {int(mask_id)})
        options = {"mask_probability": float(p), "mask_token_id": int(mask_id), "special_token_ids": special}
        if task_cfg.head_warmup_steps:  # only when set: specs of runs without a warm-up stay as they were
            options["head_warmup_steps"] = int(task_cfg.head_warmup_steps)
        return options

    def build_head(self, hidden_size: int, spec: TaskSpec, dropout: float) -> nn.Module:
        return MaskedLMHead(hidden_size)

    def model_loss(self, model: Any, task: str, batch: dict[str, Tensor], *, train_encoder: bool = True) -> Tensor:
        """Mask the batch, run the (shared + own) layers on it, decode the masked positions, mean CE.

        ``train_encoder=False`` (the head warm-up, ``head_warmup_steps``): the same value, but the encoder
        runs without autograd and the tied decoder weight is detached, so the gradient reaches only the
        head's own parameters (the transform, the LayerNorm and the decoder bias)."""
        spec = model.specs[task]
        opts = spec.options
        if not opts:
            raise ConfigError(
                f"tasks.{task}: the mlm spec has no masking options (mask token id); build the model with "
                "mtl_ray.training.builders.build_model, which reads them from the tokenizer"
            )
        head: MaskedLMHead = model.heads[task]
        mask = batch["attention_mask"]
        ids, labels = mask_tokens(
            batch["input_ids"],
            mask,
            mask_token_id=opts["mask_token_id"],
            special_token_ids=opts["special_token_ids"],
            vocab_size=head.vocab_size,
            probability=opts["mask_probability"],
            generator=step_generator(),
        )
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            hidden = model.task_hidden(
                task, model.encode_shared(ids, mask, batch.get("token_type_ids")), mask
            )  # (B,T,H)
        chosen = labels != IGNORE_INDEX  # (B, T)
        logits = head(hidden[chosen], train_decoder=train_encoder)  # (M, V): only the masked positions
        if logits.shape[0] == 0:  # no token to predict (all special): a zero loss that keeps the graph
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float(), labels[chosen])

    def train_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch  # masking needs the model's vocabulary: model_loss does it

    def loss(self, output: Tensor, batch: dict[str, Tensor], spec: TaskSpec) -> Tensor:
        """Mean CE of vocabulary logits (B, T, V) against token labels (B, T), -100 ignored."""
        return F.cross_entropy(output.float().flatten(0, -2), batch[LABELS].flatten(), ignore_index=IGNORE_INDEX)

    def postprocess(self, output: Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
        raise ValueError(f"task {spec.name!r} is an mlm training objective, not a served task")

    def metric_inputs(self, output: Tensor) -> Tensor:
        raise ValueError("an mlm task has no metrics")

    def metric_arrays(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("an mlm task has no labels to score")

    def baseline_prediction(self, train_labels: np.ndarray, n: int) -> np.ndarray:
        raise ValueError("an mlm task has no labels to predict")


MLM = register_task_type(MaskedLMType())
