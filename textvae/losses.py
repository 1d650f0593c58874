"""The training objective as pure functions, computed in float32.

negative ELBO = reconstruction NLL + beta * KL(q(z|x) || N(0, I)), in nats per sentence.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension: (B, L) -> (B, L), float32."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def free_bits_kl(kl_per_dim: torch.Tensor, free_bits: float, groups: int = 0) -> torch.Tensor:
    """KL term for the objective with a floor ("free bits").

    Kingma et al. (2016) split the latent dimensions into groups and clamp each group's KL from
    below, so the optimiser gains nothing by pushing a group's KL under its floor; as in Li et al.
    (2019) the floor applies to the KL averaged over the batch. ``free_bits`` is in nats per
    dimension, so a group of n dimensions has the floor n * free_bits. ``groups`` 0: one group per
    dimension (every dimension is held at the floor); 1: the whole of z is one group (the encoder
    may spend the same total on fewer dimensions); G: G contiguous groups of equal size.
    ``kl_per_dim`` (B, L) -> a scalar in nats per sentence. With ``free_bits == 0`` this is the
    plain mean KL.
    """
    return floored_kl(kl_per_dim.float().mean(0), free_bits, groups)


def floored_kl(per_dim: torch.Tensor, free_bits: float, groups: int = 0) -> torch.Tensor:
    """:func:`free_bits_kl` of each dimension's batch-mean KL (L,) -> a scalar."""
    if free_bits <= 0:
        return per_dim.sum()
    if groups <= 0 or groups >= per_dim.numel():
        return per_dim.clamp_min(free_bits).sum()
    if per_dim.numel() % groups:
        raise ValueError(f"{per_dim.numel()} latent dimensions do not split into {groups} equal groups")
    per_group = per_dim.view(groups, -1).sum(1)  # (G,)
    return per_group.clamp_min(free_bits * per_dim.numel() / groups).sum()


