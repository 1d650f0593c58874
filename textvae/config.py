"""Typed configuration for textvae.

Every YAML file in ``configs/`` mirrors :class:`Config`: top-level sections
``model``, ``data``, ``tokenizer`` and ``train`` map onto the dataclasses below.
Unknown keys are errors that list the valid ones; values are coerced to the
field's type; ``--set train.kl.warmup_steps=5000`` style overrides are applied
to the YAML before it is turned into dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from textvae.errors import ConfigError


@dataclass(frozen=True)
class EncoderConfig:
    """Which network reads the sentence and gives q(z|x) (``model.encoder``)."""

    type: str = "transformer"
    """'transformer' (trained from scratch with model.d_model, enc_layers...) or 'pretrained'
    (any encoder that transformers.AutoModel loads, e.g. a BERT-family model; it reads the
    sentence through its own tokenizer, which is saved with the checkpoint)."""
    name_or_path: Optional[str] = None
    """'pretrained': a local folder (or a hub name when the hub can be reached)."""
    freeze: bool = False
    """'pretrained': keep the pretrained weights fixed (and their dropout off); only the posterior head trains."""
    lr: float = 0.0
    """Peak learning rate of the encoder's weights (same warmup and decay as train.lr); 0 means
    train.lr. 'pretrained', not frozen: the pretrained weights; 'transformer': the encoder and the
    posterior head. Measured on the bundled corpus (docs/quality.md): a from-scratch encoder at a
    quarter of the decoder's rate gives the decoder a steadier code to learn to read, and z buys
    more reconstruction per nat; a higher rate (the cheap form of He et al. 2019's remedy for a
    lagging encoder) made it worse."""
    dropout: Optional[float] = None
    """'transformer': dropout inside the encoder (its embeddings, attention and MLP outputs); None
    means model.dropout. Lets the encoder be regularised apart from the decoder."""

    def __post_init__(self) -> None:
        _check_part("model.encoder", self.type, ("transformer", "pretrained"), self.name_or_path, self.lr)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.encoder.dropout must be in [0, 1) or null (model.dropout), got {self.dropout}")


@dataclass(frozen=True)
class DecoderConfig:
    """Which network rebuilds the sentence from z (``model.decoder``)."""

    type: str = "transformer"
    """'transformer' (from scratch, z injected as model.z_injection says), 'gru' (the recurrent
    VAE of Bowman et al. 2016: z is the initial hidden state and is concatenated to every input;
    model.dec_layers GRU layers of width model.d_model) or 'pretrained' (any causal LM that
    transformers.AutoModelForCausalLM loads, z injected as model.z_injection says; needs
    tokenizer.kind 'pretrained' with the decoder's own tokenizer)."""
    name_or_path: Optional[str] = None
    """'pretrained': a local folder (or a hub name when the hub can be reached)."""
    lr: float = 0.0
    """'pretrained': peak learning rate of the pretrained weights; 0 means train.lr. The new
    z-injection layers always use train.lr."""
    positions: str = "none"
    """'gru': what the recurrent decoder knows of positions. 'none': nothing but what its state
    counts; 'input': a learned embedding of each position (zero at first) added to its inputs; 'end'
    (configs/default.yaml): the same for the last END_POSITIONS positions before model.max_len only,
    so the decoder learns that a sentence must end by then and nothing else about where it is. With
    either, prior samples end within model.max_len as every training sentence does (on the bundled
    corpus 99 % instead of 95 %); 'input' costs about 0.02 of latent efficiency there, 'end' nothing
    measurable (docs/quality.md). The transformer and pretrained decoders always have positions."""

    def __post_init__(self) -> None:
        _check_part("model.decoder", self.type, ("transformer", "gru", "pretrained"), self.name_or_path, self.lr)
        if self.positions not in GRU_POSITIONS:
            raise ConfigError(f"model.decoder.positions must be one of {', '.join(GRU_POSITIONS)} (got {self.positions!r})")
        if self.positions != "none" and self.type != "gru":
            raise ConfigError(f"model.decoder.positions is a 'gru' option: the {self.type!r} decoder always has positions")


GRU_POSITIONS = ("none", "input", "end")
END_POSITIONS = 16
"""model.decoder.positions 'end': how many of the last positions before model.max_len have an embedding."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the sentence VAE (see ``textvae/model.py``)."""

    vocab_size: int = 0
    """Size of the token vocabulary; 0 means "take it from the tokenizer"."""
    d_model: int = 256
    """Width of the encoder and the decoder."""
    embed_dim: int = 0
    """Width of the shared token embedding of the parts made from scratch; 0 (or d_model) means
    d_model. Narrower factorises it (Lan et al. 2020): vocab_size x embed_dim rows and one
    embed_dim x d_model projection, used for the input and, tied, for the output layer, whose
    cost falls to about embed_dim / d_model of the full table's."""
    n_heads: int = 4
    """Attention heads per layer; must divide d_model."""
    enc_layers: int = 2
    """Transformer blocks in the encoder."""
    dec_layers: int = 2
    """Transformer blocks in the decoder."""
    d_ff: int = 0
    """Hidden width of each MLP; 0 means 4 * d_model."""
    dropout: float = 0.1
    """Dropout on attention outputs, MLP outputs and embeddings."""
    latent_dim: int = 32
    """Dimension of z; 0 builds a plain language model (no encoder, no z): the baseline a VAE must match."""
    pooling: str = "mean"
    """How the encoder summarises a sentence: 'mean' (masked mean), 'cls' (the first position:
    bos for the transformer encoder, [CLS] for a BERT-family pretrained encoder) or 'attention'
    (model.pool_queries learned queries, each a softmax-weighted mean over the positions; the
    summary is their concatenation, and starts as the masked mean)."""
    pool_queries: int = 4
    """Learned queries of 'attention' pooling."""
    z_injection: str = "both"
    """How z reaches the decoder: 'memory' (an extra key/value slot at every layer),
    'embedding' (added to every input embedding) or 'both' (Li et al. 2020, Optimus)."""
    z_slots: int = 1
    """Memory slots that z becomes at every decoder layer ('memory' and 'both' injection, transformer
    decoder): 1 as in Optimus; more let each position attend to a different projection of z."""
    max_len: int = 64
    """Longest token sequence, bos/eos included, that the model handles."""
    init_logvar: float = -6.0
    """Initial log-variance of the posterior (the bias of its logvar head). Negative starts q(z|x)
    narrow, so z carries the encoder's signal from the first step and the decoder learns to read
    it; at 0 (sigma = 1) z starts as noise that the decoder learns to ignore, and z stays unused."""
    bow_weight: float = 0.0
    """Weight of a bag-of-words loss on z (Zhao et al. 2017): a linear head predicts the sentence's
    tokens from z, regardless of order, so the encoder is taught to put the content into z from
    the first step instead of waiting for the decoder to ask for it. > 0 adds the head (L x vocab_size
    weights); it is trained with the model and unused at generation time."""
    position_weight: float = 0.0
    """Weight of a non-autoregressive positional loss on z: a head predicts the token at every
    position from z and that position's embedding alone, without the previous tokens, so the
    encoder is taught to put the sentence itself (its words in their order, not only its topic)
    into z. > 0 adds the head (max_len x d_model positions, an L x d_model projection and an MLP;
    the output layer is the tied token embedding); it is unused at generation time."""
    conditional: str = "none"
    """'none', or 'label': a semi-supervised, label-conditional VAE (Kingma et al. 2014, M2). A
    classifier q(y|x) reads the encoder's summary, the posterior q(z|x, y) and the decoder
    p(x|z, y) read a learned label embedding (the decoder through the same injection points as
    z), and rows without a label are trained on the expectation over q(y|x), summed exactly over
    the labels. Needs data.label_column; rows with an empty label are unlabelled."""
    num_labels: int = 0
    """Number of labels of a conditional model; 0 means "take it from the training data"."""
    label_dim: int = 16
    """Width of the label embedding that a conditional model's posterior and decoder read."""
    classifier_weight: float = 20.0
    """Weight alpha of the classification loss -log q(y|x) on labelled rows, in nats per sentence
    (Kingma et al. 2014's alpha): the ELBO alone does not train the classifier on labelled rows."""
    adversary_weight: float = 0.0
    """Conditional models: weight of an adversary that predicts a sentence's label from its
    posterior mean, trained through a gradient-reversal layer so that the encoder learns to keep
    the label out of z (John et al. 2019; Ganin & Lempitsky 2015). Without it z carries the style
    as well as the label does, and the decoder reads the style from z and ignores the label. 0 disables."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        _choice("model.conditional", self.conditional, ("none", "label"))
        if self.conditional != "none" and self.latent_dim == 0:
            raise ConfigError("model.conditional 'label' needs a latent space (model.latent_dim > 0)")
        if self.num_labels < 0 or self.num_labels == 1:
            raise ConfigError(f"model.num_labels must be 0 (from the data) or at least 2, got {self.num_labels}")
        if self.label_dim < 1:
            raise ConfigError(f"model.label_dim must be at least 1, got {self.label_dim}")
        if not math.isfinite(self.classifier_weight) or self.classifier_weight < 0:
            raise ConfigError(f"model.classifier_weight must be >= 0, got {self.classifier_weight}")
        if not math.isfinite(self.adversary_weight) or self.adversary_weight < 0:
            raise ConfigError(f"model.adversary_weight must be >= 0, got {self.adversary_weight}")
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be a positive multiple of model.n_heads ({self.n_heads})")
        if not 0 <= self.embed_dim <= self.d_model:
            raise ConfigError(f"model.embed_dim must be between 0 (d_model) and model.d_model ({self.d_model}), got {self.embed_dim}")
        if self.enc_layers < 1 or self.dec_layers < 1:
            raise ConfigError("model.enc_layers and model.dec_layers must be at least 1")
        if self.latent_dim < 0:
            raise ConfigError("model.latent_dim must be >= 0 (0: a plain language model)")
        _choice("model.pooling", self.pooling, ("mean", "cls", "attention"))
        if self.pool_queries < 1:
            raise ConfigError(f"model.pool_queries must be at least 1, got {self.pool_queries}")
        _choice("model.z_injection", self.z_injection, ("memory", "embedding", "both"))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.max_len < 4:
            raise ConfigError("model.max_len must be at least 4")
        if not math.isfinite(self.init_logvar) or not -20.0 <= self.init_logvar <= 5.0:
            raise ConfigError(f"model.init_logvar must be in [-20, 5], got {self.init_logvar}")
        if self.vocab_size < 0 or self.d_ff < 0:
            raise ConfigError("model.vocab_size and model.d_ff must be >= 0")
        if self.z_slots < 1:
            raise ConfigError(f"model.z_slots must be at least 1, got {self.z_slots}")
        if self.z_slots > 1 and self.decoder.type != "transformer":
            raise ConfigError(f"model.z_slots > 1 needs model.decoder.type 'transformer' (got {self.decoder.type!r})")
        if not math.isfinite(self.bow_weight) or self.bow_weight < 0:
            raise ConfigError(f"model.bow_weight must be >= 0, got {self.bow_weight}")
        if not math.isfinite(self.position_weight) or self.position_weight < 0:
            raise ConfigError(f"model.position_weight must be >= 0, got {self.position_weight}")


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus comes from and how it is cleaned and batched (``textvae/data.py``)."""

    train: str = "data/bible/train.jsonl.gz"
    """Training data: a local .txt/.csv/.tsv/.json/.jsonl/.parquet file (optionally .gz) or a hub dataset name."""
    valid: Optional[str] = "data/bible/valid.jsonl.gz"
    """Validation data (same forms); with a hub name, the split named by valid_split is used."""
    test: Optional[str] = None
    """Test data (same forms), used by evaluation commands."""
    train_split: str = "train"
    """Split name to read from a hub dataset (local files always give 'train')."""
    valid_split: str = "validation"
    """Split name of the validation data on a hub dataset."""
    test_split: str = "test"
    """Split name of the test data on a hub dataset."""
    text_column: str = "text"
    """Column holding the sentence (.txt files always have 'text')."""
    label_column: Optional[str] = None
    """Optional column with a style/attribute label for each sentence."""
    min_words: int = 1
    """Drop sentences with fewer whitespace-separated words."""
    max_words: int = 0
    """Drop sentences with more words; 0 means no limit."""
    batch_size: int = 64
    """Sentences per batch (per optimiser micro-step)."""
    bucket_size: int = 50
    """Length bucketing: this many batches are drawn at random, sorted by length, cut into batches."""
    num_proc: int = 1
    """Processes for datasets.map tokenisation."""
    streaming: bool = False
    """Read the training split as a ``datasets`` stream (IterableDataset) instead of loading it:
    for corpora larger than memory. The tokenizer is trained on the first streaming_sample
    sentences; validation data is still loaded in memory."""
    streaming_sample: int = 10000
    """Streaming: cleaned sentences from the start of the stream that train the tokenizer
    (and give the label names and the final attribute vectors)."""
    shuffle_buffer: int = 10000
    """Streaming: rows in the shuffle buffer (datasets' IterableDataset.shuffle), reseeded every epoch."""
    label_fraction: float = 1.0
    """Conditional models (model.conditional 'label'): keep the labels of this share of the
    training rows, chosen with train.seed, and treat the others as unlabelled (for
    semi-supervised experiments). 1 keeps every label the data has."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.bucket_size < 1:
            raise ConfigError("data.batch_size and data.bucket_size must be at least 1")
        if self.min_words < 0 or self.max_words < 0:
            raise ConfigError("data.min_words and data.max_words must be >= 0")
        if self.max_words and self.max_words < self.min_words:
            raise ConfigError("data.max_words must be >= data.min_words")
        if self.streaming_sample < 1 or self.shuffle_buffer < 1:
            raise ConfigError("data.streaming_sample and data.shuffle_buffer must be at least 1")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"data.label_fraction must be in (0, 1], got {self.label_fraction}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Tokenizer trained on the training split, or a pretrained one (``textvae/tokenizer.py``)."""

    kind: str = "bpe"
    """'bpe' (byte-level BPE with the tokenizers library), 'unigram' (sentencepiece) or 'pretrained'."""
    vocab_size: int = 8000
    """Target vocabulary size for a trained tokenizer, special tokens included."""
    min_frequency: int = 2
    """BPE: merges need at least this many occurrences."""
    path: Optional[str] = None
    """'pretrained': a folder (or hub name) that transformers.AutoTokenizer can load."""
    lowercase: bool = False
    """Lowercase text before tokenising (trained tokenizers only)."""

    def __post_init__(self) -> None:
        _choice("tokenizer.kind", self.kind, ("bpe", "unigram", "pretrained"))
        if self.kind == "pretrained" and not self.path:
            raise ConfigError("tokenizer.kind 'pretrained' needs tokenizer.path")
        if self.kind != "pretrained" and self.vocab_size < 16:
            raise ConfigError("tokenizer.vocab_size must be at least 16")


@dataclass(frozen=True)
class KLConfig:
    """Weight of the KL term (beta) over training and the free-bits floor (``textvae/schedules.py``)."""

    schedule: str = "linear"
    """'constant', 'linear', 'sigmoid' (Bowman et al. 2016) or 'cyclical' (Fu et al. 2019)."""
    beta_max: float = 1.0
    """Final (or per-cycle maximum) KL weight."""
    start_step: int = 0
    """Beta is 0 before this step (except 'constant')."""
    warmup_steps: int = 1000
    """linear/sigmoid: steps from 0 to beta_max."""
    cycles: int = 4
    """cyclical: number of cycles over train.max_steps."""
    ratio: float = 0.5
    """cyclical: fraction of each cycle spent increasing beta; the rest stays at beta_max."""
    free_bits: float = 0.0
    """KL thresholding per latent dimension in nats (Kingma et al. 2016; Li et al. 2019); 0 disables."""
    free_bits_groups: int = 0
    """Where the free-bits floor applies: 0, each dimension (every one held at ``free_bits``); 1, the
    whole of z (a floor of latent_dim * free_bits on the sentence's KL, spent on the dimensions the
    encoder chooses); G, G equal groups of contiguous dimensions (Kingma et al. 2016's groups)."""
    reset_decoder_step: int = 0
    """At this step re-initialise the decoder (not the shared token embedding) and its optimiser
    state, keeping the encoder: with ``start_step`` at the same step, autoencoder pre-training
    before the KL term (Li et al. 2019). 0 disables."""

    def __post_init__(self) -> None:
        _choice("train.kl.schedule", self.schedule, ("constant", "linear", "sigmoid", "cyclical"))
        if self.beta_max < 0 or self.free_bits < 0:
            raise ConfigError("train.kl.beta_max and train.kl.free_bits must be >= 0")
        if self.free_bits_groups < 0:
            raise ConfigError("train.kl.free_bits_groups must be >= 0 (0: one group per dimension)")
        if self.reset_decoder_step < 0:
            raise ConfigError("train.kl.reset_decoder_step must be >= 0 (0: off)")
        if self.warmup_steps < 0 or self.start_step < 0 or self.cycles < 1:
            raise ConfigError("train.kl.warmup_steps and start_step must be >= 0, cycles >= 1")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"train.kl.ratio must be in (0, 1], got {self.ratio}")


