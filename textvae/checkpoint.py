"""The only code that reads or writes model folders.

A checkpoint folder is self-describing:

    config.json         the resolved run config, special token ids, label names, step
    model.safetensors   the weights (never pickled)
    tokenizer.json      the tokenizer
    trainer_state.pt    optional resume state (optimiser, RNG, data position), tensors only
    attributes.*        optional attribute vectors per label (safetensors + JSON; textvae/latent.py, transfer.py)
    style_classifier.*  optional cached style classifier (safetensors + JSON; textvae/style.py)
    seen_words.json     optional words of the training data, for decoding only seen words

The publish protocol (:func:`save_checkpoint`): the new folder is written under a temporary
name (``.NAME.tmp-*``), its files and the folder flushed to disk, ``config.json`` last; the
published folder is renamed aside to ``.NAME.old-*``, the new one renamed in, and the old one
removed. At every instant a complete checkpoint exists under ``NAME`` or, between the two
renames, under ``.NAME.old-*``: :func:`resolve` finds that one when ``NAME`` is missing, and
:func:`repair` (run by training before it starts or resumes) puts it back and removes the
temporary folders that a killed save left. A run folder (``runs/NAME``) holds its checkpoint in
``checkpoint/``; both the run folder and the checkpoint folder are accepted wherever a
checkpoint is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from textvae import __version__
from textvae.config import Config, from_dict
from textvae.errors import CheckpointError, TextVAEError
from textvae.files import atomic_write, fault_point
from textvae.latent import Attributes
from textvae.model import SentenceVAE
from textvae.tokenizer import Tokenizer

log = logging.getLogger("textvae")

CONFIG, WEIGHTS, TOKENIZER, TRAINER_STATE = "config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"
ENCODER_TOKENIZER = "encoder_tokenizer.json"  # a pretrained encoder's own tokenizer
CHECKPOINT_DIR = "checkpoint"


@dataclass
class Loaded:
    model: SentenceVAE
    tokenizer: Tokenizer
    config: Config
    meta: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [])


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, given it or the run folder that holds it (a save interrupted between
    its two renames leaves the previous checkpoint as ``.NAME.old-*``: that one is returned)."""
    path = Path(path)
    if not path.exists():
        aside = set_aside(path)
        if aside is not None:
            return aside
        raise CheckpointError(f"checkpoint folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; give a checkpoint or run folder")
    if (path / CONFIG).exists():
        return path
    inner = path / CHECKPOINT_DIR
    if inner.is_dir():
        return inner
    return set_aside(inner) or path


def _siblings(path: Path, kind: str) -> list[Path]:
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.{kind}-*"))


def set_aside(path: str | Path) -> Optional[Path]:
    """The complete checkpoint a save set aside as ``.NAME.old-*`` when ``NAME`` is missing
    (a kill between the publish protocol's two renames), the latest step first; else None."""
    path = Path(path)
    best, best_step = None, -1
    for old in _siblings(path, "old"):
        try:
            step = int(json.loads((old / CONFIG).read_text(encoding="utf-8")).get("step") or 0)
        except (OSError, ValueError, AttributeError):
            continue
        if (old / WEIGHTS).is_file() and (old / TOKENIZER).is_file() and step > best_step:
            best, best_step = old, step
    return best


def repair(path: str | Path) -> list[Path]:
    """Undo what a killed save left (call with the run's lock held): put a set-aside checkpoint
    back when ``path`` is missing, and remove the temporary and set-aside folders beside it.
    Returns the folders removed."""
    path = Path(path)
    if not path.exists():
        aside = set_aside(path)
        if aside is not None:
            os.replace(aside, path)
            log.warning("restored the checkpoint %s from %s (a save was interrupted)", path, aside.name)
    removed = []
    for leftover in _siblings(path, "tmp") + (_siblings(path, "old") if path.exists() else []):
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    if removed:
        log.info("removed %d temporary folder(s) left by an interrupted save beside %s", len(removed), path)
    return removed


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied embeddings: the from-scratch parts' output layer reuses tok_emb.weight (registered once,
    # on the model), so there is one tensor to save.
    # Saving from the unwrapped module strips DDP/compile prefixes in one place.
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        # A pretrained decoder may tie its output layer to its input embedding (GPT-2's lm_head
        # and wte): the shared tensor is stored once, under its first name.
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().cpu().contiguous()
    return out


