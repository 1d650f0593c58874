"""The textvae model: transformer encoder -> Gaussian posterior -> z -> autoregressive decoder.

Shapes: B batch, S encoder length, T decoder length, D d_model, H heads, L latent_dim, V vocabulary.

    enc_ids (B, S) --embed--> encoder blocks (pre-LN, bidirectional) --pool--> h (B, D)
    h --Linear--> mu, logvar (B, L);  z = mu + exp(logvar / 2) * eps
    dec_in (B, T) --embed (+ W_e z)--> decoder blocks (pre-LN, causal; each attends to a
    key/value slot made from z) --tied output embedding--> logits (B, T, V)

z enters the decoder two ways, as in Optimus (Li et al. 2020): as a "memory" slot
that every layer's self-attention can attend to, and/or added to every input
embedding. The model returns tensors only; losses and schedules live elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from textvae.config import ModelConfig


@dataclass
class VAEOutput:
    logits: torch.Tensor  # (B, T, V)
    mu: torch.Tensor  # (B, L)
    logvar: torch.Tensor  # (B, L)
    z: torch.Tensor  # (B, L)


# One layer's cache: keys and values (B, H, P, Dh), P = memory slot + tokens seen so far.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Attention(nn.Module):
    """Multi-head self-attention with torch's scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.drop = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, causal: bool = False,
                prefix: Optional[tuple[torch.Tensor, torch.Tensor]] = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, D); mask (B or 1, 1, T, P+T) bool, True = attend; prefix: keys/values (B, H, P, Dh)
        that come before x (z memory and cached tokens). Returns output (B, T, D) and all keys/values."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = self.split(q), self.split(k), self.split(v)
        if prefix is not None:
            k = torch.cat([prefix[0], k], dim=2)
            v = torch.cat([prefix[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        if mask is None and causal and prefix is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.drop(self.proj(y)), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, d_ff, cfg.dropout)

    def forward(self, x, mask=None, causal=False, prefix=None):
        a, kv = self.attn(self.ln1(x), mask=mask, causal=causal, prefix=prefix)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, kv


class SentenceVAE(nn.Module):
    """Sentence VAE. ``forward`` runs encoder and decoder; ``encode``/``decode_step`` serve generation."""

    def __init__(self, cfg: ModelConfig, pad_id: int = 0):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (take it from the tokenizer)")
        self.cfg = cfg
        self.pad_id = pad_id
        D, L = cfg.d_model, cfg.latent_dim
        # One token embedding serves the encoder input, the decoder input and the output
        # layer (tied weights); positions are learned, separately for encoder and decoder.
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        self.enc_pos = nn.Embedding(cfg.max_len, D) if L > 0 else None
        self.dec_pos = nn.Embedding(cfg.max_len, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.is_lm = L == 0  # latent_dim 0: a plain language model, the baseline
        if not self.is_lm:
            self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.enc_layers))
            self.enc_ln = nn.LayerNorm(D)
            self.to_posterior = nn.Linear(D, 2 * L)  # -> (mu, logvar)
        self.decoder = nn.ModuleList(Block(cfg) for _ in range(cfg.dec_layers))
        self.dec_ln = nn.LayerNorm(D)
        self.use_memory = not self.is_lm and cfg.z_injection in ("memory", "both")
        self.use_embedding = not self.is_lm and cfg.z_injection in ("embedding", "both")
        if self.use_memory:
            # Optimus' "memory" scheme: z becomes one extra key and value per layer.
            self.z_to_memory = nn.Linear(L, 2 * D * cfg.dec_layers)
        if self.use_embedding:
            # Optimus' "embedding" scheme: z is added to every decoder input embedding.
            self.z_to_embedding = nn.Linear(L, D)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(cfg.enc_layers, cfg.dec_layers)))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ encoder

    def encode(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """enc_ids, enc_mask (B, S) -> mu, logvar (B, L)."""
        B, S = enc_ids.shape
        if self.is_lm:
            empty = self.tok_emb.weight.new_zeros(B, 0)
            return empty, empty
        if S > self.cfg.max_len:
            raise ValueError(f"sequence of {S} tokens is longer than model.max_len={self.cfg.max_len}")
        pos = torch.arange(S, device=enc_ids.device)
        x = self.drop(self.tok_emb(enc_ids) + self.enc_pos(pos))  # (B, S, D)
        attn_mask = enc_mask[:, None, None, :]  # (B, 1, 1, S): ignore padding keys
        for block in self.encoder:
            x, _ = block(x, mask=attn_mask)
        x = self.enc_ln(x)
        if self.cfg.pooling == "cls":
            h = x[:, 0]  # the bos position acts as CLS
        else:
            m = enc_mask.unsqueeze(-1).to(x.dtype)
            h = (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # masked mean (B, D)
        mu, logvar = self.to_posterior(h).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z = mu + sigma * eps (Kingma & Welling 2014), eps ~ N(0, I)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    # ------------------------------------------------------------------ decoder

    def init_cache(self, z: torch.Tensor) -> KVCache:
        """The z memory slot of every layer as the start of a key/value cache: (B, H, M, Dh), M = 0 or 1."""
        B = z.shape[0]
        D, H = self.cfg.d_model, self.cfg.n_heads
        if not self.use_memory:
            empty = z.new_zeros(B, H, 0, D // H)
            return [(empty, empty) for _ in self.decoder]
        mem = self.z_to_memory(z).view(B, len(self.decoder), 2, H, 1, D // H)
        return [(mem[:, i, 0], mem[:, i, 1]) for i in range(len(self.decoder))]

    def decode(self, dec_in: torch.Tensor, z: torch.Tensor, cache: Optional[KVCache] = None,
               start: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Decoder logits for tokens at positions start..start+T-1.

        Args:
            dec_in: (B, T) token ids.
            z: (B, L) latent codes.
            cache: keys/values of the z memory and earlier tokens (from :meth:`init_cache` or
                an earlier call); None starts afresh.
            start: position of dec_in[:, 0] (the number of tokens already in the cache).
        Returns:
            logits (B, T, V) and the extended cache.
        """
        B, T = dec_in.shape
        if start + T > self.cfg.max_len:
            raise ValueError(f"decoding past model.max_len={self.cfg.max_len}")
        if cache is None:
            cache = self.init_cache(z)
        pos = torch.arange(start, start + T, device=dec_in.device)
        x = self.tok_emb(dec_in) + self.dec_pos(pos)  # (B, T, D)
        if self.use_embedding:
            x = x + self.z_to_embedding(z).unsqueeze(1)
        x = self.drop(x)
        P = cache[0][0].shape[2]  # memory slot + cached tokens
        mask = None
        if T > 1:
            # query i (absolute position P+i in the key sequence) sees keys 0..P+i
            mask = torch.arange(P + T, device=dec_in.device)[None, :] <= (P + torch.arange(T, device=dec_in.device))[:, None]
            if P == 0:
                mask = None  # plain causal attention: the fast path
        new_cache: KVCache = []
        for block, layer_cache in zip(self.decoder, cache):
            prefix = layer_cache if P > 0 else None
            x, kv = block(x, mask=mask, causal=mask is None and T > 1, prefix=prefix)
            new_cache.append(kv)
        x = self.dec_ln(x)
        return F.linear(x, self.tok_emb.weight), new_cache  # tied output embedding

    # ------------------------------------------------------------------ training

    def forward(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_in: torch.Tensor,
                generator: Optional[torch.Generator] = None, sample: bool = True) -> VAEOutput:
        """enc_ids, enc_mask (B, S); dec_in (B, T) -> logits (B, T, V) with mu, logvar, z (B, L).

        ``sample=False`` decodes from the posterior mean instead of a sample.
        """
        mu, logvar = self.encode(enc_ids, enc_mask)
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        logits, _ = self.decode(dec_in, z)
        return VAEOutput(logits, mu, logvar, z)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