@dataclass(frozen=True)
class WordDropoutConfig:
    """Word dropout on decoder inputs (Bowman et al. 2016)."""

    rate: float = 0.0
    """Probability of replacing a decoder input token by unk (final rate if annealed)."""
    schedule: str = "constant"
    """'constant' or 'linear' (from 0 to rate over warmup_steps)."""
    warmup_steps: int = 0
    """Steps of the linear ramp."""

    def __post_init__(self) -> None:
        _choice("train.word_dropout.schedule", self.schedule, ("constant", "linear"))
        if not 0.0 <= self.rate < 1.0:
            raise ConfigError(f"train.word_dropout.rate must be in [0, 1), got {self.rate}")
        if self.warmup_steps < 0:
            raise ConfigError("train.word_dropout.warmup_steps must be >= 0")


KEEP_BEST = ("none", "neg_elbo", "rec")  # train.keep_best: which validation figure picks <run>/best


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop (``textvae/train.py``)."""

    seed: int = 0
    """Seeds data order, initialisation, dropout and z noise."""
    max_steps: int = 2000
    """Optimiser steps."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear learning-rate warmup."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to norms, biases and embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    precision: str = "auto"
    """'auto' (bf16 on a CUDA GPU that supports it, else fp16; fp32 on CPU), 'fp32', 'bf16' or 'fp16'."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda' or 'cuda:N'."""
    threads: int = 0
    """CPU threads for torch; 0 leaves torch's default."""
    eval_every: int = 500
    """Validate every this many steps (and at the end); 0 only at the end."""
    eval_batches: int = 0
    """Validation batches per evaluation; 0 means the whole validation set."""
    save_every: int = 500
    """Write a checkpoint every this many steps (and at the end); 0 only at the end."""
    keep_best: str = "none"
    """Also keep the weights of the best validation so far in <run>/best, a checkpoint like the
    final one (sampling, transfer, evaluation) that cannot be resumed: 'none', 'neg_elbo' (the
    -ELBO at beta 1, the likelihood bound) or 'rec' (the reconstruction NLL). Needs data.valid.
    With train.decoder_only_steps or train.elbo_steps, 'rec' is not comparable across the
    calibration at their start (a wider posterior's samples reconstruct worse by design): use
    'neg_elbo'."""
    final_codes: int = 0
    """Training sentences encoded after the last step for what the final checkpoint derives from
    the codes (the fitted prior and, for a labelled corpus, the style vectors): a random subset of
    this many, drawn with train.seed; 0 encodes every training sentence."""
    standardize_latents: bool = True
    """After the last step, re-express the latent space so that the training codes' aggregate
    posterior has mean 0 and variance 1 in every dimension (an exact change of coordinates:
    reconstructions stay as they were; SentenceVAE.standardize_latents). The KL to N(0, I) then
    stops paying for codes that fill less (or more) of the space than the prior, and N(0, I)
    samples land where the codes are. Uses the codes of train.final_codes."""
    calibrate_variance: int = 150
    """After the last step (before train.standardize_latents), train one offset per latent
    dimension to the posterior's log-variance, alone, for this many steps of the plain ELBO
    (beta 1, no free bits) on training batches, every weight frozen; 0 skips it. Training at
    beta < 1 or against a free-bits floor leaves the posterior narrower than the ELBO's optimum,
    so z costs nats that buy no reconstruction; widening it lowers the KL and the
    importance-weighted NLL. The posterior means, and with them reconstructions, interpolation and
    transfer, stay as they were (textvae.train.calibrate_variance)."""
    decoder_only_steps: int = 0
    """The last this many of train.max_steps train the decoder alone (the weights of
    SentenceVAE.posterior_parameters held still) against the posterior, its variance calibrated
    first (train.calibrate_variance steps; after train.elbo_steps, which train it on the same
    objective, it is not calibrated again): the decoder learns to read codes at the noise the
    ELBO gives them, not at the narrower noise of training at beta < 1. 0: off. Needs
    train.calibrate_variance > 0."""
    elbo_steps: int = 0
    """Steps of the plain ELBO (beta 1, no free bits) on every weight, just before
    train.decoder_only_steps (or at the very end without them), starting from a posterior whose
    variance is calibrated first (train.calibrate_variance steps). Training at beta < 1 fills z
    with nats that buy less reconstruction than they cost the likelihood bound; these steps let
    the encoder give up the dearest of them, and the decoder learn at the codes that stay. A
    tighter bound and more fluent samples at some cost in reconstruction (docs/quality.md,
    twelfth round). Auxiliary losses (model.bow_weight, model.position_weight, a conditional
    model's classifier) stay as configured. 0: off. Needs train.calibrate_variance > 0."""
    log_every: int = 20
    """Append training metrics to metrics.jsonl every this many steps."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard event files to <run>/tensorboard (every loss term, beta, word-dropout
    rate, learning rate, gradient norm, validation active units); needs pip install 'textvae[viz]'."""
    compile: bool = False
    """Compile the training forward pass with torch.compile (slow first steps, faster later ones
    on a GPU); evaluation and the key/value-cache decoder run the uncompiled module."""
    kl: KLConfig = field(default_factory=KLConfig)
    word_dropout: WordDropoutConfig = field(default_factory=WordDropoutConfig)

    def __post_init__(self) -> None:
        _choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice("train.keep_best", self.keep_best, KEEP_BEST)
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ConfigError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.max_steps < 1 or self.grad_accum < 1:
            raise ConfigError("train.max_steps and train.grad_accum must be at least 1")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError("train.lr must be > 0 and 0 <= train.min_lr <= train.lr")
        for name in ("warmup_steps", "eval_every", "eval_batches", "save_every", "threads", "final_codes",
                     "calibrate_variance", "decoder_only_steps", "elbo_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0")
        if self.log_every < 1:
            raise ConfigError("train.log_every must be at least 1")
        if self.decoder_only_steps + self.elbo_steps >= self.max_steps:
            raise ConfigError(f"train.decoder_only_steps + train.elbo_steps ({self.decoder_only_steps} + "
                              f"{self.elbo_steps}) must be fewer than train.max_steps ({self.max_steps})")
        for name in ("decoder_only_steps", "elbo_steps"):
            if getattr(self, name) and not self.calibrate_variance:
                raise ConfigError(f"train.{name} starts from the calibrated posterior: set train.calibrate_variance "
                                  "> 0 too")