# Parameter names written before the model's parts became classes (textvae/model.py) -> the names
# now: (old-name pattern, replacement), tried in order, the first match wins. tok_emb, to_posterior
# and z_to_bow kept their names. No name of today matches a pattern, so a file that has any such
# name was saved by the old code.
_LEGACY_NAMES = [
    (r"enc_pos\.", "encoder.pos."),
    (r"dec_pos\.", "decoder.pos."),
    (r"encoder\.(\d+)\.", r"encoder.blocks.\1."),
    (r"decoder\.(\d+)\.", r"decoder.blocks.\1."),
    (r"enc_ln\.", "encoder.ln."),
    (r"dec_ln\.", "decoder.ln."),
    (r"z_to_memory\.", "decoder.z_to_memory."),  # the transformer decoder's z projections
    (r"z_to_embedding\.", "decoder.z_to_embedding."),
    (r"gru\.", "decoder."),
    (r"pretrained_encoder\.", "encoder."),
    (r"pretrained_decoder\.", "decoder."),
]


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the parameter names of a file saved before the model's parts became classes
    renamed to today's (``encoder.0.`` -> ``encoder.blocks.0.``, ``gru.`` -> ``decoder.``...); a
    state with today's names is returned as it is."""
    table = [(re.compile(old), new) for old, new in _LEGACY_NAMES]
    if not any(pattern.match(k) for k in state for pattern, _ in table):
        return state
    out = {}
    for k, v in state.items():
        for pattern, new in table:
            if pattern.match(k):
                k = pattern.sub(new, k, count=1)
                break
        out[k] = v
    return out


def has_legacy_names(path: str | Path) -> bool:
    """Whether a checkpoint folder's weights use the parameter names of before the model's parts
    became classes (its resume state then lists parameters in the old order)."""
    from safetensors import safe_open

    with safe_open(str(resolve(path) / WEIGHTS), framework="pt") as f:
        names = dict.fromkeys(f.keys())
    return _legacy_names(names) is not names


