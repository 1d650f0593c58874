"""z -> text: greedy, sampling (temperature, top-k, top-p) and beam search, with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from textvae.errors import OptionError
from textvae.model import SentenceVAE
from textvae.tokenizer import Tokenizer

STRATEGIES = ("greedy", "sample", "beam")
DEFAULT_TOP_P = 0.9
"""Nucleus mass of prior sampling and of 'sample' decoding when none is given on the command line."""
DEFAULT_BEAM_SIZE = 4


def check_options(strategy: str = "greedy", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  beam_size: int = DEFAULT_BEAM_SIZE, max_len: Optional[int] = None, no_repeat_ngram: int = 0,
                  use_cache: bool = True) -> None:
    """Raise :class:`OptionError` (one line naming the command-line option) for a decoding
    option out of range; :func:`decode` calls it, so every command and API call is checked."""
    if strategy not in STRATEGIES:
        raise OptionError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not 0.0 < top_p <= 1.0:
        raise OptionError("--top-p must be in (0, 1]")
    if not temperature > 0:
        raise OptionError("--temperature must be > 0")
    if beam_size < 1 or top_k < 0 or (max_len is not None and max_len < 1):
        raise OptionError("--beam-size and --max-len must be at least 1, --top-k at least 0")
    if no_repeat_ngram < 0:
        raise OptionError("--no-repeat-ngram must be >= 0")
    if no_repeat_ngram and strategy == "beam":
        raise OptionError("--no-repeat-ngram applies to --strategy greedy or sample, not beam")
    if strategy == "beam" and not use_cache:
        raise OptionError("beam search always uses the key/value cache")


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
           max_len: Optional[int] = None, generator: Optional[torch.Generator] = None,
           use_cache: bool = True, no_repeat_ngram: int = 0) -> Decoded:
    """Decode latent codes z (B, L) into token ids, all rows of the batch at once.

    Args:
        strategy: 'greedy', 'sample' (temperature, top_k, top_p apply) or 'beam'.
        max_len: most tokens to generate, eos included (default: the model's limit less bos).
        generator: random source for 'sample'.
        use_cache: keep each layer's keys and values, so a step runs the decoder on the new
            token only. False recomputes the whole prefix every step (the same tokens, slower:
            the reference that ``scripts/benchmark_speed.py`` measures the cache against);
            greedy and sample only.
        no_repeat_ngram: n > 0 forbids any token n-gram from appearing twice in a row's output
            (greedy and sample): a weak decoder's greedy output otherwise loops ("the sons of the
            sons of ..."). 0 (default) decodes the model's distribution unchanged.
    """
    check_options(strategy, temperature, top_k, top_p, beam_size, max_len, no_repeat_ngram, use_cache)
    limit = model.cfg.max_len - 1 if max_len is None else min(max_len, model.cfg.max_len - 1)
    if strategy == "beam":
        return _beam(model, z, bos_id, eos_id, beam_size, limit)
    B = z.shape[0]
    device = z.device
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out = torch.empty(B, 0, dtype=torch.long, device=device)
    cache = model.init_cache(z)
    prefix = tokens
    for step in range(limit):
        if use_cache:
            logits, cache = model.decode(tokens, z, cache, start=step)
        else:
            logits, _ = model.decode(prefix, z, last_only=True)
        logits = logits[:, -1].float()
        if no_repeat_ngram:
            logits = ban_repeated_ngrams(logits, out, no_repeat_ngram, eos_id)
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
        if not use_cache:
            prefix = torch.cat([prefix, tokens], dim=1)
    return _finish(out.tolist(), eos_id)


def ban_repeated_ngrams(logits: torch.Tensor, out: torch.Tensor, n: int, eos_id: int) -> torch.Tensor:
    """Set to -inf the logits (B, V) of tokens that would complete an n-gram already present in
    the row's output so far, out (B, t). eos is never banned, so a row can always end."""
    if out.shape[1] < n - 1:
        return logits
    banned_rows, banned_tokens = [], []
    for b, row in enumerate(out.tolist()):
        key = tuple(row[len(row) - n + 1:]) if n > 1 else ()
        for i in range(len(row) - n + 1):
            if tuple(row[i : i + n - 1]) == key and row[i + n - 1] != eos_id:
                banned_rows.append(b)
                banned_tokens.append(row[i + n - 1])
    if not banned_rows:
        return logits
    logits = logits.clone()
    logits[banned_rows, banned_tokens] = float("-inf")
    return logits


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
        cache = model.reorder_cache(cache, rows)  # keys/values (or a GRU state) of the surviving beams
        if bool(done.all()):
            break
        tokens = tok.view(-1, 1)
    best = (scores / lengths.view(B, K).clamp_min(1.0)).argmax(-1)
    pick = torch.arange(B, device=device) * K + best
    return _finish(seqs[pick].tolist(), eos_id)


@torch.no_grad()
def decode_texts(model: SentenceVAE, tokenizer: Tokenizer, z: torch.Tensor, batch_size: int = 256,
                 generator: Optional[torch.Generator] = None, **decode_kwargs) -> tuple[list[str], list[bool]]:
    """Decode codes z (N, L) into sentences, ``batch_size`` rows at a time, one random stream
    (``generator``) across the batches. Returns (texts, finished flags)."""
    device = next(model.parameters()).device
    texts: list[str] = []
    finished: list[bool] = []
    for start in range(0, z.shape[0], batch_size):
        out = decode(model, z[start : start + batch_size].to(device), tokenizer.bos_id, tokenizer.eos_id,
                     generator=generator, **decode_kwargs)
        texts += [tokenizer.decode(ids) for ids in out.ids]
        finished += out.finished
    return texts, finished


@torch.no_grad()
def sample(model: SentenceVAE, tokenizer: Tokenizer, n: int, seed: int = 0, batch_size: int = 256,
           **decode_kwargs) -> tuple[list[str], list[bool]]:
    """Draw n codes from the prior N(0, I) and decode them. Returns (texts, finished flags)."""
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    gd = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    texts: list[str] = []
    finished: list[bool] = []
    for start in range(0, n, batch_size):  # codes are drawn batch by batch, between the decodes
        z = torch.randn(min(batch_size, n - start), model.cfg.latent_dim, generator=g).to(device)
        t, f = decode_texts(model, tokenizer, z, batch_size, gd, **decode_kwargs)
        texts += t
        finished += f
    return texts, finished