@dataclass(frozen=True)
class Config:
    """A whole run: what ``textvae train --config`` reads."""

    name: str = "textvae"
    """Run name; the default output folder is runs/<name>."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.conditional != "none" and not self.data.label_column:
            raise ConfigError("model.conditional 'label' needs data.label_column (the column of labels)")
        if self.model.conditional != "none" and self.data.streaming:
            raise ConfigError("model.conditional 'label' does not support data.streaming yet; load the corpus in memory")
        if self.model.decoder.type == "pretrained" and self.tokenizer.kind != "pretrained":
            raise ConfigError("model.decoder.type 'pretrained' reads and writes its own vocabulary: set tokenizer.kind=pretrained "
                              "and tokenizer.path to the decoder's folder")
        if self.train.keep_best != "none" and not self.data.valid:
            raise ConfigError("train.keep_best picks the best checkpoint by validation: set data.valid")
        groups, L = self.train.kl.free_bits_groups, self.model.latent_dim
        if 0 < groups < L and L % groups:
            raise ConfigError(f"train.kl.free_bits_groups={groups} must divide model.latent_dim={L} "
                              f"(or be 0 for one group per dimension)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_part(prefix: str, kind: str, allowed: tuple[str, ...], name_or_path: Optional[str], lr: float) -> None:
    """The checks shared by model.encoder and model.decoder."""
    _choice(f"{prefix}.type", kind, allowed)
    if kind == "pretrained" and not name_or_path:
        raise ConfigError(f"{prefix}.type 'pretrained' needs {prefix}.name_or_path (a local folder or a hub name)")
    if lr < 0:
        raise ConfigError(f"{prefix}.lr must be >= 0 (0: train.lr)")


# --------------------------------------------------------------------------- building from dicts


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


INT_LIMITS: dict[str, int] = {
    "model.vocab_size": 1_000_000, "model.d_model": 16_384, "model.n_heads": 1_024, "model.enc_layers": 256,
    "model.dec_layers": 256, "model.d_ff": 262_144, "model.num_labels": 100_000, "model.label_dim": 16_384, "model.latent_dim": 16_384, "model.z_slots": 1_024,
    "model.max_len": 16_384, "tokenizer.vocab_size": 1_000_000, "data.batch_size": 1_000_000,
    "data.bucket_size": 1_000_000, "train.kl.free_bits_groups": 16_384, "train.seed": 2**32 - 1, "train.threads": 1_024, "train.grad_accum": 1_000_000,
    "train.calibrate_variance": 1_000_000, "train.decoder_only_steps": 100_000_000,
    "train.elbo_steps": 100_000_000,
}
"""Largest value of the integer keys that size memory (a config.json or --set cannot ask for a
terabyte); every other integer key is bounded by :data:`MAX_INT`."""
MAX_INT = 10**12


def _check_int(name: str, value: int) -> int:
    hi = INT_LIMITS.get(name, MAX_INT)
    if value > hi or value < -MAX_INT:
        raise ConfigError(f"{name} must be at most {hi:,}, got {value:,}" if value > hi else
                          f"{name} is out of range, got {value:,}")
    return value


# string keys for which 'none' is a choice, not an empty value
_NONE_IS_A_VALUE = {"model.conditional", "train.keep_best", "model.decoder.positions"}


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Coerce ``value`` (from YAML or a command-line string) to the field type ``tp``."""
    base, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if optional:
            return None
        if value is None or name not in _NONE_IS_A_VALUE:
            raise ConfigError(f"{name} cannot be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return _check_int(name, value)
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be an integer, got {str(value)[:40]!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name} must be an integer, got {str(value)[:40]!r}")
        return _check_int(name, int(as_float))
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return number
    if base is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{name}: unsupported type {tp}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys{' under ' + prefix if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, name)
        else:
            kwargs[key] = _coerce(name, tp, value)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a nested dict (unknown keys are errors)."""
    return _build(Config, data, "")


def _set_dotted(data: dict[str, Any], key: str, raw: str) -> None:
    parts = key.split(".")
    cls: Any = Config
    node = data
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i])
            valid = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown config key {key}; valid keys{' under ' + where if where else ''}: {valid}")
        tp = hints[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.{dataclasses.fields(tp)[0].name}=...")
            # YAML-parse the raw string so lists/None/numbers read naturally, then coerce by type.
            try:
                value = yaml.safe_load(raw) if raw.strip() else raw
            except yaml.YAMLError:
                value = raw
            if _unwrap_optional(tp)[0] is str and value is not None and not isinstance(value, str):
                value = raw
            node[part] = _coerce(key, tp, value)
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section, so {key} is not a config key")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} must be a mapping")
            node, cls = child, tp


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a config dict; unknown keys list the valid ones."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML (or JSON) config file, apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (model, data, tokenizer, train)")
        data = loaded
    apply_overrides(data, overrides or [])
    return from_dict(data)