def save_checkpoint(path: str | Path, model: torch.nn.Module, tokenizer: Tokenizer, config: Config,
                    meta: Optional[dict[str, Any]] = None, trainer_state: Optional[dict[str, Any]] = None,
                    extra_files: Optional[dict[str, bytes]] = None) -> Path:
    """Write a checkpoint folder by the publish protocol of this module's docstring.

    Raises:
        CheckpointError: the folder cannot be written (a full disk, a read-only file system);
            the previous checkpoint, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise CheckpointError(f"cannot save the checkpoint {path}: {e.strerror or e}") from None
    old = None
    try:
        info = {
            "format": "textvae",
            "version": __version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config.to_dict(),
            "vocab_size": tokenizer.vocab_size,
            "special_tokens": tokenizer.specials,
            "special_ids": tokenizer.special_ids,
            **(meta or {}),
        }
        info.pop("pretrained_configs", None)
        info.pop("encoder_tokenizer", None)
        unwrapped = getattr(model, "_orig_mod", model)
        unwrapped = getattr(unwrapped, "module", unwrapped)
        parts = unwrapped.pretrained_configs() if hasattr(unwrapped, "pretrained_configs") else {}
        if parts:  # transformers configs of the pretrained parts: load_pretrained rebuilds them offline
            info["pretrained_configs"] = parts
        enc_tok = getattr(tokenizer, "encoder_tokenizer", None)
        if enc_tok is not None:
            info["encoder_tokenizer"] = enc_tok.info
        fault_point(f"write {WEIGHTS}")
        save_file(_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        fault_point(f"write {TOKENIZER}")
        tokenizer.save(tmp / TOKENIZER)
        if enc_tok is not None:
            (tmp / ENCODER_TOKENIZER).write_text(enc_tok.to_json(), encoding="utf-8")
        if trainer_state is not None:
            fault_point(f"write {TRAINER_STATE}")
            torch.save(trainer_state, tmp / TRAINER_STATE)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        fault_point(f"write {CONFIG}")
        (tmp / CONFIG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")  # last: the folder is complete
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            fault_point("rename checkpoint aside")
            os.replace(path, old)
        fault_point("rename checkpoint in")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            fault_point("remove old checkpoint")
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        if old is not None and not path.exists():
            os.replace(old, path)  # put the previous checkpoint back
        shutil.rmtree(tmp, ignore_errors=True)
        # A full disk or a read-only file system: torch reports it as RuntimeError, safetensors as its own error
        if isinstance(e, (OSError, SafetensorError, RuntimeError)):
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
            kept = "; the previous checkpoint is kept" if path.exists() else ""
            raise CheckpointError(f"cannot save the checkpoint {path}: {reason}{kept}") from None
        raise
    return path


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (its renames) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_meta(path: str | Path) -> dict[str, Any]:
    path = resolve(path)
    f = path / CONFIG
    if not f.is_file():
        raise CheckpointError(f"{path} is not a textvae checkpoint: {CONFIG} is missing")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is damaged: {e}") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{f} is not a textvae checkpoint config (no 'config' section)")
    return meta


REMOVED_OPTIONS = {("model", "decoder", "z_skip"): False}
"""Config options that older code wrote into checkpoints and this code no longer has, each with the
value under which the model is what this code builds (the option was off): a checkpoint with that
value loads without it; another value cannot be rebuilt and is a one-line error."""


def drop_removed_options(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config dict without the :data:`REMOVED_OPTIONS` that hold their harmless value."""
    import copy

    config = copy.deepcopy(config)
    for keys, harmless in REMOVED_OPTIONS.items():
        node = config
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or keys[-1] not in node:
            continue
        if node[keys[-1]] != harmless:
            raise CheckpointError(f"this checkpoint was trained with {'.'.join(keys)}={node[keys[-1]]!r}, an option "
                                  f"this version of textvae no longer has; load it with the version that trained it")
        del node[keys[-1]]
    return config


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Load model, tokenizer and config from a checkpoint (or run) folder, checking they agree."""
    path = resolve(path)
    meta = read_meta(path)
    try:
        config = from_dict(drop_removed_options(meta["config"]))
    except TextVAEError as e:
        raise CheckpointError(f"{path / CONFIG}: {e}") from None
    for name in (WEIGHTS, TOKENIZER):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    tokenizer = Tokenizer.load(path / TOKENIZER, meta.get("special_tokens"))
    if tokenizer.vocab_size != config.model.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer.json has {tokenizer.vocab_size} tokens but the model was built for "
            f"{config.model.vocab_size}; the tokenizer does not belong to this model")
    if meta.get("special_ids") and tokenizer.special_ids != meta["special_ids"]:
        raise CheckpointError(f"{path}: tokenizer special ids {tokenizer.special_ids} differ from config.json's {meta['special_ids']}")
    mc = config.model
    if mc.encoder.type == "pretrained" and mc.latent_dim > 0:
        if not (path / ENCODER_TOKENIZER).is_file() or not isinstance(meta.get("encoder_tokenizer"), dict):
            raise CheckpointError(f"checkpoint {path} is incomplete: its pretrained encoder's tokenizer "
                                  f"({ENCODER_TOKENIZER} and its entry in {CONFIG}) is missing")
        from textvae.tokenizer import EncoderTokenizer

        tokenizer.encoder_tokenizer = EncoderTokenizer.from_json(
            (path / ENCODER_TOKENIZER).read_text(encoding="utf-8"), meta["encoder_tokenizer"])
    saved_parts = None
    if "pretrained" in (mc.encoder.type if mc.latent_dim > 0 else None, mc.decoder.type):
        # Rebuild the pretrained parts from their saved transformers configs: no download, and
        # the original folders need not exist any more; the weights come from model.safetensors.
        saved_parts = meta.get("pretrained_configs")
        if not isinstance(saved_parts, dict):
            raise CheckpointError(f"{path / CONFIG} lacks the pretrained parts' configs (pretrained_configs)")
    try:
        model = SentenceVAE(mc, pad_id=tokenizer.pad_id, pretrained_configs=saved_parts)
    except (TextVAEError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from {CONFIG}: {str(e)[:200]}") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS} is damaged: {str(e)[:200]}") from None
    state = _legacy_names(state)  # a file saved before the model's parts became classes
    expected = _state_dict(model)  # tied aliases (a pretrained decoder's lm_head) are stored once
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS} does not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = [k for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path / WEIGHTS}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"config.json implies {tuple(expected[bad[0]].shape)}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:  # only tied aliases may be missing, and they share the stored tensor
        aliases = set(model.state_dict()) - set(expected)
        if not set(result.missing_keys) <= aliases:
            raise CheckpointError(f"{path / WEIGHTS} does not match config.json (missing {sorted(result.missing_keys)[:3]})")
    model.to(device).eval()
    return Loaded(model, tokenizer, config, meta, path)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Resume state: tensors and plain values only (``weights_only=True``, nothing unpickled)."""
    f = resolve(path) / TRAINER_STATE
    if not f.is_file():
        raise CheckpointError(f"cannot resume: {f} is missing")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot resume: {f} is damaged ({type(e).__name__})") from None
    required = ("step", "epoch", "position", "skipped", "optimizer", "rng")
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"cannot resume: {f} lacks {', '.join(missing)} (not a textvae trainer state)")
    return state


