"""The only code that reads or writes model folders.

A checkpoint folder is self-describing:

    config.json         the resolved run config, special token ids, label names, step
    model.safetensors   the weights (never pickled)
    tokenizer.json      the tokenizer
    trainer_state.pt    optional resume state (optimiser, RNG, data position), tensors only

A folder is written under a temporary name and renamed into place, so an interrupted
save never leaves a half-written checkpoint: the previous one stays until the new one
is complete. A run folder (``runs/NAME``) holds its checkpoint in ``checkpoint/``;
both the run folder and the checkpoint folder are accepted wherever a checkpoint is.
"""

from __future__ import annotations

import json
import os
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
from textvae.model import TextVAE
from textvae.tokenizer import Tokenizer

CONFIG, WEIGHTS, TOKENIZER, TRAINER_STATE = "config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class Loaded:
    model: TextVAE
    tokenizer: Tokenizer
    config: Config
    meta: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [])


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, given it or the run folder that holds it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; give a checkpoint or run folder")
    if (path / CONFIG).exists() or not (path / CHECKPOINT_DIR).is_dir():
        return path
    return path / CHECKPOINT_DIR


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied embeddings: the output layer reuses tok_emb.weight, so there is one tensor to save.
    # Saving from the unwrapped module strips DDP/compile prefixes in one place.
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | Path, model: torch.nn.Module, tokenizer: Tokenizer, config: Config,
                    meta: Optional[dict[str, Any]] = None, trainer_state: Optional[dict[str, Any]] = None,
                    extra_files: Optional[dict[str, bytes]] = None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
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
        (tmp / CONFIG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        save_file(_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        tokenizer.save(tmp / TOKENIZER)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # put the previous checkpoint back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Load model, tokenizer and config from a checkpoint (or run) folder, checking they agree."""
    path = resolve(path)
    meta = read_meta(path)
    try:
        config = from_dict(meta["config"])
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
    model = TextVAE(config.model, pad_id=tokenizer.pad_id)
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / WEIGHTS} is damaged: {str(e)[:200]}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path / WEIGHTS} does not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = [k for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path / WEIGHTS}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"config.json implies {tuple(expected[bad[0]].shape)}")
    model.load_state_dict(state)
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
