"""Figures of merit: ELBO terms and active units on held-out data, quality of prior samples."""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

import torch

from textvae.data import BucketBatcher, Corpus, collate
from textvae.errors import DataError, InputError, TextVAEError
from textvae.generate import DEFAULT_Z_TEMPERATURE
from textvae.losses import gaussian_kl, reconstruction_nll
from textvae.model import SentenceVAE
from textvae.tokenizer import Tokenizer

log = logging.getLogger("textvae")

AU_THRESHOLD = 0.01


def active_units(mu: torch.Tensor, threshold: float = AU_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Active units (Burda et al. 2016): dimensions whose posterior mean varies over the data,
    Cov_x(E_q[z_d | x]) > threshold. mu (N, L) -> (count, per-dimension variance (L,))."""
    if mu.shape[1] == 0 or mu.shape[0] < 2:
        var = torch.zeros(mu.shape[1])
    else:
        var = mu.float().var(dim=0, unbiased=True)
    return int((var > threshold).sum()), var


def _one_sample_forward(model: SentenceVAE, b, g: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model with one z ~ q(z|x) drawn from ``g`` (the posterior mean for
    a language model): logits (B, T, V), mu, logvar (B, L). The ELBO terms are the caller's, in
    float32 and outside any autocast."""
    labels = batch_labels(model, b)
    mu, logvar = model.encode(b.enc_ids, b.enc_mask, labels)
    z = model.reparameterize(mu.float(), logvar.float(), g).to(mu.dtype) if not model.is_lm else mu
    logits, _ = model.decode(b.dec_in, model.code(z, labels))
    return logits, mu, logvar


def batch_labels(model: SentenceVAE, b) -> Optional[torch.Tensor]:
    """The labels a conditional model encodes and decodes a batch with: the batch's own when every
    row has one, else the classifier's most likely label; None for an unconditional model."""
    if not model.conditional:
        return None
    if b.labels is not None and bool((b.labels >= 0).all()):
        return b.labels
    return model.classify(b.enc_ids, b.enc_mask).argmax(-1)


def _over_labels(per_label: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine bounds on -log p(x|y) (one (N,) tensor per label) into a bound on -log p(x) =
    -log sum_y p(y) p(x|y) under the uniform label prior; also the posterior weights p(y|x) (K, N)."""
    nll = torch.stack(list(per_label))  # (K, N)
    log_joint = -nll - math.log(nll.shape[0])
    return -torch.logsumexp(log_joint, 0), torch.softmax(log_joint, 0)


def length_batches(ids: Sequence[Sequence[int]], batch_size: int) -> Iterable[list[int]]:
    """Row indices of ``ids`` in batches of similar length (little padding); callers put the
    results back in input order."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def predict_labels(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer,
                   batch_size: int = 128) -> torch.Tensor:
    """q(y|x) of a conditional model for token-id lists: probabilities (N, K) on the model's device."""
    device = next(model.parameters()).device
    out = torch.empty(len(ids), model.cfg.num_labels, device=device)
    was_training = model.training
    model.eval()
    for idx in length_batches(ids, batch_size):
        b = collate([ids[i] for i in idx], tok).to(device)
        out[torch.as_tensor(idx, device=device)] = model.classify(b.enc_ids, b.enc_mask).float().softmax(-1)
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate_elbo(model: SentenceVAE, corpus: Corpus, tok: Tokenizer, batch_size: int = 128,
                  max_batches: int = 0, seed: int = 0, au_threshold: float = AU_THRESHOLD,
                  autocast: Optional[contextlib.AbstractContextManager] = None) -> dict[str, float]:
    """Reconstruction NLL, KL and negative ELBO (nats per sentence, one z sample each),
    per-token NLL bound, and active units over ``corpus``. Uses its own seeded generator,
    so it never disturbs the training random state. A conditional model is given each row's
    label (the classifier's where the corpus has none) and its classifier's ``accuracy`` is added."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    batches = BucketBatcher([len(x) for x in corpus.ids], batch_size, shuffle=False).epoch_batches(0)
    if max_batches:
        step = max(1, len(batches) // max_batches)
        batches = batches[::step][:max_batches]
    rec = kl = 0.0
    n = tokens = correct = 0
    mus = []
    for idx in batches:
        b = corpus.batch(idx, tok).to(device)
        with autocast if autocast is not None else contextlib.nullcontext():
            logits, mu, logvar = _one_sample_forward(model, b, g)
            if model.conditional and b.labels is not None:
                correct += int((model.classify(b.enc_ids, b.enc_mask).argmax(-1) == b.labels).sum())
        rec += float(reconstruction_nll(logits, b.targets, tok.pad_id).sum())
        kl += float(gaussian_kl(mu, logvar).sum())
        n += len(idx)
        tokens += b.n_tokens
        mus.append(mu.float().cpu())
    model.train(was_training)
    au, _ = active_units(torch.cat(mus), au_threshold)
    L = model.cfg.latent_dim
    out = {
        "rec": rec / n,
        "kl": kl / n,
        "neg_elbo": (rec + kl) / n,
        "nll_per_token": (rec + kl) / tokens,
        "active_units": au,
        "active_fraction": au / L if L else 0.0,
        "sentences": n,
    }
    if model.conditional and corpus.labels is not None:
        out["accuracy"] = correct / n  # the classifier q(y|x); rec and KL are given the true label
    return out


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams over all n-grams in the texts."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_quality(texts: Sequence[str], finished: Sequence[bool], training_texts: Iterable[str]) -> dict[str, float]:
    """Share ending with eos, share not copied verbatim from training, distinct-1/2, mean length,
    share of words never seen in training."""
    train = set(training_texts)
    n = len(texts)
    lengths = [len(t.split()) for t in texts]
    counts = Counter(texts)
    return {
        "samples": n,
        "eos_rate": sum(finished) / n if n else 0.0,
        "novel_rate": sum(t not in train for t in texts) / n if n else 0.0,
        "unique_rate": len(counts) / n if n else 0.0,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "mean_words": sum(lengths) / n if n else 0.0,
        "unseen_words": unseen_word_rate(texts, vocabulary(train)),
    }


# --------------------------------------------------------------------------- likelihood bounds


def prepare_ids(tok: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[list[list[int]], int]:
    """Token ids (no specials) for texts, truncated to fit ``max_len`` with bos/eos.
    Returns (ids, number of sentences truncated)."""
    limit = max_len - 2
    ids = tok.encode_batch(list(texts)) if texts else []
    truncated = sum(len(x) > limit for x in ids)
    return [x[:limit] for x in ids], truncated


def drop_long(tok: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[list[str], int]:
    """The texts that fit ``max_len`` tokens with bos/eos (training's rule), and how many did not."""
    ids = tok.encode_batch(list(texts)) if texts else []
    kept = [t for t, x in zip(texts, ids) if len(x) <= max_len - 2]
    return kept, len(texts) - len(kept)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def _log_prior(z: torch.Tensor, prior: Optional[Any]) -> torch.Tensor:
    """log p(z) summed over the last dimension: N(0, I) for ``prior`` None, else the fitted mixture's
    density (textvae/prior.py, computed on the CPU in float64)."""
    if prior is None:
        return _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    flat = z.reshape(-1, z.shape[-1]).detach().cpu()
    return prior.log_prob(flat).view(z.shape[:-1]).to(device=z.device, dtype=z.dtype)


@torch.no_grad()
def iw_nll(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer, k: int = 500, batch_size: int = 32,
           max_rows: int = 512, seed: int = 0, labels: Optional[Sequence[int]] = None,
           prior: Optional[Any] = None) -> torch.Tensor:
    """Importance-weighted bound on -log p(x) per sentence (Burda et al. 2016), in nats.

    -log p(x) <= -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x). K = 1 is a
    one-sample negative ELBO; the bound tightens as K grows. Samples are drawn in chunks so
    that at most ``max_rows`` decoder rows run at once. For a language model (latent_dim 0)
    this is the exact NLL. A conditional model bounds -log p(x|y) given ``labels`` (N label
    indices), and without them -log p(x) = -log sum_y p(y) p(x|y), one bound per label.
    ``prior``: p(z) of the bound, a fitted mixture (textvae/prior.py); None: N(0, I).
    Returns (N,) float64 on CPU, in the order of ``ids``.
    """
    return iw_nlls(model, ids, tok, [prior], k, batch_size, max_rows, seed, labels)[0]


@torch.no_grad()
def iw_nlls(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer, priors: Sequence[Optional[Any]],
            k: int = 500, batch_size: int = 32, max_rows: int = 512, seed: int = 0,
            labels: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
    """:func:`iw_nll` under each of ``priors`` (None: N(0, I)), from the same samples z_k: one
    decoder pass serves them all. Returns one (N,) float64 tensor per prior."""
    if k < 1:
        raise ValueError("the number of importance samples must be at least 1")
    if model.conditional and labels is None:
        per = [iw_nlls(model, ids, tok, priors, k, batch_size, max_rows, seed, [y] * len(ids))
               for y in range(model.cfg.num_labels)]
        return [_over_labels([p[i] for p in per])[0] for i in range(len(priors))]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = [torch.empty(len(ids), dtype=torch.float64) for _ in priors]
    for idx in length_batches(ids, batch_size):
        b = collate([ids[i] for i in idx], tok).to(device)
        B = len(idx)
        lab = torch.as_tensor([labels[i] for i in idx], device=device) if model.conditional else None
        mu, logvar = model.encode(b.enc_ids, b.enc_mask, lab)
        mu, logvar = mu.float(), logvar.float()
        if model.is_lm:
            logits, _ = model.decode(b.dec_in, mu)
            nll = reconstruction_nll(logits, b.targets, tok.pad_id).double().cpu()
            for o in out:
                o[idx] = nll
            continue
        chunk = max(1, min(k, max_rows // B))
        log_w: list[list[torch.Tensor]] = [[] for _ in priors]
        for s in range(0, k, chunk):
            c = min(chunk, k - s)
            eps = torch.randn(B, c, mu.shape[1], generator=g, device=device)
            z = mu[:, None] + (0.5 * logvar).exp()[:, None] * eps  # (B, c, L)
            code = model.code(z.reshape(B * c, -1), None if lab is None else lab.repeat_interleave(c, 0))
            logits, _ = model.decode(b.dec_in.repeat_interleave(c, 0), code)
            rec = reconstruction_nll(logits, b.targets.repeat_interleave(c, 0), tok.pad_id).view(B, c)
            log_qz = _log_normal(z, mu[:, None], logvar[:, None])
            for lw, prior in zip(log_w, priors):
                lw.append(-rec + _log_prior(z, prior) - log_qz)
        for o, lw in zip(out, log_w):
            w = torch.cat(lw, dim=1).double()  # (B, K)
            o[idx] = -(torch.logsumexp(w, dim=1) - math.log(k)).cpu()
    model.train(was_training)
    return out


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor, prior: Any, samples: int = 16, seed: int = 0) -> torch.Tensor:
    """KL(q(z|x) || p(z)) per sentence for a fitted mixture p (no closed form): the Monte Carlo
    mean of log q(z|x) - log p(z) over ``samples`` draws z ~ q(z|x). mu, logvar (N, L) -> (N,) float64."""
    mu, logvar = mu.detach().double().cpu(), logvar.detach().double().cpu()
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(mu.shape[0], dtype=torch.float64)
    block = 1024  # sentences at a time: bounds the (block, S, L) samples
    for i in range(0, mu.shape[0], block):
        m, lv = mu[i:i + block, None], logvar[i:i + block, None]
        z = m + (0.5 * lv).exp() * torch.randn(m.shape[0], samples, m.shape[2], generator=g, dtype=torch.float64)
        out[i:i + block] = (_log_normal(z, m, lv) - _log_prior(z, prior)).mean(1)
    return out


@torch.no_grad()
def elbo_per_sentence(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer, batch_size: int = 64,
                      seed: int = 0, labels: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative ELBO with the analytic KL and one z sample, and the KL, per sentence: (N,), (N,).

    A conditional model: given ``labels``, the bound on -log p(x|y); without them, on -log p(x)
    (one bound per label, combined as in :func:`iw_nll`), with the KL weighted by p(y|x)."""
    if model.conditional and labels is None:
        per = [elbo_per_sentence(model, ids, tok, batch_size, seed, [y] * len(ids)) for y in range(model.cfg.num_labels)]
        nll, weights = _over_labels([p[0] for p in per])
        return nll, (weights * torch.stack([p[1] for p in per])).sum(0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    neg_elbo = torch.empty(len(ids), dtype=torch.float64)
    kl_out = torch.empty(len(ids), dtype=torch.float64)
    for idx in length_batches(ids, batch_size):
        b = collate([ids[i] for i in idx], tok, None if labels is None else [labels[i] for i in idx]).to(device)
        logits, mu, logvar = _one_sample_forward(model, b, g)
        kl = gaussian_kl(mu, logvar).sum(1)
        neg_elbo[idx] = (reconstruction_nll(logits, b.targets, tok.pad_id) + kl).double().cpu()
        kl_out[idx] = kl.double().cpu()
    model.train(was_training)
    return neg_elbo, kl_out


@torch.no_grad()
def posterior_params(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer,
                     batch_size: int = 128, labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters of token-id lists (no specials; see :func:`prepare_ids`), batched by length.

    Args:
        model: the VAE; its device is used and its train/eval mode is restored afterwards.
        ids: N token-id lists, each short enough for the model.
        tok: the model's tokenizer (pad/bos/eos ids).
        batch_size: sentences per encoder call.
        labels: a conditional model's label index per sentence (N,): q(z|x, y); None: for the
            label the classifier finds most likely.
    Returns:
        mu, logvar: (N, L) float32 on the model's device, in the order of ``ids``.
    """
    device = next(model.parameters()).device
    L = model.cfg.latent_dim
    mu_all = torch.empty(len(ids), L, device=device)
    lv_all = torch.empty(len(ids), L, device=device)
    was_training = model.training
    model.eval()
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    # Sorting by length keeps padding (wasted encoder work) small; rows go back to input order.
    for idx in length_batches(ids, batch_size):
        b = collate([ids[i] for i in idx], tok)
        where = torch.as_tensor(idx, device=device)
        lab = None if labels is None else labels[where]
        mu, logvar = model.encode(b.enc_ids.to(device), b.enc_mask.to(device), lab)
        mu_all[where] = mu.float()
        lv_all[where] = logvar.float()
    model.train(was_training)
    return mu_all, lv_all


@torch.no_grad()
def code_nll(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer, codes: torch.Tensor,
             batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p(x | code) under the decoder, teacher-forced, and the number of scored tokens (eos
    included), per sentence: (N,), (N,) float64 on the CPU.

    Args:
        ids: N token-id lists (no specials; see :func:`prepare_ids`).
        codes: (N, L) decoder codes, a conditional model's from ``model.code(z, labels)``.
    """
    device = next(model.parameters()).device
    nll = torch.empty(len(ids), dtype=torch.float64)
    was_training = model.training
    model.eval()
    for idx in length_batches(ids, batch_size):
        b = collate([ids[i] for i in idx], tok).to(device)
        logits, _ = model.decode(b.dec_in, codes[torch.as_tensor(idx, device=codes.device)].to(device))
        nll[idx] = reconstruction_nll(logits, b.targets, tok.pad_id).double().cpu()
    model.train(was_training)
    return nll, torch.tensor([len(x) + 1.0 for x in ids], dtype=torch.float64)


REFINE_LR = 0.05  # Adam step size of the encode-time refinement (z is of order 1)
MAX_REFINE_STEPS = 1000


def refine_posterior(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer, mu: torch.Tensor,
                     logvar: torch.Tensor, steps: int, lr: float = REFINE_LR, beta: float = 1.0,
                     batch_size: int = 128, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Semi-amortised inference at encode time (Kim et al. 2018): ``steps`` Adam steps on each
    posterior mean, from the encoder's, against the decoder.

    The objective of each sentence is its reconstruction NLL decoded from z = mu plus
    ``beta`` times KL(N(mu, exp(logvar)) || N(0, I)) (the encoder's variances are kept), so the
    refined mean rebuilds the sentence better without leaving the region the prior covers. Each
    sentence keeps the best point it reached, so it is never worse off than with the encoder's
    mean. Every sentence's mean is its own parameter (Adam is per coordinate): a sentence's
    result does not depend on the others in its batch, beyond the last bits of floating point.

    Args:
        mu, logvar: (N, L) the encoder's posterior parameters, in the order of ``ids``.
        steps: optimiser steps per sentence (0 returns ``mu`` unchanged).
        labels: a conditional model's label per sentence (N,), that it decodes with (None: the
            classifier's most likely).
    Returns:
        the refined means (N, L) float32 on the model's device.
    """
    if steps < 0 or steps > MAX_REFINE_STEPS:
        raise InputError(f"refinement steps must be between 0 and {MAX_REFINE_STEPS}, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"the refinement step size must be a positive number, got {lr}")
    if steps == 0 or len(ids) == 0:
        return mu
    device = mu.device
    out = mu.detach().clone().float()
    with model.frozen():
        for rows in length_batches(ids, batch_size):
            idx = torch.as_tensor(rows, device=device)
            b = collate([ids[i] for i in idx.tolist()], tok).to(device)
            z = out[idx].clone().requires_grad_(True)
            lv = logvar[idx].detach().float()
            lab = None
            if model.conditional:
                lab = (torch.as_tensor(labels, device=device)[idx] if labels is not None
                       else model.classify(b.enc_ids, b.enc_mask).argmax(-1))
            opt = torch.optim.Adam([z], lr=lr)
            best = z.detach().clone()
            best_loss = torch.full((len(idx),), math.inf, device=device)
            for step in range(steps + 1):  # the last pass only scores the last update
                with torch.enable_grad():
                    logits, _ = model.decode(b.dec_in, model.code(z, lab))
                    loss = reconstruction_nll(logits, b.targets, tok.pad_id) + beta * gaussian_kl(z, lv).sum(1)
                better = loss.detach() < best_loss  # each row keeps its best point: never worse than the encoder's
                best[better] = z.detach()[better]
                best_loss = torch.minimum(best_loss, loss.detach())
                if step == steps:
                    break
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()  # a sum: each row's gradient is its own sentence's
                opt.step()
            out[idx] = best
    return out


SCORE_METHODS = ("iw", "elbo")
SCORE_IW_SAMPLES = 100  # importance samples K of ``textvae score``


def score_sentences(model: SentenceVAE, tok: Tokenizer, texts: Sequence[str], method: str = "iw", k: int = SCORE_IW_SAMPLES,
                    seed: int = 0, prior: Optional[Any] = None) -> list[dict]:
    """Likelihood score of each sentence (anomaly detection): {text, nll, nll_per_token, tokens,
    method, iw_samples, prior}. ``method`` 'iw': the importance-weighted bound with K = ``k``; 'elbo':
    the negative ELBO (analytic KL under N(0, I); one sample of log q - log p under a fitted prior).
    ``prior``: p(z) of the bound, a fitted mixture (textvae/prior.py); None: N(0, I). nll_per_token
    counts eos. Sentences too long for the model are truncated."""
    if method not in SCORE_METHODS:
        raise InputError(f"unknown scoring method {method!r}; use one of {', '.join(SCORE_METHODS)}")
    if k < 1:
        raise InputError("--iw-samples must be at least 1")
    ids, truncated = prepare_ids(tok, texts, model.cfg.max_len)
    if truncated:
        log.warning("%d sentences were longer than the model's limit (%d tokens) and were truncated",
                    truncated, model.cfg.max_len)
    if method == "iw":
        nll = iw_nll(model, ids, tok, k=k, seed=seed, prior=prior)
    elif prior is not None:
        nll = iw_nll(model, ids, tok, k=1, seed=seed, prior=prior)  # K = 1: a one-sample negative ELBO
    else:
        nll, _ = elbo_per_sentence(model, ids, tok, seed=seed)
    return [{"text": text, "nll": v, "nll_per_token": v / (len(x) + 1), "tokens": len(x) + 1,
             "method": method, "iw_samples": k if method == "iw" else None,
             "prior": "normal" if prior is None else "fitted"}
            for text, x, v in zip(texts, ids, nll.tolist())]


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int = 128, seed: int = 0) -> float:
    """I(x; z) under q, with the minibatch estimator of He et al. (2019).

    For each batch of N sentences: E_x E_q(z|x)[log q(z|x)] - E_z[log q(z)], where the
    aggregate posterior q(z) is approximated by the batch's mixture (1/N) sum_j q(z|x_j).
    Batches of ``batch_size`` in data order; the result is their size-weighted mean (nats). The
    mixture holds each z's own component, so the estimate is at most about log N: it saturates
    once codes are far apart (a model whose z carries tens of nats reads as log N).
    """
    N, L = mu.shape
    if L == 0 or N == 0:
        return 0.0
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, N, batch_size):
        m, lv = mu[start : start + batch_size].double(), logvar[start : start + batch_size].double()
        n = m.shape[0]
        neg_entropy = (-0.5 * L * math.log(2 * math.pi) - 0.5 * (1 + lv).sum(-1)).mean()
        z = m + (0.5 * lv).exp() * torch.randn(m.shape, generator=g, dtype=torch.float64)
        log_density = _log_normal(z[:, None, :], m[None, :, :], lv[None, :, :])  # (n, n): log q(z_i | x_j)
        log_qz = torch.logsumexp(log_density, dim=1) - math.log(n)
        total += float(neg_entropy - log_qz.mean()) * n
    return total / N


@torch.no_grad()
def greedy_reconstructions(model: SentenceVAE, ids: Sequence[Sequence[int]], tok: Tokenizer,
                           batch_size: int = 128, refine_steps: int = 0, **decode_kwargs: Any) -> list[str]:
    """Greedy decoding from the posterior mean (refined by :func:`refine_posterior` when
    ``refine_steps`` > 0), in the order of ``ids``."""
    from textvae.generate import decode_texts

    labels = predict_labels(model, ids, tok, batch_size).argmax(-1) if model.conditional else None
    mu, logvar = posterior_params(model, ids, tok, batch_size, labels)
    mu = refine_posterior(model, ids, tok, mu, logvar, refine_steps, batch_size=batch_size, labels=labels)
    return decode_texts(model, tok, model.code(mu, labels), batch_size, strategy="greedy", **decode_kwargs)[0]


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU of each text against all the others (Zhu et al. 2018); lower = more diverse."""
    import sacrebleu

    if len(texts) < 2:
        return 0.0
    bleu = sacrebleu.BLEU(effective_order=True)
    scores = [bleu.sentence_score(t, [o for j, o in enumerate(texts) if j != i]).score for i, t in enumerate(texts)]
    return sum(scores) / len(scores)


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Probability that a random positive scores higher than a random negative (ties count half)."""
    pos = torch.as_tensor(list(positive), dtype=torch.float64)
    neg = torch.as_tensor(list(negative), dtype=torch.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative score")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


# --------------------------------------------------------------------------- the full report


_PUNCT = "".join(chr(c) for c in range(0x2000, 0x2070)) + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u00ab\u00bb\u00bf\u00a1"


def words_of(text: str) -> list[str]:
    """The words of a text as the unseen-word rate counts them: whitespace-separated, leading and
    trailing punctuation stripped, lowercased; pure punctuation is not a word."""
    out = []
    for w in text.split():
        w = w.strip(_PUNCT).lower()
        if w:
            out.append(w)
    return out


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word (:func:`words_of`) of a corpus."""
    return {w for t in texts for w in words_of(t)}


def unseen_word_rate(texts: Sequence[str], known: set[str]) -> float:
    """Share of the words of ``texts`` that never occur in the corpus whose :func:`vocabulary` is
    ``known``: made-up words (subword pieces glued into a non-word) and rare real ones."""
    words = [w for t in texts for w in words_of(t)]
    return sum(w not in known for w in words) / len(words) if words else 0.0


def evaluate_model(model: SentenceVAE, tok: Tokenizer, texts: Sequence[str], *, iw_samples: int = 500,
                   batch_size: int = 32, mi_batch_size: int = 128, au_threshold: float = AU_THRESHOLD,
                   n_samples: int = 200, top_p: float = 0.9, training_texts: Optional[Sequence[str]] = None,
                   seed: int = 0, lm_nll: Optional[torch.Tensor] = None, decode_kwargs: Optional[dict] = None,
                   prior: Optional[Any] = None, refine_steps: int = 0,
                   lm: Optional[tuple[SentenceVAE, Tokenizer]] = None,
                   z_temperature: float = DEFAULT_Z_TEMPERATURE) -> dict:
    """Every figure of ``textvae evaluate`` for ``texts``, each with its convention.

    Args:
        training_texts: the training corpus: the share of samples copied from it, and the words the
            unseen-word rates are measured against.
        lm_nll: (N,) exact NLL of ``texts`` under a language-model baseline (same data, no z): adds
            ``lm_nll``, ``iw_gap`` (IW-NLL - LM NLL) and ``latent_efficiency`` ((LM NLL - rec) / KL).
        decode_kwargs: decoding options of the reconstructions and samples (e.g. ``words``).
        prior: the prior samples are drawn from (see :func:`textvae.generate.sample`; None: N(0, I)).
            A fitted mixture also adds ``fitted_prior``: KL, IW-NLL (and, with ``lm_nll``, the gap
            and the efficiency) of the model with it as its prior (unconditional models).
        refine_steps: reconstruct from posterior means refined at encode time (:func:`refine_posterior`).
        z_temperature: the prior samples' z temperature (:func:`textvae.generate.sample`).
        lm: the language-model baseline itself (model, tokenizer): the prior samples are scored by
            it (``samples.lm_nll_per_token``: their fluency to a judge that never saw z).
    """
    ids, truncated = prepare_ids(tok, texts, model.cfg.max_len)
    refs = [tok.decode(x) for x in ids]  # what the model can reproduce (after truncation)
    known = vocabulary(training_texts) if training_texts is not None else None
    report = {"data": {"sentences": len(ids), "truncated": truncated, "tokens": sum(len(x) + 1 for x in ids),
                       "words": sum(len(t.split()) for t in refs),
                       "note": "tokens count eos (not bos); words are whitespace-separated words of the reference"}}
    report.update(_likelihood_figures(model, tok, ids, report["data"], iw_samples, batch_size, mi_batch_size,
                                      au_threshold, seed, lm_nll, prior))
    report.update(_reconstruction_figures(model, tok, ids, refs, known, decode_kwargs or {}, refine_steps))
    report["samples"] = _sample_figures(model, tok, n_samples, top_p, seed, training_texts, known,
                                        decode_kwargs or {}, prior, lm, z_temperature)
    return report


def lm_nll_per_token(lm: tuple[SentenceVAE, Tokenizer], texts: Sequence[str]) -> Optional[float]:
    """A language model's exact NLL of ``texts`` per token (eos counted), over the whole set: how
    fluent the texts are to a judge that has never seen z. None for no texts."""
    model, tok = lm
    if not texts:
        return None
    ids, _ = prepare_ids(tok, texts, model.cfg.max_len)
    return per_token(iw_nll(model, ids, tok, k=1), ids)


def per_token(nll: torch.Tensor, ids: list[list[int]]) -> float:
    """Per-sentence NLLs summed and divided by the tokens they cover (eos counted, bos not)."""
    return float(nll.sum()) / sum(len(x) + 1 for x in ids)


def _likelihood_figures(model: SentenceVAE, tok: Tokenizer, ids: list[list[int]], data: dict, iw_samples: int,
                        batch_size: int, mi_batch_size: int, au_threshold: float, seed: int,
                        lm_nll: Optional[torch.Tensor], prior: Optional[Any] = None) -> dict:
    neg_elbo, kl = elbo_per_sentence(model, ids, tok, seed=seed)
    fitted = prior is not None and not model.is_lm and not model.conditional
    iws = iw_nlls(model, ids, tok, [None, prior] if fitted else [None], k=iw_samples, batch_size=batch_size,
                  seed=seed)
    iw = iws[0]
    mu, logvar = (t.cpu() for t in posterior_params(model, ids, tok))
    au, _ = active_units(mu, au_threshold)
    out = {
        "rec": float((neg_elbo - kl).mean()),
        "kl": float(kl.mean()),
        "neg_elbo": float(neg_elbo.mean()),
        "elbo_note": "nats per sentence; analytic KL; reconstruction with one z sample",
        "iw_nll": float(iw.mean()),
        "iw_samples": iw_samples if not model.is_lm else 0,
        "iw_note": ("importance-weighted bound (Burda et al. 2016), nats per sentence" if not model.is_lm
                    else "exact NLL of a language model (no latent), nats per sentence"),
        "ppl_token": math.exp(float(iw.sum()) / data["tokens"]),
        "ppl_word": math.exp(float(iw.sum()) / max(data["words"], 1)),
        "mi": mutual_information(mu, logvar, mi_batch_size, seed),
        "mi_batch_size": mi_batch_size,
        "active_units": au,
        "latent_dim": model.cfg.latent_dim,
        "au_threshold": au_threshold,
    }
    if lm_nll is not None:
        lm = float(lm_nll.double().mean())
        out.update({"lm_nll": lm, "iw_gap": out["iw_nll"] - lm,
                    "latent_efficiency": (lm - out["rec"]) / out["kl"] if out["kl"] > 0 else float("nan"),
                    "lm_note": "lm_nll: exact NLL of the LM baseline on the same sentences; latent_efficiency: "
                               "(lm_nll - rec) / KL, reconstruction nats bought per nat of KL"})
    if fitted:
        # The same decoder with the fitted mixture as its prior p(z): the two-stage model that
        # `textvae sample` draws from (Dai & Wipf 2019). Its KL has no closed form: Monte Carlo.
        kl_fit = kl_to_prior(mu, logvar, prior, FITTED_KL_SAMPLES, seed)
        f = {"kl": float(kl_fit.mean()), "neg_elbo": out["rec"] + float(kl_fit.mean()), "iw_nll": float(iws[1].mean()),
             "components": int(prior.weights.numel()), "covariance": prior.covariance,
             "note": f"the model with the fitted mixture as its prior p(z) (what sample draws from); KL by Monte "
                     f"Carlo with {FITTED_KL_SAMPLES} samples per sentence, IW-NLL from the same z_k as above"}
        if lm_nll is not None:
            f.update({"iw_gap": f["iw_nll"] - out["lm_nll"],
                      "latent_efficiency": (out["lm_nll"] - out["rec"]) / f["kl"] if f["kl"] > 0 else float("nan")})
        out["fitted_prior"] = f
    return out


def _reconstruction_figures(model: SentenceVAE, tok: Tokenizer, ids: list[list[int]], refs: list[str],
                            known: Optional[set[str]], decode_kwargs: dict, refine_steps: int = 0) -> dict:
    import sacrebleu

    hyps = greedy_reconstructions(model, ids, tok, refine_steps=refine_steps, **decode_kwargs)
    metric = sacrebleu.BLEU()
    return {
        "recon_bleu": metric.corpus_score(hyps, [refs]).score,
        "recon_exact": sum(h == r for h, r in zip(hyps, refs)) / max(len(ids), 1),
        "recon_unseen_words": unseen_word_rate(hyps, known) if known is not None else None,
        "bleu_signature": str(metric.get_signature()),
        "recon_examples": [{"source": r, "output": h} for r, h in zip(refs[:10], hyps[:10])],
    }


def _sample_figures(model: SentenceVAE, tok: Tokenizer, n: int, top_p: float, seed: int,
                    training_texts: Optional[Sequence[str]], known: Optional[set[str]], decode_kwargs: dict,
                    prior: Optional[Any], lm: Optional[tuple[SentenceVAE, Tokenizer]] = None,
                    z_temperature: float = DEFAULT_Z_TEMPERATURE) -> dict:
    from textvae.generate import sample

    texts, finished = (sample(model, tok, n, seed=seed, prior=prior, strategy="sample", top_p=top_p,
                              z_temperature=z_temperature, **decode_kwargs) if n else ([], []))
    train_set = set(training_texts) if training_texts is not None else None
    return {
        "n": n, "strategy": f"top-p {top_p}", "z_temperature": z_temperature,
        "eos_rate": sum(finished) / max(n, 1),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "self_bleu": self_bleu(texts),
        "mean_words": sum(len(t.split()) for t in texts) / max(n, 1),
        "copied_rate": (sum(t in train_set for t in texts) / max(n, 1)) if train_set is not None else None,
        "unseen_words": unseen_word_rate(texts, known) if known is not None else None,
        "lm_nll_per_token": lm_nll_per_token(lm, texts) if lm is not None else None,
        "examples": texts[:10],
    }


EVAL_SPLITS = ("train", "valid", "test")
LONG_MODES = ("truncate", "drop")  # what evaluate does with sentences longer than model.max_len
DEFAULT_IW_SAMPLES = 500
"""Importance samples K of IW-NLL in ``textvae evaluate`` (as He et al. 2019)."""
IW_BATCH_SIZE = 32  # sentences per IW-NLL batch (K samples each, in chunks of at most 512 decoder rows)
MI_BATCH_SIZE = 128  # batch of the minibatch MI estimator
SAMPLE_COUNT = 200  # prior samples for the sample-quality figures
FITTED_KL_SAMPLES = 16  # Monte Carlo samples per sentence of the KL to a fitted prior


def evaluate_checkpoint(loaded: Any, data: Optional[str] = None, split: str = "test",
                        text_column: Optional[str] = None, max_words: Optional[int] = None, limit: int = 0,
                        iw_samples: int = DEFAULT_IW_SAMPLES, batch_size: int = IW_BATCH_SIZE,
                        mi_batch_size: int = MI_BATCH_SIZE, au_threshold: float = AU_THRESHOLD,
                        samples: int = SAMPLE_COUNT, seed: int = 0, lm: Any = None, words: Any = None,
                        prior: Any = None, refine_steps: int = 0, long: str = "truncate",
                        z_temperature: float = DEFAULT_Z_TEMPERATURE) -> dict:
    """:func:`evaluate_model` on held-out data cleaned by the checkpoint's own data rules.

    Args:
        loaded: a :class:`textvae.checkpoint.Loaded`.
        data: a data file or hub name (default: the config's file for ``split``).
        max_words: drop longer sentences (default: the config's data.max_words; 0: no limit).
        limit: the first N sentences only (0: all).
        samples: prior samples for the sample-quality figures (0: none).
        lm: a loaded language-model baseline (latent_dim 0) to measure the latent's efficiency against.
        words: decode reconstructions and samples with only these words (textvae.generate.SeenWords).
        prior: draw the samples from this fitted prior (textvae/prior.py) instead of N(0, I).
        refine_steps: reconstruct from posterior means refined at encode time (Kim et al. 2018).
        long: sentences longer than model.max_len: "truncate" them (counted in data.truncated) or "drop"
            them as training does (counted in data.dropped_long; ``limit`` then counts the kept ones).
        z_temperature: the prior samples' z temperature (:func:`textvae.generate.sample`).
    The config's training file, when it can be read, gives the copy rate of samples and the
    words of the unseen-word rates.
    """
    from textvae.data import load_texts

    if iw_samples < 1:
        raise InputError("--iw-samples must be at least 1")
    if samples < 0 or batch_size < 1 or mi_batch_size < 2:
        raise InputError("--samples must be >= 0, --batch-size >= 1, --mi-batch-size >= 2")
    if lm is not None and not lm.model.is_lm:
        raise InputError("--lm-checkpoint must be a language model (trained with model.latent_dim=0)")
    dc = loaded.config.data
    source = data or getattr(dc, split, None)
    if not source:
        raise InputError(f"the checkpoint's config names no {split} data; pass --data FILE")
    if long not in LONG_MODES:
        raise InputError(f"unknown long-sentence mode {long!r}; valid: {', '.join(LONG_MODES)}")
    texts = load_texts(source, split, text_column or dc.text_column, dc.min_words,
                       dc.max_words if max_words is None else max_words, 0 if long == "drop" else limit,
                       report=True)
    dropped_long = 0
    if long == "drop":
        texts, dropped_long = drop_long(loaded.tokenizer, texts, loaded.config.model.max_len)
        if not texts:
            raise DataError(f"{source}: every sentence is longer than the model's limit "
                            f"({loaded.config.model.max_len} tokens)")
        texts = texts[:limit] if limit else texts
    train_texts = None
    try:
        train_texts = load_texts(dc.train, dc.train_split, dc.text_column, 0, 0)
    except TextVAEError as e:
        log.warning("copy rate and unseen words not computed: %s", e)
    lm_nll = None
    if lm is not None:
        lm_ids, _ = prepare_ids(lm.tokenizer, texts, lm.model.cfg.max_len)
        lm_nll = iw_nll(lm.model, lm_ids, lm.tokenizer, k=1)  # exact for a language model
    report = evaluate_model(loaded.model, loaded.tokenizer, texts, iw_samples=iw_samples, batch_size=batch_size,
                            mi_batch_size=mi_batch_size, au_threshold=au_threshold, n_samples=samples,
                            training_texts=train_texts, seed=seed, lm_nll=lm_nll, decode_kwargs={"words": words},
                            prior=prior, refine_steps=refine_steps,
                            lm=(lm.model, lm.tokenizer) if lm is not None else None, z_temperature=z_temperature)
    report["decoding"] = {"words": "seen in training" if words is not None else "any",
                          "prior": "fitted mixture" if prior is not None else "N(0, I)",
                          "refine_steps": refine_steps}
    report["checkpoint"] = str(loaded.path)
    report["data"]["source"] = source
    report["data"]["dropped_long"] = dropped_long
    if lm is not None:
        report["lm_checkpoint"] = str(lm.path)
        # the yardstick of the samples' lm_nll_per_token: the same LM on the held-out sentences
        report["lm_nll_per_token"] = per_token(lm_nll, lm_ids)
    if report["data"]["truncated"]:
        log.warning("%d sentences were longer than the model's limit (%d tokens) and were truncated",
                    report["data"]["truncated"], loaded.config.model.max_len)
    return report


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_report(r: dict) -> str:
    """The report as an aligned, readable table; every figure names its convention."""
    s = r["samples"]
    rows = [
        ("sentences", f"{r['data']['sentences']}",
         f"{r['data']['dropped_long']} longer than the model's length limit dropped" if r["data"].get("dropped_long")
         else f"{r['data']['truncated']} truncated to the model's length limit"),
        ("reconstruction NLL", f"{r['rec']:.2f}", "nats/sentence, one z ~ q(z|x)"),
        ("KL", f"{r['kl']:.2f}", "nats/sentence, KL(q(z|x) || N(0, I)), analytic"),
        ("negative ELBO", f"{r['neg_elbo']:.2f}", "nats/sentence"),
        ("IW-NLL", f"{r['iw_nll']:.2f}", f"nats/sentence, K = {r['iw_samples']}" if r["iw_samples"] else "nats/sentence, exact (no latent)"),
        ("PPL per token", f"{r['ppl_token']:.2f}", f"exp(IW-NLL / tokens), {r['data']['tokens']} tokens, eos counted"),
        ("PPL per word", f"{r['ppl_word']:.2f}", f"exp(IW-NLL / words), {r['data']['words']} whitespace words, eos not counted"),
        ("mutual information", f"{r['mi']:.3f}",
         f"nats, minibatch estimator of He et al. 2019, batch {r['mi_batch_size']} (it cannot exceed about "
         f"log {r['mi_batch_size']} = {math.log(r['mi_batch_size']):.2f}: a larger MI reads as that)"),
        ("active units", f"{r['active_units']}/{r['latent_dim']}", f"Cov_x(E_q[z]) > {r['au_threshold']}"),
        ("reconstruction BLEU", f"{r['recon_bleu']:.2f}", "greedy from the posterior mean, sacreBLEU corpus BLEU"),
        ("reconstruction exact", f"{100 * r['recon_exact']:.1f}%", "greedy reconstructions identical to the input"),
        ("reconstruction unseen words", _pct(r.get("recon_unseen_words")), "words never seen in training"),
        ("samples distinct-1", f"{s['distinct_1']:.3f}", f"{s['n']} prior samples, {s['strategy']}"
         + (f", z temperature {s['z_temperature']:g}" if "z_temperature" in s else "")),
        ("samples distinct-2", f"{s['distinct_2']:.3f}", "unique word bigrams / all bigrams"),
        ("samples self-BLEU", f"{s['self_bleu']:.2f}", "mean sentence BLEU of each sample vs the others"),
        ("samples mean length", f"{s['mean_words']:.1f}", "words"),
        ("samples ending in eos", f"{100 * s['eos_rate']:.1f}%", "before the length limit"),
        ("samples copied", _pct(s["copied_rate"]), "verbatim training sentences"),
        ("samples unseen words", _pct(s.get("unseen_words")), "words never seen in training"),
    ]
    if s.get("lm_nll_per_token") is not None:
        rows.append(("samples LM NLL per token", f"{s['lm_nll_per_token']:.3f}",
                     f"fluency: the --lm-checkpoint model's exact NLL of the samples (held-out text: "
                     f"{r['lm_nll_per_token']:.3f})"))
    fit = r.get("fitted_prior")
    if fit is not None:
        kind = f"{fit['components']} {fit['covariance']}-covariance Gaussians"
        extra = [("KL, fitted prior", f"{fit['kl']:.2f}", f"nats/sentence, KL(q(z|x) || fitted mixture of {kind}), "
                  "Monte Carlo"),
                 ("IW-NLL, fitted prior", f"{fit['iw_nll']:.2f}", "nats/sentence, the model with the fitted mixture "
                  "as p(z), same samples")]
        if fit.get("iw_gap") is not None:
            extra += [("IW-NLL - LM NLL, fitted", f"{fit['iw_gap']:+.2f}", "nats/sentence"),
                      ("latent efficiency, fitted", f"{fit['latent_efficiency']:.3f}",
                       "(LM NLL - reconstruction) / KL to the fitted prior")]
        rows[5:5] = extra
    if r.get("lm_nll") is not None:
        rows[5:5] = [("LM baseline NLL", f"{r['lm_nll']:.2f}", "nats/sentence, exact, the --lm-checkpoint model"),
                     ("IW-NLL - LM NLL", f"{r['iw_gap']:+.2f}", "nats/sentence: what the latent costs as an LM"),
                     ("latent efficiency", f"{r['latent_efficiency']:.3f}", "(LM NLL - reconstruction) / KL")]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines.append(f"BLEU signature: {r['bleu_signature']}")
    return "\n".join(lines)
