"""z -> text: greedy, sampling (temperature, top-k, top-p) and beam search, with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from textvae.model import SentenceVAE
from textvae.tokenizer import Tokenizer

STRATEGIES = ("greedy", "sample", "beam")


@dataclass
class Decoded:
    ids: list[list[int]]  # tokens without bos/eos
    finished: list[bool]  # True where eos came before the length limit


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits (B, V) outside the top-k and/or the top-p nucleus (Holtzman et al. 2020) with -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def decode(model: SentenceVAE, z: torch.Tensor, bos_id: int, eos_id: int, strategy: str = "greedy",
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, beam_size: int = 4,
           max_len: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Decoded:
    """Decode latent codes z (B, L) into token ids with the key/value cache.

    Args:
        strategy: 'greedy', 'sample' (temperature, top_k, top_p apply) or 'beam'.
        max_len: most tokens to generate, eos included (default: the model's limit less bos).
        generator: random source for 'sample'.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    limit = model.cfg.max_len - 1 if max_len is None else min(max_len, model.cfg.max_len - 1)
    if strategy == "beam":
        return _beam(model, z, bos_id, eos_id, beam_size, limit)
    B = z.shape[0]
    device = z.device
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out = torch.empty(B, 0, dtype=torch.long, device=device)
    cache = model.init_cache(z)
    for step in range(limit):
        logits, cache = model.decode(tokens, z, cache, start=step)
        logits = logits[:, -1].float()
        if strategy == "greedy":
            nxt = logits.argmax(-1)
        else:
            logits = filter_logits(logits / max(temperature, 1e-6), top_k, top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(done, eos_id)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        tokens = nxt[:, None]
    return _finish(out.tolist(), eos_id)


def _finish(rows: list[list[int]], eos_id: int) -> Decoded:
    ids, finished = [], []
    for row in rows:
        if eos_id in row:
            ids.append(row[: row.index(eos_id)])
            finished.append(True)
        else:
            ids.append(row)
            finished.append(False)
    return Decoded(ids, finished)


def _beam(model: SentenceVAE, z: torch.Tensor, bos_id: int, eos_id: int, beam_size: int, limit: int) -> Decoded:
    """Beam search with length-normalised scores; each input row keeps beam_size hypotheses."""
    B, K = z.shape[0], beam_size
    device = z.device
    zk = z.repeat_interleave(K, dim=0)  # (B*K, L)
    cache = model.init_cache(zk)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=device)
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(B * K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B * K, device=device)
    for step in range(limit):
        logits, cache = model.decode(tokens, zk, cache, start=step)
        logp = logits[:, -1].float().log_softmax(-1)  # (B*K, V)
        V = logp.shape[-1]
        # finished beams may only extend with eos at no cost
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, eos_id] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        total = (scores.view(-1, 1) + logp).view(B, K * V)
        new_len = (lengths + (~done).float()).view(B, K, 1).expand(B, K, V).reshape(B, K * V)
        norm = total / new_len.clamp_min(1.0)
        top = norm.topk(K, dim=-1).indices  # (B, K)
        beam_idx = top // V
        tok = top % V
        rows = (torch.arange(B, device=device)[:, None] * K + beam_idx).view(-1)
        scores = total.gather(1, top)
        lengths = new_len.gather(1, top).view(-1)
        seqs = torch.cat([seqs[rows], tok.view(-1, 1)], dim=1)
        done = done[rows] | (tok.view(-1) == eos_id)
        cache = [(k[rows], v[rows]) for k, v in cache]
        if bool(done.all()):
            break
        tokens = tok.view(-1, 1)
    best = (scores / lengths.view(B, K).clamp_min(1.0)).argmax(-1)
    pick = torch.arange(B, device=device) * K + best
    return _finish(seqs[pick].tolist(), eos_id)


@torch.no_grad()
def sample(model: SentenceVAE, tokenizer: Tokenizer, n: int, seed: int = 0, batch_size: int = 256,
           **decode_kwargs) -> tuple[list[str], list[bool]]:
    """Draw n codes from the prior N(0, I) and decode them. Returns (texts, finished flags)."""
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    texts: list[str] = []
    finished: list[bool] = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        z = torch.randn(m, model.cfg.latent_dim, generator=g).to(device)
        out = decode(model, z, tokenizer.bos_id, tokenizer.eos_id, generator=gd, **decode_kwargs)
        texts += [tokenizer.decode(ids) for ids in out.ids]
        finished += out.finished
    return texts, finished
