"""The textvae model: encoder -> Gaussian posterior -> z -> autoregressive decoder.

Shapes: B batch, S encoder length, T decoder length, D d_model, H the width of the encoder's
states (D, or a pretrained encoder's hidden size; in attention code H is the number of heads),
L latent_dim, V vocabulary.

    enc_ids (B, S) --encoder--> states (B, S, H) --pool--> h (B, H)
    h --Linear--> mu, logvar (B, L);  z = mu + exp(logvar / 2) * eps
    dec_in (B, T), z --decoder--> logits (B, T, V)

``SentenceVAE`` composes one encoder and one decoder through the small interfaces below
(:class:`Encoder`, :class:`Decoder`) and never asks which kind they are. The kinds, chosen by
model.encoder.type / model.decoder.type in the builders ``ENCODERS`` / ``DECODERS``:

    TransformerEncoder  from scratch: pre-LN bidirectional blocks over the shared token embedding
    PretrainedEncoder   a pretrained ``transformers`` encoder reading its own tokenizer's ids
    TransformerDecoder  from scratch: pre-LN causal blocks; each layer attends to key/value slots
                        made from z; tied output embedding
    GRUDecoder          the recurrent decoder of the classic sentence VAE (Bowman et al. 2016)
    PretrainedDecoder   a pretrained causal LM conditioned on z like the transformer decoder

z enters the transformer decoders two ways, as in Optimus (Li et al. 2020): as a "memory" slot
that every layer's self-attention can attend to, and/or added to every input
embedding. The model returns tensors only; losses and schedules live elsewhere.
Adding a part means adding a class with the interface and one line in ENCODERS or DECODERS.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from textvae.config import END_POSITIONS, ModelConfig


@dataclass
class VAEOutput:
    logits: torch.Tensor  # (B, T, V)
    mu: torch.Tensor  # (B, L)
    logvar: torch.Tensor  # (B, L)
    z: torch.Tensor  # (B, L)
    bow_logits: Optional[torch.Tensor] = None  # (B, V) when the model has a bag-of-words head
    position_logits: Optional[torch.Tensor] = None  # (B, T, V) when the model has a positional head
    # A label-conditional model (model.conditional 'label'; Kingma et al. 2014, M2) decodes E >= B
    # rows: each labelled sentence once with its label, each unlabelled one once per label. logits,
    # mu, logvar, z, bow_logits and position_logits then have E rows; row r is sentence rows[r]
    # under label row_labels[r].
    class_logits: Optional[torch.Tensor] = None  # (B, K) the classifier q(y|x)
    adversary_logits: Optional[torch.Tensor] = None  # (E, K) the label read back from mu, through gradient reversal
    rows: Optional[torch.Tensor] = None  # (E,) the sentence of each decoded row
    row_labels: Optional[torch.Tensor] = None  # (E,) the label each row is decoded with


# One layer's cache: keys and values (B, H, P, Dh), P = memory slot + tokens seen so far.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------- the parts' interface


class TokenEmbedding(nn.Embedding):
    """The shared token embedding: the rows that the from-scratch parts read as input, and their
    tied output layer (logits = h E^T). With ``model.embed_dim`` E < d_model D the table is factorised
    (Lan et al. 2020, ALBERT): V x E rows and one E x D projection P, so the embedding in use is the
    rank-E table E P, both ways: input rows x P, logits (h P^T) E^T. The output layer, the largest
    matrix product of a small model on a CPU, then costs E/D of the full table's (plus P's)."""

    def __init__(self, vocab_size: int, d_model: int, embed_dim: int = 0):
        factorised = 0 < embed_dim < d_model
        super().__init__(vocab_size, embed_dim if factorised else d_model)
        self.proj = nn.Parameter(torch.empty(embed_dim, d_model)) if factorised else None

    def reset_projection(self) -> None:
        """P ~ N(0, 1/E): the rows of E P start with the spread of E's own rows (std 0.02)."""
        if self.proj is not None:
            nn.init.normal_(self.proj, mean=0.0, std=self.embedding_dim ** -0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> embeddings (..., D)."""
        x = super().forward(ids)
        return x if self.proj is None else x @ self.proj

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., D) -> logits (..., V) under the tied output layer."""
        if self.proj is not None:
            h = h @ self.proj.T  # (..., E)
        return F.linear(h, self.weight)


class Part(nn.Module):
    """What encoders and decoders share: how SentenceVAE builds and initialises them."""

    # True: the part reads the model's shared token embedding (SentenceVAE.tok_emb), which the
    # model then builds before the parts and passes to ``build``.
    uses_token_embedding = False

    @classmethod
    def build(cls, cfg: ModelConfig, tok_emb: Optional[TokenEmbedding], saved: Optional[dict]) -> "Part":
        """The part for ``cfg``. ``saved``: the ``transformers`` configs a checkpoint stores for its
        pretrained parts ({'encoder': {...}, 'decoder': {...}}), None when training starts."""
        raise NotImplementedError

    def embeddings(self) -> list[nn.Module]:
        """The part's own embedding tables: SentenceVAE initialises them right after the token
        embedding, before any other layer (see SentenceVAE._init_parameters)."""
        return []

    def finish_init(self) -> None:
        """Called once SentenceVAE has initialised every layer (and after ``reset_decoder``): a part
        may set some of its weights to values of its own here."""

    def pretrained_module(self) -> Optional[nn.Module]:
        """The ``transformers`` module whose weights come loaded (not initialised by textvae, given its
        own learning rate, its config saved in checkpoints); None for a part made from scratch."""
        return None

    def _hold_token_embedding(self, tok_emb: TokenEmbedding) -> None:
        # The shared token embedding belongs to SentenceVAE, which registers it as tok_emb; a part
        # only keeps a reference, stored unregistered. Registered here too, it would be reached
        # twice by ``apply`` (initialised twice, which changes every later random draw) and listed
        # twice by ``named_modules``.
        object.__setattr__(self, "_tok_emb", tok_emb)


class Encoder(Part):
    """Reads a sentence: ``forward(enc_ids, enc_mask (B, S)) -> states (B, S, out_dim)``.
    Pooling and the posterior head stay in SentenceVAE."""

    @property
    def out_dim(self) -> int:
        raise NotImplementedError


class Decoder(Part):
    """Predicts the sentence from z, one chunk of positions at a time, with a cache:

        init_cache(z (B, L)) -> cache, the state before the first token (L may be 0: a language model)
        forward(dec_in (B, T), z, cache, start, last_only) -> logits (B, T or 1, V), the extended cache
        reorder_cache(cache, rows) -> the cache of rows ``rows`` (beam search)
    """

    def init_cache(self, z: torch.Tensor) -> Any:
        raise NotImplementedError

    def z_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """The affine maps that read the code: (weight (out, in), bias (out,), first column of the
        code among the weight's inputs). Every place the decoder reads z is one of them (the
        latent space can then be re-expressed exactly: :meth:`SentenceVAE.standardize_latents`)."""
        raise NotImplementedError

    def reorder_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        raise NotImplementedError


def _injections(cfg: ModelConfig) -> tuple[bool, bool]:
    """Whether z enters the decoder as a memory slot, and whether it is added to its input embeddings."""
    has_z = cfg.latent_dim > 0
    return has_z and cfg.z_injection in ("memory", "both"), has_z and cfg.z_injection in ("embedding", "both")


# ---------------------------------------------------------------------------- transformer blocks


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


# ---------------------------------------------------------------------------- encoders


class TransformerEncoder(Encoder):
    """From scratch: the shared token embedding plus learned positions -> pre-LN blocks
    (bidirectional, padding keys ignored) -> LayerNorm. States (B, S, D)."""

    uses_token_embedding = True

    def __init__(self, cfg: ModelConfig, tok_emb: TokenEmbedding):
        super().__init__()
        self._hold_token_embedding(tok_emb)
        self.max_len = cfg.max_len
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.enc_layers))
        self.ln = nn.LayerNorm(cfg.d_model)

    @classmethod
    def build(cls, cfg, tok_emb, saved):
        if cfg.encoder.dropout is not None:  # the encoder's own dropout (model.encoder.dropout)
            cfg = replace(cfg, dropout=cfg.encoder.dropout)
        return cls(cfg, tok_emb)

    @property
    def out_dim(self) -> int:
        return self.pos.embedding_dim

    def embeddings(self) -> list[nn.Module]:
        return [self.pos]

    def forward(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """enc_ids, enc_mask (B, S) -> states (B, S, D)."""
        S = enc_ids.shape[1]
        if S > self.max_len:
            raise ValueError(f"sequence of {S} tokens is longer than model.max_len={self.max_len}")
        pos = torch.arange(S, device=enc_ids.device)
        x = self.drop(self._tok_emb(enc_ids) + self.pos(pos))  # (B, S, D)
        attn_mask = enc_mask[:, None, None, :]  # (B, 1, 1, S): ignore padding keys
        for block in self.blocks:
            x, _ = block(x, mask=attn_mask)
        return self.ln(x)


class PretrainedEncoder(Encoder):
    """A pretrained ``transformers`` encoder (e.g. a BERT-family model) whose token states feed the
    posterior head. It reads ids from its own tokenizer. Frozen: no gradients and no dropout."""

    def __init__(self, hf: nn.Module, freeze: bool):
        super().__init__()
        self.hf = hf
        self.freeze = freeze
        if freeze:
            hf.requires_grad_(False)
            hf.eval()

    @classmethod
    def build(cls, cfg, tok_emb, saved):
        return cls(_pretrained_part("encoder", cfg.encoder.name_or_path, saved), cfg.encoder.freeze)

    @property
    def out_dim(self) -> int:
        return int(self.hf.config.hidden_size)

    def pretrained_module(self) -> nn.Module:
        return self.hf

    def train(self, mode: bool = True) -> "PretrainedEncoder":
        super().train(mode)
        if self.freeze:
            self.hf.eval()  # a frozen encoder always gives the same states for a sentence
        return self

    def forward(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """enc_ids, enc_mask (B, S), from the encoder's own tokenizer (textvae/data.py: collate)
        -> last hidden states (B, S, H)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.hf(input_ids=enc_ids, attention_mask=enc_mask.long()).last_hidden_state


class AttentionPool(nn.Module):
    """Sentence summary by P learned queries over the encoder's states (model.pooling 'attention'):
    each query scores the positions (x . q / sqrt(D), padding excluded), and its summary is the
    softmax-weighted mean of the states. The queries start at zero, so every summary starts as the
    masked mean; they can learn to weight positions and words differently. (B, S, D) -> (B, P * D)."""

    def __init__(self, d_model: int, queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(queries, d_model))  # (P, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bsd,pd->bps", x, self.queries.to(x.dtype)) / math.sqrt(x.shape[-1])
        scores = scores.masked_fill(~mask.bool().unsqueeze(1), float("-inf"))  # (B, P, S)
        pooled = torch.einsum("bps,bsd->bpd", scores.softmax(-1), x)  # (B, P, D)
        return pooled.flatten(1)



# ---------------------------------------------------------------------------- decoders


class TransformerDecoder(Decoder):
    """From scratch: the shared token embedding plus learned positions (+ W_e z) -> pre-LN causal
    blocks, each attending to key/value slots made from z -> LayerNorm -> the token embedding
    again as the output layer (tied weights). The cache is a :data:`KVCache`."""

    uses_token_embedding = True

    def __init__(self, cfg: ModelConfig, tok_emb: TokenEmbedding):
        super().__init__()
        self._hold_token_embedding(tok_emb)
        D, L = cfg.d_model, cfg.latent_dim
        self.d_model, self.n_heads, self.z_slots = D, cfg.n_heads, cfg.z_slots
        self.use_memory, self.use_embedding = _injections(cfg)
        self.pos = nn.Embedding(cfg.max_len, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.dec_layers))
        self.ln = nn.LayerNorm(D)
        if self.use_memory:
            # Optimus' "memory" scheme: z becomes extra keys and values at every layer, one
            # slot in Optimus; with model.z_slots > 1 each position can attend to a different
            # slot, so the decoder can read different parts of z at different positions.
            self.z_to_memory = nn.Linear(L, 2 * D * cfg.dec_layers * cfg.z_slots)
        if self.use_embedding:
            # Optimus' "embedding" scheme: z is added to every decoder input embedding.
            self.z_to_embedding = nn.Linear(L, D)

    @classmethod
    def build(cls, cfg, tok_emb, saved):
        return cls(cfg, tok_emb)

    def embeddings(self) -> list[nn.Module]:
        return [self.pos]

    def init_cache(self, z: torch.Tensor) -> KVCache:
        """z (B, L) -> the z memory slots of every layer as the start of a key/value cache,
        (B, H, M, Dh) per layer, M = model.z_slots (0 without the memory injection)."""
        B, n = z.shape[0], len(self.blocks)
        D, H = self.d_model, self.n_heads
        if not self.use_memory:
            empty = z.new_zeros(B, H, 0, D // H)
            return [(empty, empty) for _ in range(n)]
        M = self.z_slots
        mem = self.z_to_memory(z).view(B, n, 2, M, H, D // H).transpose(3, 4)  # (B, layers, 2, H, M, Dh)
        return [(mem[:, i, 0], mem[:, i, 1]) for i in range(n)]

    def forward(self, dec_in: torch.Tensor, z: torch.Tensor, cache: KVCache, start: int = 0,
                last_only: bool = False) -> tuple[torch.Tensor, KVCache]:
        """dec_in (B, T) at positions start..start+T-1 -> logits (B, T or 1, V) and the extended cache."""
        T = dec_in.shape[1]
        pos = torch.arange(start, start + T, device=dec_in.device)
        x = self._tok_emb(dec_in) + self.pos(pos)  # (B, T, D)
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
        for block, layer_cache in zip(self.blocks, cache):
            prefix = layer_cache if P > 0 else None
            x, kv = block(x, mask=mask, causal=mask is None and T > 1, prefix=prefix)
            new_cache.append(kv)
        x = self.ln(x[:, -1:] if last_only else x)
        return self._tok_emb.logits(x), new_cache  # tied output embedding

    def reorder_cache(self, cache: KVCache, rows: torch.Tensor) -> KVCache:
        return [(k[rows], v[rows]) for k, v in cache]

    def z_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        return _linear_z_inputs(self)


class GRUDecoder(Decoder):
    """The recurrent decoder of the classic sentence VAE (Bowman et al. 2016).

    z sets the initial hidden state of every layer (Bowman et al. 2016) and is also concatenated
    to every input embedding, so that it cannot fade over a long sentence (as in Yang et al. 2017
    and He et al. 2019). Input and output use the shared token embedding (tied weights). The
    hidden state is the decoding cache: (layers, B, D).
    """

    uses_token_embedding = True

    def __init__(self, cfg: ModelConfig, tok_emb: TokenEmbedding):
        super().__init__()
        self._hold_token_embedding(tok_emb)
        D, L, layers = cfg.d_model, cfg.latent_dim, cfg.dec_layers
        self.latent_dim, self.layers, self.d_model = L, layers, D
        self.drop = nn.Dropout(cfg.dropout)
        # model.decoder.positions 'input': a GRU can count only what it learns to count; a position
        # embedding tells it where it is, e.g. that every training sentence ends by max_len.
        # 'end': only the last END_POSITIONS positions have a row (row 0, fixed at zero, is every earlier one).
        # Position t reads row max(t - pos_offset, 0).
        self.pos, self.pos_offset = None, 0
        if cfg.decoder.positions == "input":
            self.pos = nn.Embedding(cfg.max_len, D)
        elif cfg.decoder.positions == "end":
            self.pos = nn.Embedding(min(END_POSITIONS, cfg.max_len) + 1, D, padding_idx=0)
            self.pos_offset = cfg.max_len - self.pos.num_embeddings
        if L > 0:
            self.z_to_hidden = nn.Linear(L, layers * D)
        self.rnn = nn.GRU(D + L, D, num_layers=layers, batch_first=True, dropout=cfg.dropout if layers > 1 else 0.0)
        self.ln = nn.LayerNorm(D)

    @classmethod
    def build(cls, cfg, tok_emb, saved):
        return cls(cfg, tok_emb)

    def finish_init(self) -> None:
        if self.pos is not None:
            # zero at first: the decoder starts as the plain GRU and learns only the positions
            # that help (a random table, as large as the token embeddings, blurred the tokens
            # early on and cost 3 nats of reconstruction at the default's budget)
            nn.init.zeros_(self.pos.weight)

    def init_cache(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> initial hidden state (layers, B, D); zeros for a language model (L = 0)."""
        B = z.shape[0]
        if self.latent_dim == 0:
            return z.new_zeros(self.layers, B, self.d_model)
        h = torch.tanh(self.z_to_hidden(z))  # (B, layers * D), in the GRU's (-1, 1) range
        return h.view(B, self.layers, self.d_model).transpose(0, 1).contiguous()

    def forward(self, dec_in: torch.Tensor, z: torch.Tensor, cache: torch.Tensor, start: int = 0,
                last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """dec_in (B, T), z (B, L), cache (layers, B, D) -> logits (B, T or 1, V), new hidden state.
        ``start`` is the position of dec_in[:, 0]; only model.decoder.positions reads it."""
        x = self._tok_emb(dec_in)  # (B, T, D)
        if self.pos is not None:
            where = torch.arange(start - self.pos_offset, start - self.pos_offset + dec_in.shape[1], device=dec_in.device)
            x = x + self.pos(where.clamp_min(0))
        x = self.drop(x)
        if self.latent_dim > 0:
            x = torch.cat([x, z.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)  # (B, T, D + L)
        out, state = self.rnn(x, cache.to(x.dtype))
        h = self.ln(out)  # (B, T, D)
        return self._tok_emb.logits(h[:, -1:] if last_only else h), state  # tied output embedding

    def reorder_cache(self, cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return cache[:, rows]  # (layers, B, D)

    def z_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        if self.latent_dim == 0:
            return []
        # z sets the initial state and is the last L columns of the first layer's input
        return [(self.z_to_hidden.weight, self.z_to_hidden.bias, 0),
                (self.rnn.weight_ih_l0, self.rnn.bias_ih_l0, self.d_model)]


class PretrainedDecoder(Decoder):
    """A pretrained causal LM (``transformers.AutoModelForCausalLM``) conditioned on z as in
    Optimus (Li et al. 2020): z becomes one extra key/value slot at every layer ("memory"),
    passed to the model as a past key/value cache that every token attends to, and/or is added
    to every input embedding ("embedding"). Positions count tokens only, not the memory slot.
    It brings its own token embeddings and output layer.
    """

    def __init__(self, hf: nn.Module, cfg: ModelConfig):
        super().__init__()
        from textvae.errors import ConfigError
        from textvae.pretrained import cache_argument

        rows = hf.get_input_embeddings().weight.shape[0]
        # The tokenizer may add up to four special tokens (pad, bos, eos, unk) that the model lacks;
        # a model may also pad its embedding table (to a multiple of 64 or 128). Anything else
        # means the tokenizer belongs to another model.
        if not rows - 128 < cfg.vocab_size <= rows + 4:
            raise ConfigError(f"the tokenizer has {cfg.vocab_size} tokens but the pretrained decoder's embedding has {rows} "
                              f"rows; use the decoder's own tokenizer (tokenizer.path = the decoder's folder)")
        if cfg.vocab_size != rows:
            hf.resize_token_embeddings(cfg.vocab_size)
        self.hf = hf
        c = hf.config
        self.n_layers = int(c.num_hidden_layers)
        n_heads = int(c.num_attention_heads)
        self.kv_heads = int(getattr(c, "num_key_value_heads", None) or n_heads)
        self.head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
        self.use_memory, self.use_embedding = _injections(cfg)
        if self.use_memory:
            # Optimus' "memory" scheme: z -> one key and one value per layer (and key/value head)
            self.z_to_memory = nn.Linear(cfg.latent_dim, 2 * self.n_layers * self.kv_heads * self.head_dim)
        if self.use_embedding:
            # Optimus' "embedding" scheme: z -> a vector added to every input embedding
            self.z_to_embedding = nn.Linear(cfg.latent_dim, int(c.hidden_size))
        limit = self.max_positions = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
        if limit and cfg.max_len > limit:
            raise ConfigError(f"model.max_len={cfg.max_len} is longer than the pretrained decoder's {limit} positions")
        self._cache_arg = cache_argument(hf)

    @classmethod
    def build(cls, cfg, tok_emb, saved):
        return cls(_pretrained_part("decoder", cfg.decoder.name_or_path, saved), cfg)

    def pretrained_module(self) -> nn.Module:
        return self.hf

    def init_cache(self, z: torch.Tensor):
        """z (B, L) -> a ``transformers`` cache holding the z memory slot of every layer (empty without it)."""
        from textvae.pretrained import new_cache

        cache = new_cache(self.hf.config)
        if self.use_memory:
            B = z.shape[0]
            mem = self.z_to_memory(z).view(B, self.n_layers, 2, self.kv_heads, 1, self.head_dim)
            for i in range(self.n_layers):
                cache.update(mem[:, i, 0], mem[:, i, 1], i)
        return cache

    def forward(self, dec_in: torch.Tensor, z: torch.Tensor, cache, start: int = 0, last_only: bool = False):
        """dec_in (B, T) at positions start..start+T-1 -> logits (B, T or 1, V) and the extended cache."""
        B, T = dec_in.shape
        from textvae.pretrained import returned_cache

        x = self.hf.get_input_embeddings()(dec_in)  # (B, T, H)
        if self.use_embedding:
            x = x + self.z_to_embedding(z).to(x.dtype).unsqueeze(1)
        memory = 1 if self.use_memory else 0
        attention = torch.ones(B, memory + start + T, dtype=torch.long, device=dec_in.device)
        positions = torch.arange(start, start + T, device=dec_in.device).expand(B, T)
        out = self.hf(inputs_embeds=x, attention_mask=attention, position_ids=positions, use_cache=True,
                      **{self._cache_arg: cache})
        logits = out.logits[:, -1:] if last_only else out.logits
        return logits, returned_cache(out)

    def reorder_cache(self, cache, rows: torch.Tensor):
        cache.reorder_cache(rows)
        return cache

    def z_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        return _linear_z_inputs(self)


def _linear_z_inputs(decoder: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """The Optimus injections' z projections (memory, embedding) of a transformer decoder."""
    return [(m.weight, m.bias, 0) for m in (getattr(decoder, "z_to_memory", None), getattr(decoder, "z_to_embedding", None))
            if m is not None]


def _pretrained_part(kind: str, name_or_path: Optional[str], saved: Optional[dict]) -> nn.Module:
    """The ``transformers`` module of a pretrained encoder or decoder: rebuilt from a checkpoint's
    saved config when there is one, else loaded with its weights from ``name_or_path``."""
    from textvae import pretrained

    if saved is not None:
        if kind not in saved:
            raise ValueError(f"the checkpoint has no saved config for its pretrained {kind}")
        return pretrained.from_config(kind, saved[kind])
    if kind == "encoder":
        return pretrained.load_encoder(str(name_or_path))
    return pretrained.load_causal_lm(str(name_or_path))


# ---------------------------------------------------------------------------- builders
# model.encoder.type / model.decoder.type -> the part's class (its ``build`` makes it from the config).

ENCODERS: dict[str, type[Encoder]] = {
    "transformer": TransformerEncoder,
    "pretrained": PretrainedEncoder,
}
DECODERS: dict[str, type[Decoder]] = {
    "transformer": TransformerDecoder,
    "gru": GRUDecoder,
    "pretrained": PretrainedDecoder,
}


# ---------------------------------------------------------------------------- the model


class _GradReverse(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015): what minimises the
    adversary's loss behind it maximises that loss for the layers in front."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class PositionalHead(nn.Module):
    """A non-autoregressive reading of z: the logits of the token at each position t from z and
    t's embedding alone, h_t = LN(W2 GELU(W1 z + P_t)), logits_t = h_t E^T (E the tied token
    embedding when there is one, else an own output layer). No previous token is seen, so the
    only way to predict the sentence is to have it in z: the gradient reaches the encoder
    directly instead of through an autoregressive decoder that can guess most tokens from the
    prefix (an auxiliary target in the spirit of Zhao et al. 2017's bag of words, with order)."""

    def __init__(self, cfg: ModelConfig, tok_emb: Optional[TokenEmbedding]):
        super().__init__()
        D = cfg.d_model
        self.pos = nn.Embedding(cfg.max_len, D)
        self.z_in = nn.Linear(cfg.latent_dim, D)
        self.mix = nn.Linear(D, D)
        self.ln = nn.LayerNorm(D)
        object.__setattr__(self, "_tok_emb", tok_emb)  # unregistered, as in Part._hold_token_embedding
        if tok_emb is None:
            self.out = nn.Linear(D, cfg.vocab_size)

    def forward(self, z: torch.Tensor, T: int) -> torch.Tensor:
        """z (B, L) -> logits (B, T, V) for positions 0..T-1."""
        pos = self.pos(torch.arange(T, device=z.device))  # (T, D)
        h = self.ln(self.mix(F.gelu(self.z_in(z).unsqueeze(1) + pos)))  # (B, T, D)
        if self._tok_emb is None:
            return self.out(h)
        return self._tok_emb.logits(h)


class SentenceVAE(nn.Module):
    """Sentence VAE. ``forward`` runs encoder and decoder; ``encode``/``decode`` serve generation.

    Parameter names: ``tok_emb`` (the shared token embedding, when a part made from scratch uses it;
    ``tok_emb.proj`` when model.embed_dim factorises it), ``encoder.*`` (``pos``, ``blocks.N``,
    ``ln``, or ``hf`` for a pretrained encoder), ``to_posterior``, ``decoder.*`` (``pos``,
    ``blocks.N``, ``ln``, ``z_to_memory``, ``z_to_embedding``; ``z_to_hidden``, ``rnn``, ``ln`` for
    the GRU; ``hf`` and the z projections for a pretrained decoder), ``pool`` (attention pooling),
    ``z_to_bow``; a conditional
    model adds ``label_emb``, ``label_to_posterior`` and ``classifier``.
    """

    def __init__(self, cfg: ModelConfig, pad_id: int = 0, pretrained_configs: Optional[dict] = None):
        """Args:
            cfg: the architecture; ``cfg.encoder.type`` / ``cfg.decoder.type`` pick the parts.
            pad_id: the decoder tokenizer's pad id.
            pretrained_configs: the ``transformers`` configs of pretrained parts, as a checkpoint
                stores them ({'encoder': {...}, 'decoder': {...}}): the parts are rebuilt from them
                (weights to be loaded afterwards) instead of being loaded from ``name_or_path``.
        """
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set (take it from the tokenizer)")
        self.cfg = cfg
        self.pad_id = pad_id
        L = cfg.latent_dim
        self.is_lm = L == 0  # latent_dim 0: a plain language model, the baseline; it has no encoder
        encoder_cls = None if self.is_lm else ENCODERS[cfg.encoder.type]
        decoder_cls = DECODERS[cfg.decoder.type]
        # One token embedding serves the encoder input, the decoder input and the output layer
        # (tied weights) of the parts made from scratch; positions are learned, separately for
        # encoder and decoder. A pretrained part brings its own embeddings; with a pretrained
        # decoder, a from-scratch encoder still reads the decoder's token ids through tok_emb.
        tok_emb = None
        if any(c is not None and c.uses_token_embedding for c in (encoder_cls, decoder_cls)):
            self.tok_emb = tok_emb = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.embed_dim)
        self.encoder: Optional[Encoder] = None
        if encoder_cls is not None:
            self.encoder = encoder_cls.build(cfg, tok_emb, pretrained_configs)  # -> states (B, S, H)
            summary_dim = self.encoder.out_dim
            if cfg.pooling == "attention":
                self.pool = AttentionPool(summary_dim, cfg.pool_queries)
                summary_dim *= cfg.pool_queries
            self.to_posterior = nn.Linear(summary_dim, 2 * L)  # -> (mu, logvar)
        self.conditional = cfg.conditional == "label"
        if self.conditional and cfg.num_labels < 2:
            raise ValueError("ModelConfig.num_labels must be set for a conditional model (take it from the data)")
        # A conditional decoder reads the code [z; e_y] (z and the label's embedding) wherever an
        # unconditional one reads z: the same injection points, L + label_dim wide.
        dec_cfg = replace(cfg, latent_dim=L + cfg.label_dim) if self.conditional else cfg
        self.decoder: Decoder = decoder_cls.build(dec_cfg, tok_emb, pretrained_configs)
        if self.conditional:
            # Kingma et al. 2014 (M2): the label embedding, read by the posterior q(z|x, y) (a
            # label-dependent shift of its mean and log-variance) and by the decoder p(x|z, y),
            # and the classifier q(y|x) on the encoder's summary.
            K, E = cfg.num_labels, cfg.label_dim
            self.label_emb = nn.Embedding(K, E)
            self.label_to_posterior = nn.Linear(E, 2 * L, bias=False)
            self.classifier = nn.Sequential(nn.Linear(summary_dim, cfg.d_model), nn.GELU(),
                                            nn.Linear(cfg.d_model, K))
            if cfg.adversary_weight > 0:
                # John et al. 2019: an adversary reads the label from z through a gradient-reversal
                # layer (Ganin & Lempitsky 2015), so the encoder learns to leave the label to y.
                self.adversary = nn.Sequential(nn.Linear(L, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, K))
        if not self.is_lm and cfg.bow_weight > 0:
            # Bag-of-words head (Zhao et al. 2017): z -> one distribution over the vocabulary
            # that every token of the sentence is scored under, whatever its position.
            self.z_to_bow = nn.Linear(L, cfg.vocab_size)
        if not self.is_lm and cfg.position_weight > 0:
            # Built without drawing from the global generator (its layers are initialised below,
            # after all others), so a model with the head starts from the same weights as without.
            rng = torch.random.get_rng_state()
            self.positional_head = PositionalHead(cfg, tok_emb)
            torch.random.set_rng_state(rng)
        self._init_parameters()

    def _parts(self) -> list[tuple[str, Part]]:
        """('encoder', the encoder) (absent for a language model) and ('decoder', the decoder)."""
        parts = [("encoder", self.encoder), ("decoder", self.decoder)]
        return [(name, part) for name, part in parts if part is not None]

    def _init_parameters(self) -> None:
        """Initialise textvae's own layers; pretrained weights stay as loaded.

        The order decides which random numbers each layer draws, so it is fixed: first the token
        embedding, then the parts' own embedding tables (``Part.embeddings``: the encoder's, then
        the decoder's position embedding), then every other Linear and Embedding in registration
        order (encoder, to_posterior, decoder, z_to_bow), the positional head last. It is the
        order of the model before its parts were classes (tok_emb, enc_pos, dec_pos, encoder
        blocks, ...), so a seed gives the same weights as it did then (the GRU keeps its own
        init, drawn when it is built).
        """
        cfg, L = self.cfg, self.cfg.latent_dim
        loaded = [p.pretrained_module() for _, p in self._parts() if p.pretrained_module() is not None]
        done = {id(m) for hf in loaded for m in hf.modules()}
        first = [self.tok_emb] if hasattr(self, "tok_emb") else []
        first += [m for _, part in self._parts() for m in part.embeddings()]
        for m in first:
            self._init_weights(m)
            if isinstance(m, TokenEmbedding):
                m.reset_projection()  # right after its table (draws nothing when not factorised)
            done.add(id(m))
        last = list(self.positional_head.modules()) if hasattr(self, "positional_head") else []
        done |= {id(m) for m in last}  # an optional head draws after everything else
        self.apply(lambda m: None if id(m) in done else self._init_weights(m))
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") and ".hf." not in name:  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(cfg.enc_layers, cfg.dec_layers)))
        if not self.is_lm:
            # A narrow initial posterior: with sigma = 1 the first z are noise next to mu (~0.1), the
            # decoder learns to ignore z within a few hundred steps and never recovers (posterior
            # collapse by initialisation); with sigma ~ 0.05 z follows mu and the decoder reads it.
            with torch.no_grad():
                self.to_posterior.bias[L:].fill_(cfg.init_logvar)
        for m in last:
            self._init_weights(m)
        for _, part in self._parts():
            part.finish_init()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Eval mode and no gradient for any weight, both restored afterwards: for optimising
        something fed to the model (a refined posterior mean, a log-variance offset) against
        weights that stay as they are."""
        was_training, flags = self.training, [(p, p.requires_grad) for p in self.parameters()]
        self.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            self.train(was_training)

    def posterior_parameters(self) -> list[nn.Parameter]:
        """The weights that shape q(z|x): the encoder, its pooling, the posterior head and the
        token embedding the encoder reads (shared with the decoder), and a conditional model's
        label embedding, label-to-posterior layer and classifier q(y|x). The decoder-only steps
        at the end of training (train.decoder_only_steps) hold them still."""
        if self.is_lm:
            return []
        parts = [self.encoder, getattr(self, "pool", None), self.to_posterior, getattr(self, "tok_emb", None),
                 getattr(self, "label_emb", None), getattr(self, "label_to_posterior", None),
                 getattr(self, "classifier", None)]
        seen: dict[int, nn.Parameter] = {}
        for part in parts:
            if part is not None:
                seen.update((id(p), p) for p in part.parameters())
        return list(seen.values())

    def reset_decoder(self) -> list[nn.Parameter]:
        """Re-initialise the decoder's own layers and the z-to-decoder projections as at build
        time (the shared token embedding and the encoder stay): the decoder of autoencoder
        pre-training (Li et al. 2019) is thrown away, the encoder it taught is kept. Pretrained
        decoder weights are not reset. Returns the parameters reset (their optimiser state is stale)."""
        if self.decoder.pretrained_module() is not None:
            return []
        shared = {id(self.tok_emb)} if hasattr(self, "tok_emb") else set()
        reset: list[nn.Parameter] = []
        for m in self.decoder.modules():
            if id(m) in shared:
                continue
            if isinstance(m, (nn.Linear, nn.Embedding)):
                self._init_weights(m)
            elif isinstance(m, (nn.GRU, nn.LayerNorm)):
                m.reset_parameters()
            else:
                continue
            reset += list(m.parameters(recurse=False))
        depth = max(self.cfg.enc_layers, self.cfg.dec_layers)
        for name, prm in self.decoder.named_parameters():
            if name.endswith("proj.weight"):  # the depth-scaled residual projections, as in _init_parameters
                nn.init.normal_(prm, mean=0.0, std=0.02 / math.sqrt(2 * depth))
        self.decoder.finish_init()
        return reset

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def pretrained_configs(self) -> dict:
        """The ``transformers`` configs of the pretrained parts (what a checkpoint stores to rebuild them)."""
        from textvae.pretrained import config_dict

        return {name: config_dict(part.pretrained_module()) for name, part in self._parts()
                if part.pretrained_module() is not None}

    def pretrained_prefixes(self) -> dict[str, str]:
        """Parameter-name prefix of each pretrained part's ``transformers`` weights, e.g.
        {'encoder': 'encoder.hf.'} (the training loop gives them model.encoder.lr / model.decoder.lr)."""
        names = {id(m): name for name, m in self.named_modules()}
        return {kind: names[id(part.pretrained_module())] + "." for kind, part in self._parts()
                if part.pretrained_module() is not None}

    # ------------------------------------------------------------------ encoder

    def encode(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor,
               labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """enc_ids, enc_mask (B, S) -> mu, logvar (B, L).

        A conditional model gives q(z|x, y) for ``labels`` (B,) label indices; without them, for
        the label its classifier finds most likely."""
        if self.is_lm:
            empty = torch.zeros(enc_ids.shape[0], 0, device=enc_ids.device)
            return empty, empty
        h = self.summary(enc_ids, enc_mask)
        if self.conditional and labels is None:
            labels = self.classifier(h).argmax(-1)
        return self.posterior(h, labels)

    def summary(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's sentence summary (B, H) that the posterior and the classifier read."""
        x = self.encoder(enc_ids, enc_mask)  # (B, S, H)
        if self.cfg.pooling == "cls":
            return x[:, 0]  # the bos position (or a pretrained encoder's [CLS]) acts as CLS
        if self.cfg.pooling == "attention":
            return self.pool(x, enc_mask)  # (B, P * H)
        m = enc_mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # masked mean (B, H)

    def posterior(self, h: torch.Tensor, labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (B, L) of q(z|x) (q(z|x, y) for a conditional model) from summaries h (B, H)."""
        out = self.to_posterior(h)
        if self.conditional:
            if labels is None:
                raise ValueError("a conditional model's posterior needs the labels")
            out = out + self.label_to_posterior(self.label_emb(labels))
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar

    def classify(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of the classifier q(y|x) of a conditional model."""
        if not self.conditional:
            raise ValueError("only a conditional model (model.conditional 'label') has a classifier")
        return self.classifier(self.summary(enc_ids, enc_mask))

    def code(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What the decoder reads: z itself, or for a conditional model [z; e_y] (B, L + label_dim)
        with ``labels`` (B,) label indices."""
        if not self.conditional:
            return z
        if labels is None:
            raise ValueError("a conditional model decodes z with a label")
        return torch.cat([z, self.label_emb(labels).to(z.dtype)], dim=-1)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: Optional[torch.Generator] = None,
                       eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z = mu + sigma * eps (Kingma & Welling 2014), eps ~ N(0, I) (drawn here unless given, (B, L))."""
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    @torch.no_grad()
    def standardize_latents(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Re-express the latent space as z' = (z - shift) / scale, per dimension, exactly: the
        posterior head then gives mu' = (mu - shift) / scale and log-variance logvar - 2 log scale,
        and every layer that reads z reads shift + scale * z' instead (its weights' z columns
        times scale, its bias plus those columns times shift). The decoder's distribution over
        sentences for a sentence's code, and the reconstruction, stay as they were; what changes is
        where the codes lie relative to the prior N(0, I): with ``shift``, ``scale`` the mean and
        the standard deviation of the aggregate posterior (the training codes), the codes fill
        N(0, I) as well as a diagonal Gaussian can, and the KL to it pays for information, not for
        a mismatch of scale (the prior is then, in the old coordinates, that diagonal Gaussian).
        shift, scale: (L,), scale > 0."""
        if self.is_lm:
            raise ValueError("a language model has no latent space")
        L = self.cfg.latent_dim
        shift = shift.detach().float().to(self.to_posterior.weight.device)
        scale = scale.detach().float().to(self.to_posterior.weight.device)
        if shift.shape != (L,) or scale.shape != (L,) or not bool((scale > 0).all()) or not bool(
                torch.isfinite(shift).all() and torch.isfinite(scale).all()):
            raise ValueError(f"standardize_latents needs a finite shift and a positive scale of {L} values")
        w, b = self.to_posterior.weight, self.to_posterior.bias  # rows: mu (L), then logvar (L)
        w[:L] /= scale[:, None].to(w.dtype)
        b[:L] = ((b[:L].float() - shift) / scale).to(b.dtype)
        b[L:] -= (2 * scale.log()).to(b.dtype)
        if self.conditional:
            self.label_to_posterior.weight[:L] /= scale[:, None].to(self.label_to_posterior.weight.dtype)
        readers = list(self.decoder.z_inputs())
        heads = [getattr(self, "z_to_bow", None), getattr(getattr(self, "positional_head", None), "z_in", None),
                 self.adversary[0] if hasattr(self, "adversary") else None]  # the layers of the heads that read z
        readers += [(m.weight, m.bias, 0) for m in heads if m is not None]
        for weight, bias, col in readers:
            cols = weight[:, col:col + L]
            bias += (cols.float() @ shift).to(bias.dtype)  # with the old columns
            cols *= scale[None, :].to(cols.dtype)

    # ------------------------------------------------------------------ decoder

    def init_cache(self, z: torch.Tensor) -> Any:
        """The decoder's state before the first token, from z (B, L). Transformer: the z memory slots
        of every layer as the start of a key/value cache, (B, H, M, Dh), M = 0 or model.z_slots; GRU:
        the initial hidden state; pretrained: a ``transformers`` cache holding the z memory."""
        return self.decoder.init_cache(z)

    def decode(self, dec_in: torch.Tensor, z: torch.Tensor, cache: Any = None,
               start: int = 0, last_only: bool = False) -> tuple[torch.Tensor, Any]:
        """Decoder logits for tokens at positions start..start+T-1.

        Args:
            dec_in: (B, T) token ids.
            z: (B, L) latent codes (a conditional model's: (B, L + label_dim), from :meth:`code`).
            cache: the decoder's state after the z memory and earlier tokens (from :meth:`init_cache`
                or an earlier call); None starts afresh.
            start: position of dec_in[:, 0] (the number of tokens already in the cache).
            last_only: project only the last position to the vocabulary (logits (B, 1, V)).
        Returns:
            logits (B, T, V) and the extended cache.
        """
        T = dec_in.shape[1]
        if self.conditional and z.shape[-1] != self.cfg.latent_dim + self.cfg.label_dim:
            raise ValueError("a conditional model decodes codes [z; e_y] from model.code(z, labels)")
        if start + T > self.cfg.max_len:
            raise ValueError(f"decoding past model.max_len={self.cfg.max_len}")
        if cache is None:
            cache = self.init_cache(z)
        return self.decoder(dec_in, z, cache, start, last_only)

    def reorder_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        """The decoder state of rows ``rows`` (beam search keeps the surviving hypotheses)."""
        return self.decoder.reorder_cache(cache, rows)

    # ------------------------------------------------------------------ training

    def forward(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_in: torch.Tensor,
                generator: Optional[torch.Generator] = None, sample: bool = True,
                eps: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None) -> VAEOutput:
        """enc_ids, enc_mask (B, S); dec_in (B, T) -> logits (B, T, V) with mu, logvar, z (B, L).

        ``sample=False`` decodes from the posterior mean instead of a sample; ``eps`` (B, L)
        gives the reparameterisation noise (the training loop draws it for the global batch,
        so that DDP ranks use the noise one process would). ``labels`` (B,): a conditional
        model's label indices, -1 for an unlabelled row (see :class:`VAEOutput`).
        """
        if self.conditional:
            return self._forward_conditional(enc_ids, enc_mask, dec_in, labels, generator, sample, eps)
        mu, logvar = self.encode(enc_ids, enc_mask)
        z = self.reparameterize(mu, logvar, generator, eps) if sample else mu
        logits, _ = self.decode(dec_in, z)
        bow_logits = self.z_to_bow(z) if hasattr(self, "z_to_bow") else None
        pos_logits = self.positional_head(z, dec_in.shape[1]) if hasattr(self, "positional_head") else None
        return VAEOutput(logits, mu, logvar, z, bow_logits, pos_logits)

    def _forward_conditional(self, enc_ids, enc_mask, dec_in, labels, generator, sample, eps) -> VAEOutput:
        """The conditional model's training pass (Kingma et al. 2014, M2): labelled rows (label
        >= 0) decoded once with their label, unlabelled rows (label < 0) once per label, so that
        the loss can sum the conditional ELBO over q(y|x) exactly."""
        B, K = enc_ids.shape[0], self.cfg.num_labels
        if labels is None:
            labels = torch.full((B,), -1, dtype=torch.long, device=enc_ids.device)
        h = self.summary(enc_ids, enc_mask)
        class_logits = self.classifier(h)
        labelled = labels >= 0
        counts = torch.where(labelled, 1, K)  # decoded rows per sentence, in sentence order
        rows_t = torch.repeat_interleave(torch.arange(B, device=enc_ids.device), counts)
        within = torch.arange(rows_t.shape[0], device=enc_ids.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        labels_t = torch.where(labelled[rows_t], labels[rows_t], within)
        mu, logvar = self.posterior(h[rows_t], labels_t)
        if sample:
            if eps is None:
                eps = torch.randn((B, mu.shape[1]), generator=generator, device=mu.device, dtype=mu.dtype)
            z = self.reparameterize(mu, logvar, eps=eps[rows_t])  # a sentence's noise is shared by its labels
        else:
            z = mu
        logits, _ = self.decode(dec_in[rows_t], self.code(z, labels_t))
        bow_logits = self.z_to_bow(z) if hasattr(self, "z_to_bow") else None
        pos_logits = self.positional_head(z, dec_in.shape[1]) if hasattr(self, "positional_head") else None
        adv = self.adversary(_GradReverse.apply(mu)) if hasattr(self, "adversary") else None
        return VAEOutput(logits, mu, logvar, z, bow_logits, pos_logits, class_logits, adv, rows_t, labels_t)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
