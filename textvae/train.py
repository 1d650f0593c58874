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
from textvae import distributed
from textvae.config import Config
from textvae.data import BucketBatcher, Corpus, collate, prepare_split, read_training_texts
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
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings).

    Pretrained weights get their own groups when model.encoder.lr / model.decoder.lr differ from
    train.lr: a group's ``lr_scale`` multiplies the scheduled learning rate. Frozen weights are left out.
    """
    scales = {"pretrained_encoder.hf.": cfg.model.encoder.lr / cfg.train.lr if cfg.model.encoder.lr else 1.0,
              "pretrained_decoder.hf.": cfg.model.decoder.lr / cfg.train.lr if cfg.model.decoder.lr else 1.0}
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((v for k, v in scales.items() if name.startswith(k)), 1.0)
        groups.setdefault((p.dim() >= 2 and "emb" not in name, scale), []).append(p)
    param_groups = [{"params": params, "weight_decay": cfg.train.weight_decay if decay else 0.0,
                     **({"lr_scale": scale} if scale != 1.0 else {})}
                    for (decay, scale), params in groups.items() if params or scale == 1.0]
    return torch.optim.AdamW(param_groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` in the run folder."""

    def __init__(self, path: Path):
        self.path = path
        self.mirror = None  # a TensorBoardLog (textvae/tboard.py) when train.tensorboard is on

    def write(self, record: dict[str, Any]) -> None:
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

    Under ``torchrun`` (RANK/WORLD_SIZE set) every process calls this with the same arguments:
    each trains on its share of the global batch under DistributedDataParallel and rank 0
    alone writes ``out_dir`` (see ``textvae/distributed.py``).

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

    # torchrun (DistributedDataParallel): N processes, one global batch (textvae/distributed.py)
    dist = distributed.from_env()
    distributed.check_batch_size(cfg.data.batch_size, dist)
    torch.manual_seed(tc.seed)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    if dist.enabled:
        device = distributed.init(dist, device)
    precision = resolve_precision(tc.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- tokenizer and data
    dc = cfg.data
    stream = None
    if dc.streaming:
        from textvae.streaming import StreamingCorpus

        stream = StreamingCorpus(dc.train, dc.train_split, dc.text_column, dc.label_column, dc.min_words,
                                 dc.max_words, seed=tc.seed, shuffle_buffer=dc.shuffle_buffer)
    if state is None:
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
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))
        if cfg.model.encoder.type == "pretrained" and cfg.model.latent_dim > 0:
            # A pretrained encoder reads sentences through its own tokenizer (textvae/data.py: collate).
            from textvae.pretrained import load_encoder_tokenizer

            tok.encoder_tokenizer = load_encoder_tokenizer(str(cfg.model.encoder.name_or_path))
            log.info("encoder tokenizer: %s, %d tokens", cfg.model.encoder.name_or_path, tok.encoder_tokenizer.vocab_size)
    max_tokens = cfg.model.max_len
    common = dict(text_column=dc.text_column, label_column=dc.label_column, min_words=dc.min_words,
                  max_words=dc.max_words, num_proc=dc.num_proc)
    valid_set: Optional[Corpus] = None
    with distributed.main_first(dist):  # rank 0 fills the datasets cache, then the others read it
        if stream is not None:
            # streaming: the sample stands in for the corpus (label names, attribute vectors)
            train_set, label_names = stream.sample_corpus(dc.streaming_sample, tok, max_tokens)
        else:
            train_set, label_names = prepare_split(dc.train, dc.train_split, tok, max_tokens, name="train", **common)
        if dc.valid and dist.is_main:  # only rank 0 validates
            valid_set, _ = prepare_split(dc.valid, dc.valid_split, tok, max_tokens, label_names=label_names or None,
                                         name="valid", **common)
    if stream is not None:
        def batch_source(epoch: int, position: int):
            return stream.batches(tok, max_tokens, dc.batch_size, dc.bucket_size, epoch, position)
        data_desc = f"streaming {dc.train}"
    else:
        batcher = BucketBatcher([len(x) for x in train_set.ids], dc.batch_size, dc.bucket_size, seed=tc.seed)

        def batch_source(epoch: int, position: int):
            return ((e, p, [train_set.ids[i] for i in idx]) for e, p, idx in batcher.iterate(epoch, position))
        data_desc = f"{len(train_set)} training sentences, {len(batcher)} batches per epoch"

    # ---- model and optimiser
    # (resuming reuses the loaded model: pretrained parts are rebuilt from the checkpoint, not reloaded)
    model = saved.model if state is not None else SentenceVAE(cfg.model, pad_id=tok.pad_id)
    model.to(device)
    # What the loop calls: DDP syncs gradients; torch.compile wraps the DDP module. Evaluation,
    # sampling and checkpoints use the plain module (the KV-cache decoder is never compiled).
    ddp_model = distributed.wrap_ddp(model, dist, device)
    train_model = torch.compile(ddp_model) if tc.compile else ddp_model
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, epoch, position, skipped = 0, 0, 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and precision == "fp16":
            scaler.load_state_dict(state["scaler"])
        step, epoch, position, skipped = int(state["step"]), int(state["epoch"]), int(state["position"]), int(state["skipped"])
        ranks = state.get("rng_ranks")
        _set_rng_state(ranks[dist.rank] if ranks is not None and len(ranks) == dist.world_size else state["rng"], device)
    log.info("model: %.2fM parameters; device %s, precision %s%s; %s", model.num_parameters() / 1e6, device, precision,
             f", {dist.world_size} processes" if dist.enabled else "", data_desc)

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    if not dist.is_main:
        pass  # only rank 0 writes the run folder
    elif state is not None:
        metrics.truncate_after(step)
    else:
        metrics.path.unlink(missing_ok=True)
    if tc.tensorboard and dist.is_main:
        from textvae.tboard import TensorBoardLog

        metrics.mirror = TensorBoardLog(out_dir, start_step=step)
    amp = autocast_context(device, precision)
    keep = (tok.pad_id, tok.bos_id, tok.eos_id)
    meta = {"label_names": label_names, "label_column": dc.label_column, "precision": precision}

    def save(final: bool = False) -> None:
        rngs = distributed.gather_objects(_rng_state(device), dist)  # every rank's, for an exact resume
        if not dist.is_main:
            return
        trainer_state = {
            "step": step, "epoch": epoch, "position": position, "skipped": skipped,
            "optimizer": optimizer.state_dict(), "rng": rngs[0],
        }
        if dist.enabled:
            trainer_state["rng_ranks"] = rngs
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

    batches = batch_source(epoch, position)
    start_step = step
    last_stop = tc.max_steps if stop_after is None else min(tc.max_steps, step + stop_after)
    progress = _progress(tc.progress and dist.is_main, tc.max_steps, step)
    L = cfg.model.latent_dim
    t0 = time.perf_counter()
    window_tokens, window_t = 0, time.perf_counter()
    model.train()
    while step < last_stop:
        beta = kl_weight(step, tc.kl, tc.max_steps)
        p_drop = word_dropout_rate(step, tc.word_dropout)
        lr = learning_rate(step, tc.lr, tc.min_lr, tc.warmup_steps, tc.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # pretrained weights may have their own peak
        sums = {"loss": 0.0, "rec": 0.0, "kl": 0.0, "kl_objective": 0.0}
        if cfg.model.bow_weight > 0 and not model.is_lm:
            sums["bow"] = 0.0
        step_tokens, step_sentences = 0, 0
        for micro in range(tc.grad_accum):
            seqs: list = []
            while not seqs:  # a global batch smaller than the world size is skipped
                epoch, position, seqs = next(batches)
                seqs = seqs[: distributed.usable(len(seqs), dist)]
            b = collate(distributed.shard(seqs, dist), tok).to(device)
            window_tokens += b.n_tokens
            step_tokens += b.n_tokens
            step_sentences += b.enc_ids.shape[0]
            # Random draws are made for the whole global batch and each rank keeps its rows, so
            # N ranks train on the noise one process would (exactly so without model dropout).
            rows = slice(dist.rank, None, dist.world_size)
            draw = None
            if p_drop > 0:
                draw = torch.rand((len(seqs), max(map(len, seqs)) + 1), device=device)[rows, : b.dec_in.shape[1]]
            eps = torch.randn((len(seqs), L), device=device)[rows]
            # Word dropout (Bowman et al. 2016): the decoder sees unk instead of some inputs.
            dec_in = word_dropout(b.dec_in, p_drop, tok.unk_id, keep, draw=draw)
            # DDP: gradients are averaged over the ranks once per optimiser step, not per micro-batch.
            last_micro = micro == tc.grad_accum - 1
            with ddp_model.no_sync() if dist.enabled and not last_micro else contextlib.nullcontext():
                with amp:
                    out = train_model(b.enc_ids, b.enc_mask, dec_in, eps=eps)
                terms = elbo_loss(out.logits, b.targets, out.mu, out.logvar, tok.pad_id, beta, tc.kl.free_bits,
                                  out.bow_logits, cfg.model.bow_weight, (tok.eos_id,))
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
            if dist.enabled:  # loss terms: mean over the ranks; tokens and sentences: sums
                red = distributed.all_reduce_sum([*sums.values(), step_tokens, step_sentences, window_tokens], dist, device)
                sums = {k: v / dist.world_size for k, v in zip(sums, red)}
                step_tokens, step_sentences, window_tokens = (int(x) for x in red[len(sums):])
            now = time.perf_counter()
            rec = {"step": step, "split": "train", **sums, "rec_per_token": sums["rec"] * step_sentences / max(step_tokens, 1),
                   "beta": beta, "word_dropout": p_drop, "lr": lr,
                   "grad_norm": grad_norm, "skipped_steps": skipped, "epoch": epoch,
                   "tokens_per_s": window_tokens / max(now - window_t, 1e-9), "elapsed_s": now - t0}
            if dist.is_main:
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
    metrics.close()
    elapsed = time.perf_counter() - t0
    log.info("trained %d steps in %.1f s; checkpoint: %s", step - start_step, elapsed, ckpt_dir)
    if finished and dist.is_main:
        texts, _ = sample(model.eval(), tok, 5, seed=tc.seed, strategy="sample", top_p=0.9)
        for t in texts:
            log.info("prior sample: %s", t)
        model.train()
    distributed.cleanup(dist)
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
