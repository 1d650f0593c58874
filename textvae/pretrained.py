"""Pretrained parts from ``transformers``: loading them with one-line errors, rebuilding them from
a checkpoint's saved configs, and the small adapters between their APIs and textvae's.

Training loads weights from ``model.encoder.name_or_path`` / ``model.decoder.name_or_path`` (a
local folder, or a hub name when the hub can be reached). A checkpoint stores the full weights
and each part's ``transformers`` config in config.json, so ``load_pretrained`` rebuilds the parts
with ``from_config`` and needs neither the original folder nor the network.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from textvae.errors import ConfigError
from textvae.tokenizer import EncoderTokenizer


@contextlib.contextmanager
def _quiet():
    """transformers prints progress bars and advice while loading; textvae reports in one line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _load_error(what: str, name_or_path: str, e: BaseException) -> ConfigError:
    if Path(name_or_path).expanduser().exists():
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return ConfigError(f"cannot load {what} from the folder {name_or_path!r}: {first}")
    return ConfigError(f"cannot load {what} {name_or_path!r}: no such local folder, and the Hugging Face hub cannot be "
                       f"reached (offline?); download the model elsewhere and give its local folder")


def _where(name_or_path: str) -> str:
    """A local folder (with ~ expanded) when there is one, else the name as given (a hub name)."""
    local = Path(name_or_path).expanduser()
    return str(local) if local.exists() else name_or_path


def load_encoder(name_or_path: str) -> nn.Module:
    """A pretrained encoder (``transformers.AutoModel``), float32, e.g. a BERT-family model."""
    from transformers import AutoModel

    try:
        with _quiet():
            model = AutoModel.from_pretrained(_where(name_or_path))
    except (OSError, ValueError, KeyError) as e:
        raise _load_error("model.encoder.name_or_path", name_or_path, e) from None
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(f"model.encoder.name_or_path {name_or_path!r} is an encoder-decoder model; give an encoder "
                          f"(e.g. a BERT-family model)")
    if getattr(model.config, "hidden_size", None) is None:
        raise ConfigError(f"model.encoder.name_or_path {name_or_path!r}: its config has no hidden_size")
    return model.float()


def load_causal_lm(name_or_path: str) -> nn.Module:
    """A pretrained causal language model (``transformers.AutoModelForCausalLM``), float32.

    Raises ConfigError when the folder does not hold one: a model type without a causal-LM head,
    or one whose attention is not causal (a BERT checkpoint loads as BertLMHeadModel but still
    attends to later tokens).
    """
    from transformers import AutoModelForCausalLM

    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(_where(name_or_path))
    except ValueError as e:  # "Unrecognized configuration class ... for AutoModelForCausalLM"
        if "Unrecognized configuration" in str(e) or "AutoModelForCausalLM" in str(e):
            raise ConfigError(f"model.decoder.name_or_path {name_or_path!r} is not a causal language model "
                              f"(transformers has no causal-LM head for it)") from None
        raise _load_error("model.decoder.name_or_path", name_or_path, e) from None
    except (OSError, KeyError) as e:
        raise _load_error("model.decoder.name_or_path", name_or_path, e) from None
    model = model.float()
    if not is_causal(model):
        raise ConfigError(f"model.decoder.name_or_path {name_or_path!r} ({type(model).__name__}) is not a causal "
                          f"language model: its first position sees later tokens")
    return model


@torch.no_grad()
def is_causal(model: nn.Module, length: int = 6) -> bool:
    """Probe: changing the last token must leave the logits of every earlier position unchanged."""
    was_training = model.training
    model.eval()
    V = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (1, length), generator=g)
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % V
    try:
        a = model(input_ids=ids).logits[:, :-1]
        b = model(input_ids=other).logits[:, :-1]
    finally:
        model.train(was_training)
    return bool(torch.allclose(a, b, atol=1e-5, rtol=1e-4))


def from_config(kind: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a part from its saved ``transformers`` config (random weights, no file or network
    access): ``kind`` 'encoder' (AutoModel) or 'decoder' (AutoModelForCausalLM)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ValueError(f"the saved {kind} config has no model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    with _quiet():
        cls = AutoModel if kind == "encoder" else AutoModelForCausalLM
        return cls.from_config(hf_config).float()


def config_dict(model: nn.Module) -> dict[str, Any]:
    """A part's ``transformers`` config as plain JSON (stored in the checkpoint's config.json)."""
    return json.loads(model.config.to_json_string(use_diff=False))


def load_encoder_tokenizer(name_or_path: str, max_positions: Optional[int] = None) -> EncoderTokenizer:
    """The pretrained encoder's own (fast) tokenizer from the same folder, with its special tokens."""
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer as HFTokenizer

    where = _where(name_or_path)
    try:
        with _quiet():
            hf = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, KeyError) as e:
        raise _load_error("the tokenizer of model.encoder.name_or_path", name_or_path, e) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"the tokenizer in {name_or_path!r} has no fast (tokenizers) version; textvae needs one")
    if hf.pad_token_id is None:
        raise ConfigError(f"the tokenizer in {name_or_path!r} has no pad token")
    if max_positions is None:
        try:
            from transformers import AutoConfig

            max_positions = getattr(AutoConfig.from_pretrained(where), "max_position_embeddings", None)
        except (OSError, ValueError, KeyError):
            max_positions = None
    limit = max_positions or 512
    if isinstance(hf.model_max_length, int) and 0 < hf.model_max_length < limit:
        limit = hf.model_max_length
    return EncoderTokenizer(HFTokenizer.from_str(backend.to_str()), int(hf.pad_token_id), int(limit))


# --------------------------------------------------------------------------- adapters for the decoder


def new_cache(config: Any):
    """An empty ``transformers`` key/value cache (``DynamicCache``) for a causal LM's config."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def cache_argument(model: nn.Module) -> str:
    """The forward argument that takes the cache: 'cache' (transformers 5) or 'past_key_values' (4.x)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output: Any):
    """The updated cache in a model output, whatever transformers calls it."""
    for key in ("cache", "past_key_values"):
        if key in output and output[key] is not None:
            return output[key]
    raise RuntimeError("the decoder returned no key/value cache")
