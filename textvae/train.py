"""One explicit training loop: data, model, AdamW, KL annealing, word dropout, free bits,
mixed precision, validation, atomic checkpoints and exact resume.

A run is set up, then looped. :func:`setup` builds everything a run needs (tokenizer, data,
model, optimiser, loss scaler, the state a resume restores) into a :class:`TrainingRun`;
:func:`train` repeats :func:`train_step`, one optimiser step of the VAE, and calls
:func:`validate` and :func:`save` on schedule. :func:`run_config` gives ``textvae train`` the
config of a new or resumed run. What is particular to several processes (torchrun) lives in
``textvae/distributed.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import torch

from textvae import checkpoint as ckpt
from textvae import distributed
from textvae.config import Config, TrainConfig, apply_overrides, from_dict, load_config
from textvae.data import BucketBatcher, Corpus, collate, prepare_split, read_training_texts
from textvae.distributed import DistInfo
from textvae.errors import CheckpointError, ConfigError, DataError, OptionError, TextVAEError
from textvae.evaluate import evaluate_elbo
from textvae.files import FolderLock, atomic_write, fault_point
from textvae.generate import sample
from textvae.losses import elbo_loss, semi_supervised_loss, word_dropout
from textvae.model import SentenceVAE
from textvae.schedules import kl_weight, learning_rate, word_dropout_rate
from textvae.tokenizer import Tokenizer, build_tokenizer
from textvae.transfer import corpus_attributes, provenance

if TYPE_CHECKING:
    from textvae.streaming import StreamingCorpus

log = logging.getLogger("textvae")


# --------------------------------------------------------------------------- device and precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA GPU is available")
    return dev


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on a CUDA GPU that supports it, else fp16; fp32 on CPU."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if name == "auto":
            return "bf16" if bf16_ok else "fp16"
        if name == "bf16" and not bf16_ok:
            raise ConfigError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} does not support bf16; use fp16 or fp32")
        return name
    if name == "auto":
        return "fp32"
    if name == "fp16":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use fp32 (or bf16) on CPU")
    return name


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- pieces of the loop


def build_optimizer(model: SentenceVAE, cfg: Config) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings).

    Pretrained weights get their own groups when model.encoder.lr / model.decoder.lr differ from
    train.lr: a group's ``lr_scale`` multiplies the scheduled learning rate. Frozen weights are left out.
    A from-scratch encoder with model.encoder.lr set gets it too, with its pooling and the posterior
    head. He et al. 2019 speed a lagging encoder up; on the bundled corpus the opposite measured
    better (a slower encoder moves the codes less while the decoder learns to read them; docs/quality.md).
    """
    part_lr = {"encoder": cfg.model.encoder.lr, "decoder": cfg.model.decoder.lr}
    scales = {prefix: part_lr[part] / cfg.train.lr if part_lr[part] else 1.0
              for part, prefix in model.pretrained_prefixes().items()}
    if cfg.model.encoder.lr and "encoder" not in model.pretrained_prefixes() and not model.is_lm:
        scales.update(dict.fromkeys(("encoder.", "pool.", "to_posterior."), cfg.model.encoder.lr / cfg.train.lr))
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((v for k, v in scales.items() if name.startswith(k)), 1.0)
        groups.setdefault((p.dim() >= 2 and "emb" not in name, scale), []).append(p)
    param_groups = [{"params": params, "weight_decay": cfg.train.weight_decay if decay else 0.0,
                     **({"lr_scale": scale} if scale != 1.0 else {})}
                    for (decay, scale), params in groups.items() if params or scale == 1.0]
    # AdamW's fused kernel updates every tensor of a group in one pass instead of a loop of small
    # ops per tensor: about 8 % of the default's training step on a CPU (docs/quality.md)
    return torch.optim.AdamW(param_groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
                             fused=can_fuse(model.parameters()) or None)


FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose parameters AdamW's fused kernel updates (a checkpoint resumes with the kernel it was
saved with: the saved optimiser state names it)."""


def can_fuse(params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether AdamW's fused kernel serves these parameters: floating point, all on one CPU or CUDA device."""
    trained = [p for p in params if p.requires_grad]
    return (bool(trained) and all(p.is_floating_point() for p in trained)
            and len({p.device for p in trained}) == 1 and trained[0].device.type in FUSED_DEVICES)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` in the run folder."""

    def __init__(self, path: Path):
        self.path = path
        self.mirror = None  # a TensorBoardLog (textvae/tboard.py) when train.tensorboard is on

    def write(self, record: dict[str, Any]) -> None:
        fault_point("append metrics.jsonl")
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.mirror is not None:
            self.mirror.write(record)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop records from steps after the checkpoint (they will be redone)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short when the run was killed
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write(self.path, "".join(k + "\n" for k in kept))


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- config of a run

# (epoch, position after the batch, the global batch's token-id lists), forever
Batches = Iterator[tuple[int, int, list[list[int]]]]


def run_config(config_path: Optional[str], overrides: list[str], out: Optional[str],
               resume: bool) -> tuple[Config, Path]:
    """The config and run folder of ``textvae train``.

    A new run reads ``config_path``. A resumed run given no config file starts from its
    checkpoint's config, with the vocabulary size cleared as in a config file (the tokenizer
    sets it). ``overrides`` apply either way. :func:`train` then checks a resumed run's model
    and tokenizer sections against its checkpoint (:func:`resumed_config`).

    Args:
        config_path: a YAML (or JSON) config file, or None to continue a resumed run's config.
        overrides: ``key.sub=value`` strings (``--set``).
        out: the run folder; None for ``runs/<name>``.
        resume: whether the run continues the checkpoint in ``out``.

    Returns:
        The config and the run folder.

    Raises:
        TextVAEError: no config file for a new run, or a resumed run without one names no folder.
        ConfigError: a bad config file or override.
        CheckpointError: the resumed run's checkpoint config is missing or damaged.
    """
    if config_path is None and not resume:
        raise TextVAEError("give --config FILE (or --resume with --out RUN_DIR)")
    if config_path is None:
        if out is None:
            raise TextVAEError("--resume without --config needs --out RUN_DIR")
        saved = ckpt.read_meta(Path(out) / ckpt.CHECKPOINT_DIR)["config"]
        saved["model"]["vocab_size"] = 0
        cfg = from_dict(apply_overrides(saved, overrides))
    else:
        cfg = load_config(config_path, overrides)
    return cfg, Path(out) if out else Path("runs") / cfg.name


def resumed_config(cfg: Config, saved: Config, out_dir: Path) -> Config:
    """The config a resumed run trains with: ``cfg`` with its checkpoint's model section.

    Other sections may change on resume (more steps, another schedule); the model and
    tokenizer sections must be the checkpoint's, the vocabulary size aside (the saved tokenizer's).

    Raises:
        ConfigError: the model or tokenizer section differs from the checkpoint's.
    """
    if saved.model != replace(cfg.model, vocab_size=saved.model.vocab_size) or saved.tokenizer != cfg.tokenizer:
        raise ConfigError(f"cannot resume {out_dir}: the model or tokenizer section differs from the checkpoint's")
    return replace(cfg, model=saved.model)


# --------------------------------------------------------------------------- setup


BEST_DIR = "best"  # train.keep_best: the run folder's best-validation checkpoint


@dataclass
class TrainingRun:
    """What :func:`setup` builds for a run, and where the run stands.

    ``step`` counts optimiser steps, ``epoch`` and ``position`` are the data position after the
    last batch used, ``skipped`` counts steps dropped for non-finite gradients: with the
    optimiser, the loss scale and the random state, they are what a resume restores.
    """

    cfg: Config  # the vocabulary size filled in
    out_dir: Path
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    dist: DistInfo
    tok: Tokenizer
    batches: Callable[[int, int], Batches]  # (epoch, position) -> the global batches from there on
    train_set: Corpus  # when streaming, the sample that stands in for the corpus
    valid_set: Optional[Corpus]  # None without validation data, and on ranks other than 0
    label_names: list[str]
    model: SentenceVAE  # the plain module: evaluation, sampling and checkpoints use it
    ddp_model: torch.nn.Module  # DistributedDataParallel around model (model itself in one process)
    train_model: torch.nn.Module  # what the loop calls: ddp_model, compiled when train.compile
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    amp: contextlib.AbstractContextManager
    metrics: MetricsLog
    step: int = 0
    epoch: int = 0
    position: int = 0
    skipped: int = 0
    words: Any = None  # the training words (SeenWords) once built by training_words, False if none
    prior: Any = None  # the prior fitted to the final codes (textvae/prior.py), once the final files are written
    best: Optional[dict[str, Any]] = None  # train.keep_best: metric, value and step of <run>/best

    @property
    def best_dir(self) -> Path:
        return self.out_dir / BEST_DIR

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / ckpt.CHECKPOINT_DIR


def setup(cfg: Config, out_dir: str | Path, resume: bool = False) -> TrainingRun:
    """Build a run: restored checkpoint, process group, device, tokenizer, data, model,
    optimiser, loss scaler and metrics log (see :func:`train` for the arguments).

    Returns:
        The run at step 0, or where its checkpoint stopped when ``resume`` is set.

    Raises:
        ConfigError: a new run in a folder that holds a checkpoint, a resumed run whose model or
            tokenizer section differs from the checkpoint's, or a bad device, precision or batch size.
        CheckpointError: ``resume`` without a (complete) checkpoint.
    """
    out_dir = Path(out_dir)
    cfg, saved, state = restore_checkpoint(cfg, out_dir, resume)
    # torchrun (DistributedDataParallel): N processes, one global batch (textvae/distributed.py)
    dist = distributed.from_env()
    distributed.check_batch_size(cfg.data.batch_size, dist)
    torch.manual_seed(cfg.train.seed)  # the model's initial weights and, unless resumed, the noise
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device, precision = _init_device(cfg, dist)
    stream = _open_stream(cfg)
    tok = saved.tokenizer if saved is not None else build_run_tokenizer(cfg, stream, dist)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))  # (a resumed run has it already)
    batches, train_set, valid_set, label_names, data_desc = build_data(cfg, tok, stream, dist)
    if cfg.model.conditional != "none":
        cfg = replace(cfg, model=replace(cfg.model, num_labels=check_num_labels(cfg.model.num_labels, label_names)))
    model, ddp_model, train_model, optimizer = build_model(cfg, saved, tok, device, dist)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run = TrainingRun(cfg, out_dir, device, precision, dist, tok, batches, train_set, valid_set, label_names,
                      model, ddp_model, train_model, optimizer, scaler, autocast_context(device, precision),
                      MetricsLog(out_dir / "metrics.jsonl"))
    if state is not None:
        _restore_position(run, state)
    log.info("model: %.2fM parameters; device %s, precision %s%s; %s", model.num_parameters() / 1e6, device, precision,
             f", {dist.world_size} processes" if dist.enabled else "", data_desc)
    if cfg.train.keep_best == "rec" and (cfg.train.decoder_only_steps or cfg.train.elbo_steps) and not model.is_lm:
        log.warning("train.keep_best 'rec' with train.decoder_only_steps or train.elbo_steps: the calibration at "
                    "their start widens the posterior and raises the validation rec by design, so %s will hold a "
                    "step before them; 'neg_elbo' compares the steps on one footing", BEST_DIR)
    _open_metrics(run, resumed=state is not None)
    return run


def check_num_labels(configured: int, label_names: list[str]) -> int:
    """The number of labels of a conditional model: the training data's (at least 2), which a
    configured (or resumed) ``model.num_labels`` must match."""
    if len(label_names) < 2:
        raise DataError(f"a conditional model needs at least 2 labels in the training data, found "
                        f"{len(label_names)} ({', '.join(label_names) or 'none'})")
    if configured and configured != len(label_names):
        raise ConfigError(f"model.num_labels is {configured} but the training data has {len(label_names)} labels "
                          f"({', '.join(label_names)})")
    return len(label_names)


def restore_checkpoint(cfg: Config, out_dir: Path,
                       resume: bool) -> tuple[Config, Optional[ckpt.Loaded], Optional[dict[str, Any]]]:
    """The checkpoint a resumed run continues, or none for a new run.

    Returns:
        The config to train with (:func:`resumed_config`), the loaded checkpoint and its
        trainer state; the config unchanged and None, None for a new run.
    """
    ckpt_dir = out_dir / ckpt.CHECKPOINT_DIR
    if not resume:
        if ckpt_dir.exists():
            raise ConfigError(f"{out_dir} already holds a checkpoint; "
                              "pass --resume to continue it or --out for a new run folder")
        return cfg, None, None
    if not (ckpt_dir / ckpt.CONFIG).exists():
        raise CheckpointError(f"cannot resume: no checkpoint in {out_dir}")
    saved = ckpt.load_pretrained(ckpt_dir)
    cfg = resumed_config(cfg, saved.config, out_dir)
    return cfg, saved, ckpt.load_trainer_state(ckpt_dir)


def _init_device(cfg: Config, dist: DistInfo) -> tuple[torch.device, str]:
    """This process's device (joining the process group under torchrun) and precision."""
    device = resolve_device(cfg.train.device)
    if dist.enabled:
        device = distributed.init(dist, device)
    precision = resolve_precision(cfg.train.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, precision


def _open_stream(cfg: Config) -> Optional[StreamingCorpus]:
    """The training stream when ``data.streaming`` is set."""
    dc = cfg.data
    if not dc.streaming:
        return None
    from textvae.streaming import StreamingCorpus

    return StreamingCorpus(dc.train, dc.train_split, dc.text_column, dc.label_column, dc.min_words,
                           dc.max_words, seed=cfg.train.seed, shuffle_buffer=dc.shuffle_buffer)


def build_run_tokenizer(cfg: Config, stream: Optional[StreamingCorpus], dist: DistInfo) -> Tokenizer:
    """A new run's tokenizer, trained on the training sentences (the first ``data.streaming_sample``
    of the stream when streaming) or loaded (``tokenizer.kind: pretrained``), with a pretrained
    encoder's own tokenizer attached. Rank 0 builds it; the other ranks receive it."""
    dc = cfg.data
    texts = None
    tok = None
    if dist.is_main:  # rank 0 trains the tokenizer, the other ranks receive it
        if cfg.tokenizer.kind != "pretrained":
            texts = (stream.sample(dc.streaming_sample)[0] if stream is not None else
                     read_training_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words))
        tok = build_tokenizer(cfg.tokenizer, texts)
    tok = distributed.broadcast_tokenizer(tok, dist)
    log.info("tokenizer: %s, %d tokens%s", cfg.tokenizer.kind, tok.vocab_size,
             f" (trained on the first {len(texts)} sentences of the stream)" if stream is not None and texts else "")
    if cfg.model.encoder.type == "pretrained" and cfg.model.latent_dim > 0:
        # A pretrained encoder reads sentences through its own tokenizer (textvae/data.py: collate).
        from textvae.pretrained import load_encoder_tokenizer

        tok.encoder_tokenizer = load_encoder_tokenizer(str(cfg.model.encoder.name_or_path))
        log.info("encoder tokenizer: %s, %d tokens", cfg.model.encoder.name_or_path, tok.encoder_tokenizer.vocab_size)
    return tok


def build_data(cfg: Config, tok: Tokenizer, stream: Optional[StreamingCorpus], dist: DistInfo
               ) -> tuple[Callable[[int, int], Batches], Corpus, Optional[Corpus], list[str], str]:
    """The training batches, the training and validation corpora and the label names.

    Returns:
        ``(batches, train_set, valid_set, label_names, description)``: ``batches(epoch, position)``
        yields the global batches from that data position on; ``valid_set`` is None without
        validation data and on ranks other than 0; the description is for the log.
    """
    dc = cfg.data
    max_tokens = cfg.model.max_len
    conditional = cfg.model.conditional != "none"
    common = dict(text_column=dc.text_column, label_column=dc.label_column, min_words=dc.min_words,
                  max_words=dc.max_words, num_proc=dc.num_proc)
    valid_set: Optional[Corpus] = None
    with distributed.main_first(dist):  # rank 0 fills the datasets cache, then the others read it
        if stream is not None:
            # streaming: the sample stands in for the corpus (label names, attribute vectors)
            train_set, label_names = stream.sample_corpus(dc.streaming_sample, tok, max_tokens)
        else:
            train_set, label_names = prepare_split(dc.train, dc.train_split, tok, max_tokens, name="train",
                                                   allow_unlabelled=conditional, **common)
            if conditional:
                train_set = keep_label_fraction(train_set, dc.label_fraction, cfg.train.seed, dc.train)
        if dc.valid and dist.is_main:  # only rank 0 validates
            valid_set, _ = prepare_split(dc.valid, dc.valid_split, tok, max_tokens, label_names=label_names or None,
                                         name="valid", **common)
    if stream is not None:
        batches = functools.partial(stream.batches, tok, max_tokens, dc.batch_size, dc.bucket_size)
        return batches, train_set, valid_set, label_names, f"streaming {dc.train}"
    batcher = BucketBatcher([len(x) for x in train_set.ids], dc.batch_size, dc.bucket_size, seed=cfg.train.seed)
    desc = f"{len(train_set)} training sentences, {len(batcher)} batches per epoch"
    if conditional:
        n_lab = sum(y >= 0 for y in train_set.labels)
        desc += f", {n_lab} labelled ({100 * n_lab / len(train_set):.1f}%), labels {', '.join(label_names)}"
    return (functools.partial(_corpus_batches, batcher, train_set, conditional), train_set, valid_set, label_names,
            desc)


def keep_label_fraction(corpus: Corpus, fraction: float, seed: int, source: str) -> Corpus:
    """The corpus with the labels of ``fraction`` of its labelled rows kept (chosen with ``seed``)
    and the others unlabelled (-1); an error when no labelled row is left."""
    labelled = [i for i, y in enumerate(corpus.labels) if y >= 0]
    keep = set(labelled)
    if fraction < 1.0:
        keep = set(random.Random(seed).sample(labelled, round(fraction * len(labelled))))
    if not keep:
        raise DataError(f"{source}: no labelled training rows left (data.label_fraction={fraction} of "
                        f"{len(labelled)} labelled rows); a conditional model needs some labels")
    labels = [y if i in keep else -1 for i, y in enumerate(corpus.labels)]
    return Corpus(corpus.texts, corpus.ids, labels)


def _corpus_batches(batcher: BucketBatcher, corpus: Corpus, labelled: bool, epoch: int, position: int) -> Batches:
    """The batches of token-id lists, or of (ids, label index) pairs with ``labelled`` (-1: no label)."""
    for e, p, idx in batcher.iterate(epoch, position):
        if labelled:
            yield e, p, [(corpus.ids[i], corpus.labels[i]) for i in idx]
        else:
            yield e, p, [corpus.ids[i] for i in idx]


def build_model(cfg: Config, saved: Optional[ckpt.Loaded], tok: Tokenizer, device: torch.device, dist: DistInfo
                ) -> tuple[SentenceVAE, torch.nn.Module, torch.nn.Module, torch.optim.AdamW]:
    """The model (new, or the resumed checkpoint's), its DDP and compiled wrappers, and the optimiser."""
    # (resuming reuses the loaded model: pretrained parts are rebuilt from the checkpoint, not reloaded)
    model = saved.model if saved is not None else SentenceVAE(cfg.model, pad_id=tok.pad_id)
    model.to(device)
    # What the loop calls: DDP syncs gradients; torch.compile wraps the DDP module. Evaluation,
    # sampling and checkpoints use the plain module (the KV-cache decoder is never compiled).
    ddp_model = distributed.wrap_ddp(model, dist, device)
    train_model = torch.compile(ddp_model) if cfg.train.compile else ddp_model
    return model, ddp_model, train_model, build_optimizer(model, cfg)


def _legacy_optimizer_order(run: TrainingRun, saved: dict[str, Any]) -> dict[str, Any]:
    """Optimiser state saved before the model's parts became classes (its model.safetensors has the
    old parameter names) lists each group's parameters in the old order: the token embedding and the
    encoder's and decoder's position embeddings first, then the rest in today's order. Reorder the
    saved ids of each group to today's order (load_state_dict pairs them with parameters by position)."""
    if not ckpt.has_legacy_names(run.out_dir / ckpt.CHECKPOINT_DIR):
        return saved
    names = {id(p): n for n, p in run.model.named_parameters()}
    first = ("tok_emb.weight", "encoder.pos.weight", "decoder.pos.weight")
    groups = []
    for group, saved_group in zip(run.optimizer.param_groups, saved["param_groups"]):
        today = group["params"]
        old = sorted(today, key=lambda p: first.index(names[id(p)]) if names[id(p)] in first else len(first))
        position = {id(p): i for i, p in enumerate(old)}
        groups.append({**saved_group, "params": [saved_group["params"][position[id(p)]] for p in today]})
    return {**saved, "param_groups": groups}


def _restore_position(run: TrainingRun, state: dict[str, Any]) -> None:
    """Put a resumed run where its checkpoint stopped: optimiser, loss scale, step, data, RNG."""
    run.optimizer.load_state_dict(_legacy_optimizer_order(run, state["optimizer"]))
    if "scaler" in state and run.precision == "fp16":
        run.scaler.load_state_dict(state["scaler"])
    run.step, run.epoch, run.position, run.skipped = (int(state[k]) for k in ("step", "epoch", "position", "skipped"))
    best = state.get("best")
    if best and best.get("metric") == run.cfg.train.keep_best and run.best_dir.is_dir():
        run.best = {"metric": str(best["metric"]), "value": float(best["value"]), "step": int(best["step"])}
    # each rank continues its own random stream (rank 0's for all when the world size changed)
    ranks = state.get("rng_ranks")
    _set_rng_state(ranks[run.dist.rank] if ranks is not None and len(ranks) == run.dist.world_size else state["rng"],
                   run.device)


def _open_metrics(run: TrainingRun, resumed: bool) -> None:
    """Create the run folder; start ``metrics.jsonl`` afresh, or cut it back to the resumed step."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if not run.dist.is_main:
        return  # only rank 0 writes the run folder
    if resumed:
        run.metrics.truncate_after(run.step)
    else:
        run.metrics.path.unlink(missing_ok=True)
    if run.cfg.train.tensorboard:
        from textvae.tboard import TensorBoardLog

        run.metrics.mirror = TensorBoardLog(run.out_dir, start_step=run.step)


# --------------------------------------------------------------------------- the step


@dataclass
class StepStats:
    """What one optimiser step reports for the log (loss terms: this rank's, averaged over micro-batches)."""

    beta: float
    word_dropout: float
    lr: float
    sums: dict[str, float]
    grad_norm: float = 0.0
    tokens: int = 0
    sentences: int = 0


def train_step(run: TrainingRun, batches: Batches) -> StepStats:
    """One optimiser step of the VAE: the schedules, then for each of ``train.grad_accum``
    micro-batches word dropout, forward, loss and backward, then clipping and the update.

    Advances ``run.step`` and the data position ``run.epoch`` / ``run.position``.
    """
    cfg, tc, tok = run.cfg, run.cfg.train, run.tok
    phase = training_phase(run.step, tc)
    beta = kl_weight(run.step, tc.kl, tc.max_steps)  # KL annealing (Bowman et al. 2016)
    free_bits = tc.kl.free_bits
    if phase == "elbo":  # train.elbo_steps: the plain ELBO, the bound the likelihood is measured by
        beta, free_bits = 1.0, 0.0
    p_drop = word_dropout_rate(run.step, tc.word_dropout)
    lr = learning_rate(run.step, tc.lr, tc.min_lr, tc.warmup_steps, tc.max_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # pretrained weights may have their own peak
    stats = StepStats(beta, p_drop, lr, sums=_loss_sums(run))
    for micro in range(tc.grad_accum):
        run.epoch, run.position, seqs = distributed.next_global_batch(batches, run.dist)
        labels = None
        if run.model.conditional:  # (ids, label) pairs, -1 for an unlabelled row
            labels = torch.tensor(distributed.shard([y for _, y in seqs], run.dist), device=run.device)
            seqs = [x for x, _ in seqs]
        b = collate(distributed.shard(seqs, run.dist), tok).to(run.device)
        stats.tokens += b.n_tokens
        stats.sentences += b.enc_ids.shape[0]
        draw, eps = _global_noise(run, seqs, p_drop, b.dec_in.shape[1])
        # Word dropout (Bowman et al. 2016): the decoder sees unk instead of some inputs.
        dec_in = word_dropout(b.dec_in, p_drop, tok.unk_id, (tok.pad_id, tok.bos_id, tok.eos_id), draw=draw)
        # DDP: gradients are averaged over the ranks once per optimiser step, not per micro-batch.
        with distributed.no_sync(run.ddp_model, run.dist, sync=micro == tc.grad_accum - 1):
            with run.amp:
                out = run.train_model(b.enc_ids, b.enc_mask, dec_in, eps=eps, labels=labels)
            terms = objective(run, out, b.targets, labels, beta, free_bits)
            run.scaler.scale(terms["loss"] / tc.grad_accum).backward()
        # one device-to-host copy for all logged terms, not one sync per term
        for k, v in zip(stats.sums, torch.stack([terms[k].detach() for k in stats.sums]).tolist()):
            stats.sums[k] += v / tc.grad_accum
    if phase == "decoder":
        for p in run.model.posterior_parameters():  # no gradient: AdamW neither moves nor decays them
            p.grad = None
    stats.grad_norm = _clip_and_step(run)
    run.step += 1
    return stats


def training_phase(step: int, tc: TrainConfig) -> str:
    """What the step (0-based) trains: 'main' (the configured objective), 'elbo'
    (train.elbo_steps: every weight on the plain ELBO) or 'decoder' (train.decoder_only_steps:
    the decoder alone), in that order over train.max_steps."""
    if step >= tc.max_steps - tc.decoder_only_steps:
        return "decoder"
    if step >= tc.max_steps - tc.decoder_only_steps - tc.elbo_steps:
        return "elbo"
    return "main"


def objective(run: TrainingRun, out: Any, targets: torch.Tensor, labels: Optional[torch.Tensor],
              beta: float, free_bits: float) -> dict[str, torch.Tensor]:
    """The loss terms of one micro-batch: rec + beta * KL, the KL with free bits (Kingma et al.
    2016), + the bag-of-words (Zhao et al. 2017) and positional auxiliary losses; for a
    conditional model, summed over q(y|x) on unlabelled rows (Kingma et al. 2014), with the
    classifier's and the adversary's terms."""
    mc, kl, tok = run.cfg.model, run.cfg.train.kl, run.tok
    if labels is not None:
        return semi_supervised_loss(out.logits, targets, out.mu, out.logvar, out.class_logits, labels, out.rows,
                                    out.row_labels, tok.pad_id, beta, free_bits, mc.classifier_weight,
                                    out.bow_logits, mc.bow_weight, (tok.eos_id,), out.position_logits,
                                    mc.position_weight, out.adversary_logits, mc.adversary_weight,
                                    kl.free_bits_groups)
    return elbo_loss(out.logits, targets, out.mu, out.logvar, tok.pad_id, beta, free_bits, out.bow_logits,
                     mc.bow_weight, (tok.eos_id,), out.position_logits, mc.position_weight, kl.free_bits_groups)


def _loss_sums(run: TrainingRun) -> dict[str, float]:
    sums = {"loss": 0.0, "rec": 0.0, "kl": 0.0, "kl_objective": 0.0}
    if run.cfg.model.bow_weight > 0 and not run.model.is_lm:
        sums["bow"] = 0.0
    if run.cfg.model.position_weight > 0 and not run.model.is_lm:
        sums["position"] = 0.0
    if run.model.conditional:
        sums["classifier"] = 0.0
        sums["entropy"] = 0.0
        if hasattr(run.model, "adversary"):
            sums["adversary"] = 0.0
    return sums


def _global_noise(run: TrainingRun, seqs: list[list[int]], p_drop: float,
                  width: int) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """This rank's rows of the word-dropout draw and of the z noise eps.

    Random draws are made for the whole global batch and each rank keeps its rows, so N ranks
    train on the noise one process would (exactly so without model dropout).
    """
    rows = distributed.rank_rows(run.dist)
    draw = None
    if p_drop > 0:
        draw = torch.rand((len(seqs), max(map(len, seqs)) + 1), device=run.device)[rows, :width]
    eps = torch.randn((len(seqs), run.cfg.model.latent_dim), device=run.device)[rows]
    return draw, eps


def _clip_and_step(run: TrainingRun) -> float:
    """Clip the gradient norm (``train.grad_clip``), apply the update; returns the norm before clipping."""
    run.scaler.unscale_(run.optimizer)
    max_norm = run.cfg.train.grad_clip if run.cfg.train.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm))
    if not math.isfinite(grad_norm):
        run.skipped += 1  # non-finite gradients: the step is skipped, never applied
        if run.precision == "fp16":
            run.scaler.step(run.optimizer)  # sees the infs and skips; update() lowers the scale
        run.scaler.update()
    else:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


# --------------------------------------------------------------------------- logging, validation, saving


@dataclass
class _Window:
    """The train records' clock: the loop's start, and the tokens since the last record and its time."""

    t0: float = field(default_factory=time.perf_counter)
    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0


def log_train(run: TrainingRun, stats: StepStats, window: _Window) -> dict[str, Any]:
    """Write the train record of the step just taken (rank 0) and restart the throughput window.

    Under torchrun the loss terms are the mean over the ranks, tokens and sentences their sums.
    """
    sums, (tokens, sentences, window_tokens) = distributed.reduce_log(
        stats.sums, [stats.tokens, stats.sentences, window.tokens], run.dist, run.device)
    now = time.perf_counter()
    rec = {"step": run.step, "split": "train", **sums, "rec_per_token": sums["rec"] * sentences / max(tokens, 1),
           "beta": stats.beta, "word_dropout": stats.word_dropout, "lr": stats.lr,
           "grad_norm": stats.grad_norm, "skipped_steps": run.skipped, "epoch": run.epoch,
           "tokens_per_s": window_tokens / max(now - window.start, 1e-9), "elapsed_s": now - window.t0}
    if run.dist.is_main:
        run.metrics.write(rec)
    window.tokens, window.start = 0, now
    return rec


def validate(run: TrainingRun) -> dict[str, float]:
    """Evaluate the ELBO on the validation corpus and log it; {} without one (and off rank 0)."""
    if run.valid_set is None:
        return {}
    tc = run.cfg.train
    res = evaluate_elbo(run.model, run.valid_set, run.tok, batch_size=2 * run.cfg.data.batch_size,
                        max_batches=tc.eval_batches, seed=tc.seed, autocast=run.amp)
    run.metrics.write({"step": run.step, "split": "valid", **res})
    log.info("step %d valid: rec %.2f  KL %.2f  -ELBO %.2f  active units %d/%d",
             run.step, res["rec"], res["kl"], res["neg_elbo"], res["active_units"], run.cfg.model.latent_dim)
    keep_best(run, res)
    return res


def keep_best(run: TrainingRun, res: dict[str, float]) -> None:
    """train.keep_best: write the weights to <run>/best when this validation beats every earlier
    one (a model checkpoint without trainer state; :func:`finish_best` adds the final files)."""
    metric = run.cfg.train.keep_best
    if metric == "none" or not res:
        return
    value = float(res[metric])
    if run.best is not None and not value < run.best["value"]:
        return
    run.best = {"metric": metric, "value": value, "step": run.step}
    ckpt.save_checkpoint(run.best_dir, run.model, run.tok, run.cfg, meta={**_meta(run, final=False), "best": run.best})
    log.info("step %d: best validation %s so far (%.2f): weights kept in %s", run.step, metric, value, run.best_dir)


def finish_best(run: TrainingRun, final_files: Optional[dict[str, bytes]]) -> None:
    """At the end of training, give <run>/best what the final checkpoint has from its weights:
    the training words, the prior fitted to its codes and the attribute vectors (``final_files``,
    the final checkpoint's own, when the best weights are the last ones)."""
    if run.best is None or not run.dist.is_main:
        return
    if run.best["step"] == run.step and final_files is not None:
        files, model = dict(final_files), run.model
    else:
        model = ckpt.load_pretrained(run.best_dir, device=run.device).model
        files, _ = _final_files(run, model, run.best["step"])
    if (run.cfg.train.standardize_latents or run.cfg.train.calibrate_variance) and not model.is_lm:
        # the weights as the final files saw them: calibration and standardisation changed them
        files = {ckpt.WEIGHTS: ckpt.weights_file(model), **files}
    meta = {**ckpt.read_meta(run.best_dir), "final": True}
    files[ckpt.CONFIG] = (json.dumps(meta, indent=2) + "\n").encode("utf-8")  # last: the folder is complete
    ckpt.write_files(run.best_dir, files)
    log.info("best checkpoint: step %d, validation %s %.2f: %s", run.best["step"], run.best["metric"],
             run.best["value"], run.best_dir)


def start_phase(run: TrainingRun, phase: str) -> None:
    """Begin train.elbo_steps or train.decoder_only_steps (``phase`` 'elbo' or 'decoder'):
    calibrate the posterior's variance (train.calibrate_variance) so that the phase starts from
    codes as noisy as the ELBO wants them; decoder-only steps that follow ELBO steps start from
    the posterior those left, uncalibrated. Every rank calibrates alike; rank 0's result is then
    given to all, so that no rounding difference splits their weights."""
    tc = run.cfg.train
    if run.model.is_lm:
        return
    if phase == "decoder" and tc.elbo_steps:
        # the ELBO steps just trained the posterior on the objective the calibration fits (its
        # variance moved by 4 % at most on the default, docs/quality.md): nothing to calibrate
        log.info("step %d: the last %d steps train the decoder alone against the posterior of the ELBO steps",
                 run.step, tc.decoder_only_steps)
        return
    calibrate_variance(run.model, run.train_set, run.tok, tc.calibrate_variance, tc.seed + run.step)
    if run.dist.enabled:
        bias = run.model.to_posterior.bias
        with torch.no_grad():
            bias.copy_(distributed.broadcast_object(bias.detach().cpu(), run.dist).to(bias.device))
    if phase == "elbo":
        log.info("step %d: the next %d steps train every weight on the plain ELBO (beta 1, no free bits)", run.step,
                 tc.elbo_steps)
    else:
        log.info("step %d: the last %d steps train the decoder alone against the calibrated posterior", run.step,
                 tc.decoder_only_steps)


def reset_decoder(run: TrainingRun) -> None:
    """End autoencoder pre-training (Li et al. 2019): a fresh decoder, the trained encoder, and
    no Adam moments for the reset weights."""
    with torch.random.fork_rng(devices=[]):  # the same new weights on every rank and after a resume
        torch.manual_seed(run.cfg.train.seed + run.step)
        params = run.model.reset_decoder()
    for p in params:
        run.optimizer.state.pop(p, None)
    log.info("step %d: decoder re-initialised (%d tensors); the encoder is kept", run.step, len(params))


def save(run: TrainingRun, final: bool = False) -> Optional[dict[str, bytes]]:
    """Write the checkpoint: weights, tokenizer, config and the trainer state for an exact resume.

    Every rank must call it (their random states are gathered); rank 0 writes. The final
    checkpoint of a labelled corpus also holds the attribute vectors for style transfer.
    Returns the final checkpoint's extra files (:func:`_final_files`; None otherwise and off rank 0).
    """
    rngs = distributed.gather_objects(_rng_state(run.device), run.dist)  # every rank's, for an exact resume
    if not run.dist.is_main:
        return None
    trainer_state = {
        "step": run.step, "epoch": run.epoch, "position": run.position, "skipped": run.skipped,
        "optimizer": run.optimizer.state_dict(), "rng": rngs[0],
    }
    if run.dist.enabled:
        trainer_state["rng_ranks"] = rngs
    if run.precision == "fp16":
        trainer_state["scaler"] = run.scaler.state_dict()
    if run.best is not None:
        trainer_state["best"] = dict(run.best)
    extra = None
    if final:
        extra, run.prior = _final_files(run, run.model, run.step)
    ckpt.save_checkpoint(run.ckpt_dir, run.model, run.tok, run.cfg, meta=_meta(run, final),
                         trainer_state=trainer_state, extra_files=extra)
    return extra


def _meta(run: TrainingRun, final: bool) -> dict[str, Any]:
    """What config.json records of a run's checkpoint besides the config."""
    return {"label_names": run.label_names, "label_column": run.cfg.data.label_column, "precision": run.precision,
            "step": run.step, "final": final}


def _final_files(run: TrainingRun, model: SentenceVAE, step: int) -> tuple[dict[str, bytes], Any]:
    """What a final checkpoint adds, from ``model``'s weights (those of ``step``, their posterior
    variance first calibrated by train.calibrate_variance and their latent space then
    standardised, both in place) and the training data: the training words (decoding only seen
    words), the prior fitted to the codes (textvae/prior.py) and, for a labelled corpus, the
    attribute vectors of style transfer (textvae/transfer.py) and, unless the model is
    label-conditional, one fitted prior per label. Returns the files and the fitted
    prior (None for a language model)."""
    from textvae.evaluate import posterior_params
    from textvae.prior import code_rows, fit_to_corpus

    files: dict[str, bytes] = {}
    words = training_words(run)
    if words is not None:
        files.update(ckpt.seen_words_files(words))
    if model.is_lm:
        return files, None
    corpus, tc = run.train_set, run.cfg.train
    if tc.calibrate_variance:
        calibrate_variance(model, corpus, run.tok, tc.calibrate_variance, tc.seed)
    rows = code_rows(len(corpus), tc.final_codes, tc.seed)
    subset = {"sentences_encoded": len(rows)} if len(rows) < len(corpus) else {}
    if subset:
        log.info("encoding %d of the %d training sentences for the fitted prior and the style vectors", len(rows),
                 len(corpus))
        corpus = Corpus([corpus.texts[i] for i in rows], [corpus.ids[i] for i in rows],
                        None if corpus.labels is None else [corpus.labels[i] for i in rows])
    posterior = posterior_params(model, corpus.ids, run.tok, batch_size=256)  # one pass for both
    if tc.standardize_latents:
        posterior = standardize(model, posterior)
    by_label = corpus.labels is not None and not model.conditional  # sample --label draws from its label's codes
    prior = fit_to_corpus(model, corpus.ids, run.tok, seed=tc.seed, posterior=posterior,
                          labels=corpus.labels if by_label else None, label_names=run.label_names)
    files.update(ckpt.prior_files(prior, model))
    if corpus.labels is not None:
        dc = run.cfg.data
        info = provenance(dc.train, dc.train_split, dc, dc.label_column, step=step, **subset)
        attrs = corpus_attributes(model, corpus, run.tok, run.label_names, info, mu=posterior[0])
        files.update(ckpt.attribute_files(attrs))
    return files, prior


CALIBRATION_BATCH = 32  # training sentences per step of train.calibrate_variance
CALIBRATION_LR = 0.05  # Adam's rate for the log-variance offsets, decayed linearly to 0 over the steps
CALIBRATION_PROBE = 256  # training sentences on which the change of the ELBO is logged


def calibrate_variance(model: SentenceVAE, corpus: Corpus, tok: Tokenizer, steps: int, seed: int) -> torch.Tensor:
    """train.calibrate_variance: fit one offset per latent dimension to the posterior's
    log-variance by ``steps`` Adam steps on the plain negative ELBO (rec + KL: beta 1, no free
    bits) of random training batches, every weight of the model frozen, then add it to the
    posterior head's log-variance bias. Training at beta < 1 and against a free-bits floor pays
    too little for narrow posteriors; this moves their width to where the ELBO, the likelihood
    bound, wants it. The posterior means do not move. A conditional model is calibrated on
    q(z|x, y) with the training label where it is known and the classifier's otherwise.
    Deterministic for a seed on CPU. Returns the offsets (L,)."""
    from textvae.prior import code_rows

    L = model.cfg.latent_dim
    device = next(model.parameters()).device
    offset = torch.zeros(L, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([offset], lr=CALIBRATION_LR)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    g = torch.Generator().manual_seed(seed)
    probe = code_rows(len(corpus), CALIBRATION_PROBE, seed)
    with model.frozen():
        before = _probe_elbo(model, corpus, tok, probe, offset, seed)
        with torch.enable_grad():
            for _ in range(steps):
                rows = torch.randint(len(corpus), (CALIBRATION_BATCH,), generator=g).tolist()
                neg_elbo, _ = _calibration_elbo(model, corpus.batch(rows, tok).to(device), tok, offset, g)
                optimizer.zero_grad(set_to_none=True)
                neg_elbo.mean().backward()
                optimizer.step()
                decay.step()
        after = _probe_elbo(model, corpus, tok, probe, offset, seed)
    with torch.no_grad():
        bias = model.to_posterior.bias
        bias[L:] += offset.detach().to(bias.dtype)
    sigma = (0.5 * offset.detach()).exp()
    log.info("posterior variance calibrated (%d steps of the ELBO at beta 1): sigma x %.2f-%.2f; on %d training "
             "sentences -ELBO %.2f -> %.2f nats (KL %.2f -> %.2f), posterior means unchanged", steps,
             float(sigma.min()), float(sigma.max()), len(probe), before[0], after[0], before[1], after[1])
    return offset.detach()


def _calibration_elbo(model: SentenceVAE, b: Any, tok: Tokenizer, offset: torch.Tensor, g: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """-ELBO and KL per sentence (B,) of a batch with the posterior log-variance moved by
    ``offset``; one z per sentence, its noise from ``g``; gradients reach ``offset`` only."""
    from textvae.losses import gaussian_kl, reconstruction_nll

    with torch.no_grad():
        h = model.summary(b.enc_ids, b.enc_mask)
        labels = None
        if model.conditional:
            labels = model.classifier(h).argmax(-1)
            if b.labels is not None:
                labels = torch.where(b.labels >= 0, b.labels, labels)
        mu, logvar = model.posterior(h, labels)
    mu, logvar = mu.float(), logvar.float() + offset
    eps = torch.randn(mu.shape, generator=g).to(mu.device)
    z = mu + (0.5 * logvar).exp() * eps
    logits, _ = model.decode(b.dec_in, model.code(z.to(h.dtype), labels))
    kl = gaussian_kl(mu, logvar).sum(1)
    return reconstruction_nll(logits, b.targets, tok.pad_id) + kl, kl


@torch.no_grad()
def _probe_elbo(model: SentenceVAE, corpus: Corpus, tok: Tokenizer, rows: list[int], offset: torch.Tensor,
                seed: int) -> tuple[float, float]:
    """Mean -ELBO and KL of the given training rows, with the same noise on every call."""
    g = torch.Generator().manual_seed(seed)
    device = offset.device
    sums = [0.0, 0.0]
    for i in range(0, len(rows), 64):
        neg_elbo, kl = _calibration_elbo(model, corpus.batch(rows[i:i + 64], tok).to(device), tok, offset, g)
        sums[0] += float(neg_elbo.sum())
        sums[1] += float(kl.sum())
    return sums[0] / len(rows), sums[1] / len(rows)


def standardize(model: SentenceVAE, posterior: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """train.standardize_latents: move the model's latent space so that the aggregate posterior of
    the given codes has mean 0 and variance 1 per dimension (SentenceVAE.standardize_latents, an
    exact change of coordinates), and return those codes (mu, logvar) in the new coordinates."""
    from textvae.losses import gaussian_kl
    from textvae.prior import aggregate_moments

    mu, logvar = posterior
    shift, scale = aggregate_moments(mu, logvar)
    shift, scale = shift.to(mu.device), scale.to(mu.device)
    before = float(gaussian_kl(mu, logvar).sum(1).mean())
    model.standardize_latents(shift, scale)
    mu, logvar = (mu - shift) / scale, logvar - 2 * scale.log()
    log.info("latent space standardised on %d training codes (scale %.2f-%.2f): their KL to N(0, I) %.2f -> %.2f "
             "nats, reconstructions unchanged", mu.shape[0], float(scale.min()), float(scale.max()), before,
             float(gaussian_kl(mu, logvar).sum(1).mean()))
    return mu, logvar


def training_words(run: TrainingRun) -> Any:
    """The words of the training corpus (:class:`textvae.generate.SeenWords`), built once per run;
    None for a tokenizer without word markers (decoding is then not restricted)."""
    from textvae.generate import SeenWords

    if run.words is None:
        try:
            run.words = SeenWords.from_corpus(run.tok, run.train_set.ids)
        except OptionError as e:
            log.info("no training words stored: %s", e)
            run.words = False
    return run.words or None


def log_prior_samples(run: TrainingRun, n: int = 5) -> None:
    """Log a few sentences decoded from the prior, as ``textvae sample`` decodes them (only words seen
    in training, z from the fitted prior once there is one): a glance at what the model has learnt."""
    texts, _ = sample(run.model.eval(), run.tok, n, seed=run.cfg.train.seed, strategy="sample", top_p=0.9,
                      words=training_words(run), prior=run.prior)
    for t in texts:
        log.info("prior sample: %s", t)
    run.model.train()


# --------------------------------------------------------------------------- the loop


def train(cfg: Config, out_dir: str | Path, resume: bool = False, stop_after: Optional[int] = None) -> Path:
    """Train a sentence VAE and write ``out_dir/checkpoint`` and ``out_dir/metrics.jsonl``.

    Args:
        cfg: the run config.
        out_dir: run folder. It must not hold a checkpoint unless ``resume`` is set.
        resume: continue from ``out_dir/checkpoint`` at the same step, learning rate,
            schedule position, data position and random state.
        stop_after: stop after this many optimiser steps in this call (the schedules still
            follow ``train.max_steps``); for time-boxed jobs, continue later with ``resume``.

    The run folder is locked while training writes it (:class:`textvae.files.FolderLock`: a
    second ``train`` on it is refused), what a killed run left is cleaned first
    (:func:`clean_leftovers`), and resuming a finished run changes nothing.

    Under ``torchrun`` (RANK/WORLD_SIZE set) every process calls this with the same arguments:
    each trains on its share of the global batch under DistributedDataParallel and rank 0
    alone writes ``out_dir`` (see ``textvae/distributed.py``).

    Returns:
        The checkpoint folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder")
    writer = os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 alone writes the run folder
    created = writer and not out_dir.exists()
    if writer:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {out_dir}: {e.strerror or e}") from None
    try:
        with FolderLock(out_dir, "textvae train") if writer else contextlib.nullcontext():
            if writer:
                clean_leftovers(out_dir)
            if resume and is_finished(cfg, out_dir):
                log.info("%s is finished (step %d of train.max_steps): nothing to do; raise train.max_steps to "
                         "train on", out_dir, cfg.train.max_steps)
                return out_dir / ckpt.CHECKPOINT_DIR
            return _train(cfg, out_dir, resume, stop_after)
    except BaseException:
        if created and {p.name for p in out_dir.iterdir()} <= {FolderLock.NAME}:
            shutil.rmtree(out_dir, ignore_errors=True)  # a run that failed before it wrote anything leaves nothing
        raise


def clean_leftovers(out_dir: Path) -> None:
    """What a killed run left in its folder: a checkpoint set aside mid-save is put back, and
    temporary checkpoint folders and files are removed (with the run's lock held)."""
    ckpt.repair(out_dir / ckpt.CHECKPOINT_DIR)
    ckpt.repair(out_dir / BEST_DIR)
    for leftover in out_dir.glob(".*.tmp-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def is_finished(cfg: Config, out_dir: Path) -> bool:
    """Whether the run's checkpoint is the final one of ``cfg``'s ``train.max_steps``."""
    try:
        meta = ckpt.read_meta(out_dir / ckpt.CHECKPOINT_DIR)
    except TextVAEError:
        return False  # restore_checkpoint reports what is wrong
    return bool(meta.get("final")) and int(meta.get("step") or 0) >= cfg.train.max_steps


def _train(cfg: Config, out_dir: Path, resume: bool, stop_after: Optional[int]) -> Path:
    run = setup(cfg, out_dir, resume)
    tc = run.cfg.train
    start_step = run.step
    last_stop = tc.max_steps if stop_after is None else min(tc.max_steps, run.step + stop_after)
    batches = run.batches(run.epoch, run.position)
    progress = _progress(tc.progress and run.dist.is_main, tc.max_steps, run.step)
    window = _Window()
    run.model.train()
    while run.step < last_stop:
        if tc.kl.reset_decoder_step and run.step == tc.kl.reset_decoder_step:
            reset_decoder(run)
        phase = training_phase(run.step, tc)
        if phase != "main" and training_phase(run.step - 1, tc) != phase:  # the phase's first step
            start_phase(run, phase)
        stats = train_step(run, batches)
        window.tokens += stats.tokens
        progress.update(1)
        if run.step % tc.log_every == 0 or run.step == last_stop:
            rec = log_train(run, stats, window)
            progress.set_postfix(rec=f"{rec['rec']:.1f}", kl=f"{rec['kl']:.2f}", beta=f"{rec['beta']:.2f}",
                                 refresh=False)
        if tc.eval_every and run.step % tc.eval_every == 0 and run.step < tc.max_steps:
            validate(run)
        if tc.save_every and run.step % tc.save_every == 0 and run.step < last_stop:
            save(run)
    progress.close()
    finished = run.step >= tc.max_steps
    final_files = None
    if run.step > start_step or finished:
        validate(run)
        final_files = save(run, final=finished)
    run.metrics.close()
    log.info("trained %d steps in %.1f s; checkpoint: %s", run.step - start_step, time.perf_counter() - window.t0,
             run.ckpt_dir)
    if finished:
        finish_best(run, final_files)
    if finished and run.dist.is_main:
        log_prior_samples(run)
    distributed.cleanup(run.dist)
    return run.ckpt_dir


def _progress(enabled: bool, total: int, initial: int):
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 30.0)
    return _NoProgress()


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