# --------------------------------------------------------------------------- files added to a checkpoint

ATTRIBUTES, ATTRIBUTES_INFO = "attributes.safetensors", "attributes.json"


def weights_file(model: torch.nn.Module) -> bytes:
    """The bytes of model.safetensors for these weights (for :func:`write_files`)."""
    from safetensors.torch import save

    return save(_state_dict(model), metadata={"format": "pt"})


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the weights (names and bytes): ties files derived from a model to that model."""
    return _digest(_state_dict(model))


def _legacy_digest(path: Path, model: torch.nn.Module) -> Optional[str]:
    """The digest the code before the parameter renames wrote for these weights: over the names
    model.safetensors holds, when they are the old names and the tensors are the model's."""
    state = load_file(str(path / WEIGHTS))
    renamed, mine = _legacy_names(state), _state_dict(model)
    if renamed is state or renamed.keys() != mine.keys() or not all(torch.equal(renamed[k], mine[k]) for k in mine):
        return None
    return _digest(state)


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode("utf-8"))
        h.update(str(t.dtype).encode("ascii"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def attribute_files(attrs: Attributes) -> dict[str, bytes]:
    """The two files that hold attribute vectors, as bytes (for ``extra_files`` or :func:`write_files`)."""
    from safetensors.torch import save

    tensors = save({"means": attrs.means.detach().float().cpu().contiguous(),
                    "counts": attrs.counts.detach().long().cpu().contiguous()})
    info = {**attrs.info, "labels": list(attrs.labels), "counts": [int(c) for c in attrs.counts],
            "tensors_sha256": hashlib.sha256(tensors).hexdigest()}
    return {ATTRIBUTES: tensors, ATTRIBUTES_INFO: (json.dumps(info, indent=2) + "\n").encode("utf-8")}


def write_files(path: str | Path, files: dict[str, bytes]) -> None:
    """Add or replace files in an existing checkpoint folder, each atomically, in the order
    given; other files are not touched."""
    path = resolve(path)
    for name, data in files.items():
        atomic_write(path / name, data, mkdir=False)


def load_attributes(path: str | Path, model: Optional[torch.nn.Module] = None) -> Optional[Attributes]:
    """Attribute vectors stored in a checkpoint folder, or None when there are none.

    Files that are damaged, half-written, or were computed with other weights than ``model``'s
    raise :class:`CheckpointError` (recompute them with ``textvae attributes``).
    """
    path = resolve(path)
    tensor_file, info_file = path / ATTRIBUTES, path / ATTRIBUTES_INFO
    if not tensor_file.is_file() and not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        raw = tensor_file.read_bytes()
        if info.get("tensors_sha256") != hashlib.sha256(raw).hexdigest():
            raise ValueError("attributes.safetensors does not match attributes.json")
        from safetensors.torch import load

        tensors = load(raw)
        means, counts, labels = tensors["means"], tensors["counts"], list(info["labels"])
        if means.dim() != 2 or means.shape[0] != len(labels) or counts.shape != (len(labels),):
            raise ValueError("tensor shapes do not match the label list")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: attribute vectors are damaged ({str(e)[:200]}); recompute them with "
                              f"`textvae attributes --checkpoint {path} --data FILE --label-column COL`") from None
    if model is not None:
        latent = getattr(getattr(model, "cfg", None), "latent_dim", means.shape[1])
        stored = info.get("weights_sha256")
        if means.shape[1] != latent or (stored not in (None, weights_digest(model)) and stored != _legacy_digest(path, model)):
            raise CheckpointError(
                f"{path}: the attribute vectors were computed with other weights than this model's; recompute them with "
                f"`textvae attributes --checkpoint {path} --data {info.get('source') or 'FILE'} "
                f"--label-column {info.get('label_column') or 'COL'}`")
    return Attributes(labels, means, counts, info)


# --------------------------------------------------------------------------- the words of the training data

SEEN_WORDS = "seen_words.json"
SEEN_WORDS_FORMAT = 1  # bump when what counts as a word changes: stored words are then rebuilt
WORDS_MODES = ("auto", "seen", "any")
"""Decoding vocabulary: 'seen' spells only words of the training data (textvae.generate.SeenWords),
'any' any token sequence, 'auto' 'seen' when the words can be had (stored in the checkpoint or read
from its config's training file), else 'any'."""
DEFAULT_WORDS = "auto"


def seen_words_files(words: Any) -> dict[str, bytes]:
    """The file that stores a :class:`textvae.generate.SeenWords` (token-id lists, one per word)."""
    data = {"format": SEEN_WORDS_FORMAT, "words": [list(w) for w in words.words]}
    return {SEEN_WORDS: (json.dumps(data) + "\n").encode("utf-8")}


def load_seen_words(loaded: Loaded, mode: str = DEFAULT_WORDS) -> Optional[Any]:
    """The training data's words for ``--words`` ``mode`` (see :data:`WORDS_MODES`), or None for 'any'.

    They come from the checkpoint's ``seen_words.json``; a checkpoint without one reads its
    config's training file (with its filters) and caches the words there.
    """
    from textvae.data import load_texts
    from textvae.errors import DataError, InputError
    from textvae.generate import SeenWords

    if mode not in WORDS_MODES:
        raise InputError(f"unknown --words {mode!r}; use one of {', '.join(WORDS_MODES)}")
    if mode == "any":
        return None
    f = loaded.path / SEEN_WORDS if loaded.path is not None else None
    try:
        stored = json.loads(f.read_text(encoding="utf-8")) if f is not None and f.is_file() else {}
        if stored.get("format") == SEEN_WORDS_FORMAT:
            return SeenWords.from_words(loaded.tokenizer, stored["words"])
        dc, limit = loaded.config.data, loaded.config.model.max_len - 2
        texts = load_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
        ids = [x for x in loaded.tokenizer.encode_batch(texts) if len(x) <= limit]  # as training drops them
        words = SeenWords.from_corpus(loaded.tokenizer, ids)
    except (DataError, OSError, ValueError, KeyError, TypeError) as e:
        if mode == "seen":
            raise CheckpointError(f"--words seen: no training words for {loaded.path} ({str(e)[:200]})") from None
        log.warning("decoding any token sequence: the training data's words are not at hand (%s)", str(e)[:200])
        return None
    if f is not None:
        try:
            write_files(loaded.path, seen_words_files(words))
        except OSError as e:
            log.warning("could not cache the training words in %s: %s", loaded.path, e)
    return words


# --------------------------------------------------------------------------- the fitted prior

PRIOR, PRIOR_INFO = "prior.safetensors", "prior.json"


def prior_files(gm: Any, model: torch.nn.Module) -> dict[str, bytes]:
    """The two files that hold a fitted prior (textvae/prior.py), with its per-label mixtures,
    tied to the model's weights."""
    from safetensors.torch import save

    arrays, labels = {}, []
    for prefix, part in [("", gm)] + [(f"label.{i}.", m) for i, m in enumerate(gm.by_label.values())]:
        arrays.update({prefix + "weights": part.weights.contiguous(), prefix + "means": part.means.contiguous(),
                       prefix + "variances": part.variances.contiguous()})
        if prefix:
            labels.append(part.info)
    tensors = save(arrays)
    info = {**gm.info, "weights_sha256": weights_digest(model), "tensors_sha256": hashlib.sha256(tensors).hexdigest()}
    if labels:
        info["labels"] = labels  # label i's mixture is label.{i}.*; its name is labels[i]["label"]
    return {PRIOR: tensors, PRIOR_INFO: (json.dumps(info, indent=2) + "\n").encode("utf-8")}


def _mixture_from_files(raw: bytes, info: dict[str, Any]) -> Any:
    from safetensors.torch import load

    from textvae.prior import GaussianMixture

    t = load(raw)
    labels = info.get("labels", [])
    by_label = {part["label"]: GaussianMixture(t[f"label.{i}.weights"], t[f"label.{i}.means"],
                                               t[f"label.{i}.variances"], part)
                for i, part in enumerate(labels)}
    top = {k: v for k, v in info.items() if k != "labels"}
    return GaussianMixture(t["weights"], t["means"], t["variances"], top, by_label)


def resolve_prior(loaded: Loaded, mode: str) -> Optional[Any]:
    """The prior of ``--prior`` ``mode`` (see :data:`textvae.prior.PRIORS`): the fitted mixture, or
    None for N(0, I)."""
    from textvae.errors import InputError
    from textvae.prior import PRIORS

    if mode not in PRIORS:
        raise InputError(f"unknown prior {mode!r}; use one of {', '.join(PRIORS)}")
    if mode == "normal":
        return None
    if loaded.model.is_lm:
        if mode == "fitted":
            raise InputError("this checkpoint is a language model (latent_dim 0): it has no prior to fit")
        return None
    if mode == "fitted":
        return load_prior(loaded)
    try:
        return load_prior(loaded)
    except CheckpointError as e:
        log.warning("sampling z from N(0, I): %s", str(e)[:300])
        return None


def load_prior(loaded: Loaded, fit: bool = True, labels: bool = False) -> Any:
    """The checkpoint's fitted prior; one that is missing (or was fitted to other weights) is
    fitted now to the config's training data and cached, when ``fit`` is set. With ``labels``,
    a stored prior without its per-label mixtures (a checkpoint of older code) gets them too."""
    from textvae.data import prepare_split
    from textvae.errors import DataError
    from textvae.prior import code_rows, fit_to_corpus

    digest = weights_digest(loaded.model)
    stored = None
    try:
        if loaded.path is None:
            raise OSError("no checkpoint folder")
        info = json.loads((loaded.path / PRIOR_INFO).read_text(encoding="utf-8"))
        raw = (loaded.path / PRIOR).read_bytes()
        if info.get("tensors_sha256") == hashlib.sha256(raw).hexdigest() and info.get("weights_sha256") == digest:
            stored = _mixture_from_files(raw, info)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        pass
    by_label = labels and bool(loaded.label_names) and not loaded.model.conditional
    if stored is not None and (stored.by_label or not by_label):
        return stored
    if not fit:
        raise CheckpointError(f"{loaded.path} has no fitted prior")
    dc = loaded.config.data
    label_column = dc.label_column if by_label else None
    try:
        corpus, _ = prepare_split(dc.train, dc.train_split, loaded.tokenizer, loaded.config.model.max_len,
                                  text_column=dc.text_column, label_column=label_column, min_words=dc.min_words,
                                  max_words=dc.max_words, label_names=loaded.label_names if label_column else None,
                                  name="prior")
    except DataError as e:
        what = "per-label priors" if stored is not None else "fitted prior"
        raise CheckpointError(f"--prior fitted: {loaded.path} has no {what} and its training data cannot be "
                              f"read to fit one ({e})") from None
    tc = loaded.config.train
    rows = code_rows(len(corpus), tc.final_codes, tc.seed)  # as training fits it
    ids = [corpus.ids[i] for i in rows]
    ys = None if corpus.labels is None else [corpus.labels[i] for i in rows]
    log.info("fitting the prior%s to the codes of %d training sentences", " of each label" if ys else "", len(ids))
    gm = fit_to_corpus(loaded.model, ids, loaded.tokenizer, seed=tc.seed, labels=ys, label_names=loaded.label_names)
    if stored is not None:  # keep the stored mixture, so that unlabelled sampling stays as it was
        stored.by_label = gm.by_label
        gm = stored
    try:
        if loaded.path is not None:
            write_files(loaded.path, prior_files(gm, loaded.model))
    except OSError as e:
        log.warning("could not cache the fitted prior in %s: %s", loaded.path, e)
    return gm
