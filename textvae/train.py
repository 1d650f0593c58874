"""One explicit training loop: data, model, AdamW, KL annealing, word dropout, free bits,
mixed precision, validation, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from textvae import checkpoint as ckpt
from textvae.config import Config
from textvae.data import BucketBatcher, Corpus, prepare_split, read_training_texts
from textvae.errors import CheckpointError, ConfigError
from textvae.evaluate import evaluate_elbo
from textvae.generate import sample
from textvae.latent import corpus_attributes
from textvae.losses import elbo_loss, word_dropout
from textvae.model import SentenceVAE
from textvae.schedules import kl_weight, learning_rate, word_dropout_rate
from textvae.tokenizer import Tokenizer, build_tokenizer

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
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` in the run folder."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

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
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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
    Returns:
        The checkpoint folder.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / ckpt.CHECKPOINT_DIR
    tc = cfg.train
    state: Optional[dict[str, Any]] = None
    if resume:
        if not (ckpt_dir / ckpt.CONFIG).exists():
            raise CheckpointError(f"cannot resume: no checkpoint in {out_dir}")
        saved = ckpt.load_pretrained(ckpt_dir)
        if saved.config.model != replace(cfg.model, vocab_size=saved.config.model.vocab_size) or saved.config.tokenizer != cfg.tokenizer:
            raise ConfigError(f"cannot resume {out_dir}: the model or tokenizer section differs from the checkpoint's")
        state = ckpt.load_trainer_state(ckpt_dir)
        tok = saved.tokenizer
        cfg = replace(cfg, model=saved.config.model)
    elif ckpt_dir.exists():
        raise ConfigError(f"{out_dir} already holds a checkpoint; pass --resume to continue it or --out for a new run folder")

    torch.manual_seed(tc.seed)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- tokenizer and data
    dc = cfg.data
    if state is None:
        texts = None
        if cfg.tokenizer.kind != "pretrained":
            texts = read_training_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
        tok = build_tokenizer(cfg.tokenizer, texts)
        log.info("tokenizer: %s, %d tokens", cfg.tokenizer.kind, tok.vocab_size)
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))
    max_tokens = cfg.model.max_len
    common = dict(text_column=dc.text_column, label_column=dc.label_column, min_words=dc.min_words,
                  max_words=dc.max_words, num_proc=dc.num_proc)
    train_set, label_names = prepare_split(dc.train, dc.train_split, tok, max_tokens, name="train", **common)
    valid_set: Optional[Corpus] = None
    if dc.valid:
        valid_set, _ = prepare_split(dc.valid, dc.valid_split, tok, max_tokens, label_names=label_names or None,
                                     name="valid", **common)
    batcher = BucketBatcher([len(x) for x in train_set.ids], dc.batch_size, dc.bucket_size, seed=tc.seed)

    # ---- model and optimiser
    model = SentenceVAE(cfg.model, pad_id=tok.pad_id)
    if state is not None:
        model.load_state_dict(saved.model.state_dict())
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, epoch, position, skipped = 0, 0, 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and precision == "fp16":
            scaler.load_state_dict(state["scaler"])
        step, epoch, position, skipped = int(state["step"]), int(state["epoch"]), int(state["position"]), int(state["skipped"])
        _set_rng_state(state["rng"], device)
    log.info("model: %.2fM parameters; device %s, precision %s; %d training sentences, %d batches per epoch",
             model.num_parameters() / 1e6, device, precision, len(train_set), len(batcher))

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    if state is not None:
        metrics.truncate_after(step)
    else:
        metrics.path.unlink(missing_ok=True)
    amp = autocast_context(device, precision)
    keep = (tok.pad_id, tok.bos_id, tok.eos_id)
    meta = {"label_names": label_names, "label_column": dc.label_column, "precision": precision}

    def save(final: bool = False) -> None:
        trainer_state = {
            "step": step, "epoch": epoch, "position": position, "skipped": skipped,
            "optimizer": optimizer.state_dict(), "rng": _rng_state(device),
        }
        if precision == "fp16":
            trainer_state["scaler"] = scaler.state_dict()
        extra = None
        if final and train_set.labels is not None and not model.is_lm:
            # Attribute vectors for style transfer (textvae/latent.py), from the final weights.
            extra = ckpt.attribute_files(corpus_attributes(model, train_set, tok, label_names, {
                "source": dc.train, "split": dc.train_split, "text_column": dc.text_column,
                "label_column": dc.label_column, "min_words": dc.min_words, "max_words": dc.max_words, "step": step}))
        ckpt.save_checkpoint(ckpt_dir, model, tok, cfg, meta={**meta, "step": step, "final": final},
                             trainer_state=trainer_state, extra_files=extra)

    def validate() -> dict[str, float]:
        if valid_set is None:
            return {}
        res = evaluate_elbo(model, valid_set, tok, batch_size=2 * dc.batch_size, max_batches=tc.eval_batches,
                            seed=tc.seed, autocast=amp)
        metrics.write({"step": step, "split": "valid", **res})
        log.info("step %d valid: rec %.2f  KL %.2f  -ELBO %.2f  active units %d/%d",
                 step, res["rec"], res["kl"], res["neg_elbo"], res["active_units"], cfg.model.latent_dim)
        return res

    batches = batcher.iterate(epoch, position)
    start_step = step
    last_stop = tc.max_steps if stop_after is None else min(tc.max_steps, step + stop_after)
    progress = _progress(tc.progress, tc.max_steps, step)
    t0 = time.perf_counter()
    window_tokens, window_t = 0, time.perf_counter()
    model.train()
    while step < last_stop:
        beta = kl_weight(step, tc.kl, tc.max_steps)
        p_drop = word_dropout_rate(step, tc.word_dropout)
        lr = learning_rate(step, tc.lr, tc.min_lr, tc.warmup_steps, tc.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = {"loss": 0.0, "rec": 0.0, "kl": 0.0, "kl_objective": 0.0}
        step_tokens, step_sentences = 0, 0
        for _ in range(tc.grad_accum):
            epoch, position, idx = next(batches)
            b = train_set.batch(idx, tok).to(device)
            window_tokens += b.n_tokens
            step_tokens += b.n_tokens
            step_sentences += len(idx)
            # Word dropout (Bowman et al. 2016): the decoder sees unk instead of some inputs.
            dec_in = word_dropout(b.dec_in, p_drop, tok.unk_id, keep)
            with amp:
                out = model(b.enc_ids, b.enc_mask, dec_in)
            terms = elbo_loss(out.logits, b.targets, out.mu, out.logvar, tok.pad_id, beta, tc.kl.free_bits)
            scaler.scale(terms["loss"] / tc.grad_accum).backward()
            # one device-to-host copy for all logged terms, not one sync per term
            for k, v in zip(sums, torch.stack([terms[k].detach() for k in sums]).tolist()):
                sums[k] += v / tc.grad_accum
        scaler.unscale_(optimizer)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            skipped += 1  # non-finite gradients: the step is skipped, never applied
            if precision == "fp16":
                scaler.step(optimizer)  # sees the infs and skips; update() lowers the scale
            scaler.update()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        if step % tc.log_every == 0 or step == last_stop:
            now = time.perf_counter()
            rec = {"step": step, "split": "train", **sums, "rec_per_token": sums["rec"] * step_sentences / max(step_tokens, 1),
                   "beta": beta, "word_dropout": p_drop, "lr": lr,
                   "grad_norm": grad_norm, "skipped_steps": skipped, "epoch": epoch,
                   "tokens_per_s": window_tokens / max(now - window_t, 1e-9), "elapsed_s": now - t0}
            metrics.write(rec)
            window_tokens, window_t = 0, now
            progress.set_postfix(rec=f"{sums['rec']:.1f}", kl=f"{sums['kl']:.2f}", beta=f"{beta:.2f}", refresh=False)
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.max_steps:
            validate()
        if tc.save_every and step % tc.save_every == 0 and step < last_stop:
            save()
    progress.close()
    finished = step >= tc.max_steps
    if step > start_step or finished:
        validate()
        save(final=finished)
    elapsed = time.perf_counter() - t0
    log.info("trained %d steps in %.1f s; checkpoint: %s", step - start_step, elapsed, ckpt_dir)
    if finished:
        texts, _ = sample(model.eval(), tok, 5, seed=tc.seed, strategy="sample", top_p=0.9)
        for t in texts:
            log.info("prior sample: %s", t)
        model.train()
    return ckpt_dir


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
