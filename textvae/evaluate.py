"""Figures of merit: ELBO terms and active units on held-out data, quality of prior samples."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterable, Optional, Sequence

import torch

from textvae.data import BucketBatcher, Corpus
from textvae.losses import gaussian_kl, reconstruction_nll
from textvae.model import TextVAE
from textvae.tokenizer import Tokenizer

AU_THRESHOLD = 0.01


def active_units(mu: torch.Tensor, threshold: float = AU_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Active units (Burda et al. 2016): dimensions whose posterior mean varies over the data,
    Cov_x(E_q[z_d | x]) > threshold. mu (N, L) -> (count, per-dimension variance (L,))."""
    if mu.shape[1] == 0 or mu.shape[0] < 2:
        var = torch.zeros(mu.shape[1])
    else:
        var = mu.float().var(dim=0, unbiased=True)
    return int((var > threshold).sum()), var


@torch.no_grad()
def evaluate_elbo(model: TextVAE, corpus: Corpus, tok: Tokenizer, batch_size: int = 128,
                  max_batches: int = 0, seed: int = 0, au_threshold: float = AU_THRESHOLD,
                  autocast: Optional[contextlib.AbstractContextManager] = None) -> dict[str, float]:
    """Reconstruction NLL, KL and negative ELBO (nats per sentence, one z sample each),
    per-token NLL bound, and active units over ``corpus``. Uses its own seeded generator,
    so it never disturbs the training random state."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    batches = BucketBatcher([len(x) for x in corpus.ids], batch_size, shuffle=False).epoch_batches(0)
    if max_batches:
        step = max(1, len(batches) // max_batches)
        batches = batches[::step][:max_batches]
    rec = kl = 0.0
    n = tokens = 0
    mus = []
    for idx in batches:
        b = corpus.batch(idx, tok).to(device)
        with autocast if autocast is not None else contextlib.nullcontext():
            mu, logvar = model.encode(b.enc_ids, b.enc_mask)
            z = model.reparameterize(mu.float(), logvar.float(), g)
            logits, _ = model.decode(b.dec_in, z.to(mu.dtype))
        rec += float(reconstruction_nll(logits, b.targets, tok.pad_id).sum())
        kl += float(gaussian_kl(mu, logvar).sum())
        n += len(idx)
        tokens += b.n_tokens
        mus.append(mu.float().cpu())
    model.train(was_training)
    au, _ = active_units(torch.cat(mus), au_threshold)
    L = model.cfg.latent_dim
    return {
        "rec": rec / n,
        "kl": kl / n,
        "neg_elbo": (rec + kl) / n,
        "nll_per_token": (rec + kl) / tokens,
        "active_units": au,
        "active_fraction": au / L if L else 0.0,
        "sentences": n,
    }


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams over all n-grams in the texts."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_quality(texts: Sequence[str], finished: Sequence[bool], training_texts: Iterable[str]) -> dict[str, float]:
    """Share ending with eos, share not copied verbatim from training, distinct-1/2, mean length."""
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
    }