def reconstruction_nll(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Summed token negative log-likelihood per sentence: logits (B, T, V), targets (B, T) -> (B,)."""
    B, T, V = logits.shape
    nll = F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T),
                          ignore_index=pad_id, reduction="none")
    return nll.view(B, T).sum(1)


def bag_of_words_nll(bow_logits: torch.Tensor, targets: torch.Tensor, ignore_ids: tuple[int, ...]) -> torch.Tensor:
    """Bag-of-words loss (Zhao et al. 2017): bow_logits (B, V), targets (B, T) -> (B,).

    Every target token is scored under the one distribution softmax(bow_logits) of its
    sentence, whatever its position; tokens in ``ignore_ids`` (pad, eos) are left out.
    Summed over the sentence's tokens, in nats.
    """
    logp = bow_logits.float().log_softmax(-1).gather(1, targets)  # (B, T)
    keep = torch.ones_like(targets, dtype=torch.bool)
    for t in ignore_ids:
        keep &= targets != t
    return -(logp * keep).sum(1)


def elbo_loss(logits: torch.Tensor, targets: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              pad_id: int, beta: float = 1.0, free_bits: float = 0.0, bow_logits: Optional[torch.Tensor] = None,
              bow_weight: float = 0.0, bow_ignore: tuple[int, ...] = (),
              position_logits: Optional[torch.Tensor] = None, position_weight: float = 0.0,
              free_bits_groups: int = 0) -> dict[str, torch.Tensor]:
    """Objective and its parts, averaged over the batch (nats per sentence).

    Returns a dict with ``loss`` (rec + beta * KL with free bits [+ bow_weight * bag-of-words
    NLL], to minimise), ``rec``, ``kl`` (the true KL, for logging), ``kl_objective`` (the KL
    term as optimised), ``neg_elbo`` (rec + KL, beta = 1, no free bits) and, when
    ``bow_logits`` is given, ``bow`` (:func:`bag_of_words_nll`, ignoring pad and ``bow_ignore``);
    when ``position_logits`` (B, T, V) is given, ``position`` (the positional head's token NLL,
    :func:`reconstruction_nll` of its logits) weighted by ``position_weight``. ``free_bits_groups``:
    see :func:`free_bits_kl`.
    """
    rec = reconstruction_nll(logits, targets, pad_id).mean()
    kl_dim = gaussian_kl(mu, logvar)
    kl = kl_dim.sum(1).mean()
    kl_obj = free_bits_kl(kl_dim, free_bits, free_bits_groups)
    out = {"loss": rec + beta * kl_obj, "rec": rec, "kl": kl, "kl_objective": kl_obj, "neg_elbo": rec + kl}
    if bow_logits is not None:
        out["bow"] = bag_of_words_nll(bow_logits, targets, (pad_id, *bow_ignore)).mean()
        out["loss"] = out["loss"] + bow_weight * out["bow"]
    if position_logits is not None:
        out["position"] = reconstruction_nll(position_logits, targets, pad_id).mean()
        out["loss"] = out["loss"] + position_weight * out["position"]
    return out


def semi_supervised_loss(logits: torch.Tensor, targets: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                         class_logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, row_labels: torch.Tensor,
                         pad_id: int, beta: float = 1.0, free_bits: float = 0.0, classifier_weight: float = 0.0,
                         bow_logits: Optional[torch.Tensor] = None, bow_weight: float = 0.0,
                         bow_ignore: tuple[int, ...] = (), position_logits: Optional[torch.Tensor] = None,
                         position_weight: float = 0.0, adversary_logits: Optional[torch.Tensor] = None,
                         adversary_weight: float = 0.0, free_bits_groups: int = 0) -> dict[str, torch.Tensor]:
    """The semi-supervised objective of a label-conditional VAE (Kingma et al. 2014, M2), averaged
    over the B sentences (nats per sentence).

    A labelled sentence (``labels[i] >= 0``) contributes its conditional negative ELBO
    -E_q(z|x,y)[log p(x|z,y)] + KL plus ``classifier_weight`` * -log q(y|x) (the alpha term: the
    ELBO alone would not train the classifier on it). An unlabelled one contributes the
    expectation of the conditional negative ELBO under q(y|x), summed exactly over the K labels,
    minus the entropy of q(y|x). The uniform label prior adds the constant log K to the bound.

    Args:
        logits (E, T, V), mu, logvar (E, L): the decoded rows; row r is sentence ``rows[r]`` under
            label ``row_labels[r]`` (see :class:`textvae.model.VAEOutput`).
        targets (B, T); class_logits (B, K); labels (B,), -1 for unlabelled.
        free_bits, free_bits_groups: the floor of :func:`free_bits_kl`, on the q(y|x)-weighted KL.
    Returns:
        the dict of :func:`elbo_loss` (``rec`` and ``kl`` weighted by q(y|x) for unlabelled rows,
        ``neg_elbo`` including the label terms), with ``classifier`` (mean -log q(y|x) over the
        labelled sentences, 0 without any) and ``entropy`` (mean entropy of q(y|x) over the
        unlabelled ones, 0 without any); with ``adversary_logits`` (E, K), ``adversary``: the
        adversary's cross-entropy against each sentence's label (its own, or the classifier's
        most likely for an unlabelled one), rows weighted as the ELBO's, added times
        ``adversary_weight`` (the model reverses its gradient into the encoder).
    """
    B, K = class_logits.shape
    logq = class_logits.float().log_softmax(-1)  # (B, K)
    labelled = labels >= 0
    # a labelled sentence's one row counts fully; an unlabelled sentence's K rows by q(y=k|x)
    w = torch.where(labelled[rows], torch.ones((), device=logq.device), logq[rows, row_labels.clamp_min(0)].exp())
    row_targets = targets[rows]
    rec = (w * reconstruction_nll(logits, row_targets, pad_id)).sum() / B
    kl_w = w[:, None] * gaussian_kl(mu, logvar)  # (E, L)
    kl = kl_w.sum() / B
    per_dim = kl_w.sum(0) / B  # each dimension's KL averaged over the sentences, as in free_bits_kl
    kl_obj = floored_kl(per_dim, free_bits, free_bits_groups)
    entropy = -(logq.exp() * logq).sum(-1)  # (B,)
    unlabelled = (~labelled).float()
    ent_term = (entropy * unlabelled).sum() / B
    ce = -logq.gather(1, labels.clamp_min(0)[:, None]).squeeze(1) * labelled.float()  # (B,)
    ce_term = ce.sum() / B
    log_k = math.log(K)
    out = {"loss": rec + beta * kl_obj - ent_term + classifier_weight * ce_term, "rec": rec, "kl": kl,
           "kl_objective": kl_obj, "neg_elbo": rec + kl - ent_term + log_k,
           "classifier": ce.sum() / labelled.sum().clamp_min(1),
           "entropy": (entropy * unlabelled).sum() / unlabelled.sum().clamp_min(1)}
    if adversary_logits is not None:
        guess = torch.where(labelled, labels, logq.argmax(-1).detach())[rows]
        adv = F.cross_entropy(adversary_logits.float(), guess, reduction="none")
        out["adversary"] = (w.detach() * adv).sum() / B
        out["loss"] = out["loss"] + adversary_weight * out["adversary"]
    if bow_logits is not None:
        out["bow"] = (w * bag_of_words_nll(bow_logits, row_targets, (pad_id, *bow_ignore))).sum() / B
        out["loss"] = out["loss"] + bow_weight * out["bow"]
    if position_logits is not None:
        out["position"] = (w * reconstruction_nll(position_logits, row_targets, pad_id)).sum() / B
        out["loss"] = out["loss"] + position_weight * out["position"]
    return out


def word_dropout(dec_in: torch.Tensor, rate: float, unk_id: int, keep_ids: tuple[int, ...],
                 generator: Optional[torch.Generator] = None, draw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Replace decoder input tokens by unk with probability ``rate`` (Bowman et al. 2016).

    Weakening the decoder's view of the prefix makes it rely on z. Tokens in ``keep_ids``
    (pad, bos, eos) are never replaced. ``draw``: uniform numbers shaped like ``dec_in``
    (drawn here unless given).
    """
    if rate <= 0:
        return dec_in
    if draw is None:
        draw = torch.rand(dec_in.shape, generator=generator, device=dec_in.device)
    drop = draw < rate
    for t in keep_ids:
        drop &= dec_in != t
    return dec_in.masked_fill(drop, unk_id)
