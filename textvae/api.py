"""The Python API: a trained sentence VAE behind text-in, text-out methods.

    from textvae import TextVAE

    vae = TextVAE.from_pretrained("runs/default")
    vae.reconstruct(["In the beginning God created the heaven and the earth."])
    vae.interpolate("Jesus wept.", "And God said, Let there be light.", steps=5, method="slerp")
    vae.transfer(["And he said unto them, Go ye into the city."], source="kjv", target="web")

A thin facade: the command line (``textvae reconstruct|interpolate|transfer|analogy|...``)
calls these same methods, and each method calls the module that owns its feature: tensor
arithmetic ``textvae/latent.py``, style transfer ``textvae/transfer.py``, decoding
``textvae/generate.py``, likelihoods ``textvae/evaluate.py``, model folders
``textvae/checkpoint.py``, input sentences ``textvae/data.py``. Every method batches its
input, takes the device from the model and is deterministic for a given ``seed`` (only
``strategy="sample"`` uses it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from textvae import checkpoint as ckpt
from textvae import latent
from textvae import transfer as style_transfer  # (TextVAE.transfer would shadow the module name)
from textvae.config import Config
from textvae.data import check_sentences
from textvae.errors import CheckpointError, InputError
from textvae.evaluate import SCORE_IW_SAMPLES, code_nll, posterior_params, prepare_ids, refine_posterior, words_of
from textvae.generate import DEFAULT_Z_TEMPERATURE, RowSeeds, decode_texts
from textvae.model import SentenceVAE
from textvae.prior import DEFAULT_PRIOR, PRIORS
from textvae.tokenizer import Tokenizer

log = logging.getLogger("textvae")

Sentences = Union[str, Sequence[str]]
Transferred = style_transfer.Transferred

# Keys that save_checkpoint writes itself; everything else in config.json is carried over.
_BASE_META = ("format", "version", "saved_at", "config", "vocab_size", "special_tokens", "special_ids",
              "pretrained_configs", "encoder_tokenizer")


class TextVAE:
    """A trained sentence VAE with its tokenizer, config, checkpoint metadata and attribute vectors.

    Args:
        model: the network (its device is where all computation happens).
        tokenizer: the model's tokenizer.
        config: the run config the model was trained with.
        meta: the rest of the checkpoint's config.json (label names, step...).
        attributes: attribute vectors per label, or None (see :meth:`attribute_vectors`).
        path: the checkpoint folder the model came from, if any.
        batch_size: sentences per encoder/decoder call.
    """

    def __init__(self, model: SentenceVAE, tokenizer: Tokenizer, config: Config,
                 meta: Optional[dict[str, Any]] = None, attributes: Optional[latent.Attributes] = None,
                 path: Optional[Path] = None, batch_size: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.meta = dict(meta or {})
        self.attributes = attributes
        self.path = path
        self.batch_size = batch_size
        self.truncated = 0  # sentences cut to the model's length limit by the last encode()
        self.warn_truncation = True  # log a warning when encode() truncates
        self.refine_steps = 0  # > 0: semi-amortised encoding (Kim et al. 2018), see encode_texts
        self.judges: dict[str, Any] = {}  # style judges of transfer, loaded (or trained) on first use
        self._words: dict[str, Any] = {}  # the training data's words per --words mode, loaded on first use
        self._known: dict[str, Optional[set[str]]] = {}  # the same words as strings (known_words)
        self._priors: dict[str, Any] = {}  # the prior per --prior mode (None: N(0, I)), resolved on first use

    # ------------------------------------------------------------------ files

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", attributes: bool = True
                        ) -> "TextVAE":
        """Load a checkpoint (or run) folder, with its attribute vectors when it has them
        (``attributes=False`` ignores them, e.g. to recompute stale ones)."""
        loaded = ckpt.load_pretrained(path, device=device)
        attrs = ckpt.load_attributes(loaded.path, loaded.model) if attributes else None
        return cls(loaded.model, loaded.tokenizer, loaded.config, loaded.meta, attrs, loaded.path)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a self-contained checkpoint folder (weights, tokenizer, config, attribute vectors), atomically."""
        meta = {k: v for k, v in self.meta.items() if k not in _BASE_META}
        files = ckpt.attribute_files(self.attributes) if self.attributes is not None else None
        out = ckpt.save_checkpoint(path, self.model, self.tokenizer, self.config, meta=meta, extra_files=files)
        self.path = out
        return out

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    @property
    def conditional(self) -> bool:
        """Whether the model is label-conditional (model.conditional 'label'; Kingma et al. 2014)."""
        return bool(getattr(self.model, "conditional", False))

    @property
    def label_names(self) -> list[str]:
        """The training data's label names (in label-index order), [] for unlabelled data."""
        return list(self.meta.get("label_names") or [])

    def label_index(self, label: str, what: str = "--label") -> int:
        """A label's index for a conditional model; a one-line error for an unconditional model or
        a label never seen in training."""
        if not self.conditional:
            raise InputError(f"{what} needs a label-conditional model (trained with --set model.conditional=label); "
                             "this one is unconditional")
        names = self.label_names
        if label not in names:
            raise InputError(f"unknown label {label!r}; the model was trained on: {', '.join(names)}")
        return names.index(label)

    def _label_tensor(self, labels: Any, n: int) -> Optional[torch.Tensor]:
        """(n,) label indices on the model's device from one label, n labels (names or indices) or
        None (None stays None: an unconditional model, or 'the classifier's label')."""
        if labels is None:
            return None
        if isinstance(labels, torch.Tensor):
            return labels.to(self.device, torch.long)
        if isinstance(labels, (str, int)):
            labels = [labels] * n
        labels = list(labels)
        if len(labels) != n:
            raise InputError(f"give one label, or one per row ({n}), not {len(labels)}")
        out = []
        for y in labels:
            if isinstance(y, str):
                out.append(self.label_index(y))
            elif isinstance(y, int) and self.conditional and 0 <= y < len(self.label_names):
                out.append(y)
            else:
                self.label_index(str(y))  # raises the one-line error
        return torch.as_tensor(out, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ labels (a conditional model)

    def classify(self, sentences: Sentences) -> list[dict[str, Any]]:
        """The classifier q(y|x) of a conditional model: per sentence {text, label, prob, probs}."""
        if not self.conditional:
            raise InputError("classify needs a label-conditional model (trained with --set model.conditional=label); "
                             "this one is unconditional")
        texts = check_sentences(sentences)
        probs = self._label_probs(texts).cpu()
        names = self.label_names
        return [{"text": t, "label": names[int(p.argmax())], "prob": float(p.max()),
                 "probs": {n: float(v) for n, v in zip(names, p.tolist())}} for t, p in zip(texts, probs)]

    def predicted_labels(self, texts: list[str]) -> Optional[torch.Tensor]:
        """The classifier's most likely label index per text (None for an unconditional model)."""
        return self._label_probs(texts).argmax(-1) if self.conditional else None

    def _label_probs(self, texts: list[str]) -> torch.Tensor:
        """q(y|x) (N, K) of a conditional model for checked texts."""
        from textvae.evaluate import predict_labels

        ids, _ = prepare_ids(self.tokenizer, texts, self.model.cfg.max_len)
        return predict_labels(self.model, ids, self.tokenizer, self.batch_size)

    # ------------------------------------------------------------------ text <-> z

    def encode(self, sentences: Sentences) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of sentences.

        Sentences longer than the model's limit are truncated, counted in ``self.truncated``
        and reported with a warning; an empty sentence is an error.

        Returns:
            mu, logvar: (N, L) float32 on the model's device.
        """
        return self.encode_texts(check_sentences(sentences))

    def encode_texts(self, texts: list[str], warn: bool = True, refine: bool = True,
                     labels: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` for texts already checked (``warn=False``: no truncation count or warning).

        With ``self.refine_steps`` > 0 (and ``refine``), each mean is refined against the decoder
        at encode time (semi-amortised inference, :func:`textvae.evaluate.refine_posterior`).
        A conditional model encodes q(z|x, y) under ``labels`` (one label or one per text; None:
        the label its classifier finds most likely)."""
        if self.model.is_lm:
            raise InputError("this checkpoint is a language model (latent_dim 0): it has no latent space")
        ids, truncated = prepare_ids(self.tokenizer, texts, self.model.cfg.max_len)
        if warn:
            self.truncated = truncated
        if truncated and warn and self.warn_truncation:
            log.warning("%d of %d sentences were longer than the model's limit (%d tokens, bos/eos included) "
                        "and were truncated", truncated, len(texts), self.model.cfg.max_len)
        lab = self._label_tensor(labels, len(texts)) if self.conditional else None
        if self.conditional and lab is None:
            lab = self.predicted_labels(texts)
        mu, logvar = posterior_params(self.model, ids, self.tokenizer, self.batch_size, lab)
        if refine and self.refine_steps:
            mu = refine_posterior(self.model, ids, self.tokenizer, mu, logvar, self.refine_steps,
                                  batch_size=self.batch_size, labels=lab)
        return mu, logvar

    def seen_words(self, mode: str = ckpt.DEFAULT_WORDS) -> Optional[Any]:
        """The training data's words for decoding with ``words=mode`` (see :func:`textvae.checkpoint.load_seen_words`)."""
        if mode not in self._words:
            self._words[mode] = ckpt.load_seen_words(self, mode)
        return self._words[mode]

    def known_words(self, mode: str = ckpt.DEFAULT_WORDS) -> Optional[set[str]]:
        """The training data's words as the unseen-word rate counts them
        (:func:`textvae.evaluate.words_of`), or None when they cannot be had."""
        if mode not in self._known:
            seen = self.seen_words(mode)
            self._known[mode] = None if seen is None else {
                w for ids in seen.words for w in words_of(self.tokenizer.decode(list(ids)))}
        return self._known[mode]

    def token_nll(self, z: torch.Tensor, texts: Sequence[str], labels: Any = None) -> torch.Tensor:
        """The decoder's negative log-likelihood of each text given the code z (N, L), in nats per
        token (eos included; texts cut to the model's length): (N,) float64. A conditional
        model reads ``labels`` (one label name or one per row) as :meth:`decode` does."""
        z = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        if z.dim() != 2 or z.shape[0] != len(texts):
            raise InputError(f"give one code per text: z has shape {tuple(z.shape)} for {len(texts)} texts")
        if self.conditional:
            if labels is None:
                raise InputError(f"this model reads z with a label: give one of {', '.join(self.label_names)}")
            z = self.model.code(z, self._label_tensor(labels, z.shape[0]))
        ids, _ = prepare_ids(self.tokenizer, list(texts), self.model.cfg.max_len)
        nll, n = code_nll(self.model, ids, self.tokenizer, z, self.batch_size)
        return nll / n

    def decode(self, z: torch.Tensor, strategy: str = "greedy", seed: int | Sequence[int] = 0, words: Any = ckpt.DEFAULT_WORDS,
               labels: Any = None, **decode_kwargs: Any) -> list[str]:
        """Decode codes z (N, L) or (L,) into sentences (a conditional model: with ``labels``,
        one label name or one per row).

        Args:
            strategy: 'greedy', 'sample' or 'beam' (see ``textvae.generate.decode``; its
                temperature, top_k, top_p, beam_size and max_len pass through).
            seed: random source of 'sample': row i draws from its own stream, seeded seed + i
                (or seed[i], given one seed per row).
            words: 'seen' (only words of the training data), 'any', 'auto' ('seen' when the
                training words can be had), or a :class:`textvae.generate.SeenWords`.
        """
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() == 1:
            z = z[None]
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise InputError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        if self.conditional:
            if labels is None:
                raise InputError(f"this model decodes z with a label: give one of {', '.join(self.label_names)}")
            z = self.model.code(z.to(self.device), self._label_tensor(labels, z.shape[0]))
        elif labels is not None:
            self.label_index(str(labels), "a label")  # the one-line error of an unconditional model
        if isinstance(words, str):
            words = self.seen_words(words)
        if isinstance(seed, int):
            rows = RowSeeds.from_seed(seed, z.shape[0])  # row i samples from seed + i, whatever shares its batch
        elif len(seed) == z.shape[0]:
            rows = RowSeeds(seed)
        else:
            raise InputError(f"give one seed, or one per row of z ({z.shape[0]}), not {len(seed)}")
        return decode_texts(self.model, self.tokenizer, z, self.batch_size, rows, strategy=strategy, words=words,
                            **decode_kwargs)[0]

    def sample(self, n: int, seed: int = 0, strategy: str = "sample", top_p: float = 0.9,
               prior: str = DEFAULT_PRIOR, label: Optional[str] = None, z_temperature: float = DEFAULT_Z_TEMPERATURE,
               **decode_kwargs: Any) -> list[str]:
        """n sentences decoded from codes drawn from the prior: 'normal' N(0, I), 'fitted' the
        mixture fitted to the training codes (textvae/prior.py), or 'auto' (the default) the fitted
        one when it can be had, else N(0, I). A conditional model writes in the
        style of ``label`` (None: each sentence's label drawn from the uniform label prior); a model
        trained on labelled data that is not conditional draws its codes from the prior fitted to
        that label's training codes (:meth:`label_prior`).
        ``z_temperature`` scales the prior's noise (default 0.8: nearer its modes; 1: the prior
        itself; textvae.generate.sample)."""
        return self.sample_detailed(n, seed, strategy, top_p, prior, label, z_temperature, **decode_kwargs)[0]

    def sample_detailed(self, n: int, seed: int = 0, strategy: str = "sample", top_p: float = 0.9,
                        prior: str = DEFAULT_PRIOR, label: Optional[str] = None,
                        z_temperature: float = DEFAULT_Z_TEMPERATURE, **decode_kwargs: Any) -> tuple[list[str], list[bool]]:
        """:meth:`sample`, also returning whether each sentence ended before the length limit."""
        from textvae.generate import sample

        if n < 1:
            raise InputError("the number of samples must be at least 1")
        if prior not in PRIORS:
            raise InputError(f"unknown prior {prior!r}; use one of {', '.join(PRIORS)}")
        self.check_sample_label(label, prior)
        index = self.label_index(label) if label is not None and self.conditional else None
        words = decode_kwargs.pop("words", ckpt.DEFAULT_WORDS)
        if isinstance(words, str):
            words = self.seen_words(words)
        fitted = self.label_prior(label) if label is not None and not self.conditional else self.resolved_prior(prior)
        return sample(self.model, self.tokenizer, n, seed=seed, batch_size=self.batch_size, prior=fitted,
                      label=index, z_temperature=z_temperature, strategy=strategy, top_p=top_p, words=words,
                      **decode_kwargs)

    def check_sample_label(self, label: Optional[str], prior: str = DEFAULT_PRIOR) -> None:
        """A one-line error, before any work, when :meth:`sample` cannot write in ``label``'s style:
        a label the model was not trained on, an unlabelled training corpus, or (a model that is
        not label-conditional, which samples from the prior fitted to that label's codes) --prior normal."""
        if label is None:
            return
        if self.conditional:
            self.label_index(label)
            return
        names = self.label_names
        if not names:
            raise InputError("--label needs a model trained on labelled data (data.label_column) or a "
                             "label-conditional one; this one was trained without labels")
        if label not in names:
            raise InputError(f"unknown label {label!r}; the model was trained on: {', '.join(names)}")
        if prior == "normal":
            raise InputError("--label samples from the prior fitted to that label's training codes: use --prior "
                             "fitted or auto, not normal")

    def label_prior(self, label: str) -> Any:
        """The mixture fitted to the training codes of one label (:func:`textvae.prior.fit_by_label`),
        what a model that is not label-conditional samples from to write in that label's style.
        Fitted and cached in the folder when the checkpoint lacks it (its training data must be readable)."""
        self.check_sample_label(label, "fitted")
        fitted = self._priors.get("fitted")
        if fitted is None or not fitted.by_label:  # the fitted prior, with its per-label mixtures
            fitted = self._priors["fitted"] = ckpt.load_prior(self, labels=True)
        by_label = fitted.by_label
        if label not in by_label:
            raise InputError(f"no training codes of label {label!r} were encoded for its prior (train.final_codes "
                             f"drew none); labels with a prior: {', '.join(by_label) or 'none'}")
        return by_label[label]

    def resolved_prior(self, mode: str = DEFAULT_PRIOR) -> Any:
        """The prior of ``mode`` (see :func:`textvae.checkpoint.resolve_prior`): the fitted mixture,
        or None for N(0, I); looked up once per mode."""
        if mode not in self._priors:
            self._priors[mode] = ckpt.resolve_prior(self, mode)
        return self._priors[mode]

    def fitted_prior(self) -> Any:
        """The mixture fitted to the training codes (fitted and cached in the folder when missing)."""
        return self.resolved_prior("fitted")

    def reconstruct(self, sentences: Sentences, strategy: str = "greedy", seed: int = 0,
                    **decode_kwargs: Any) -> list[str]:
        """Encode to the posterior mean and decode again (a conditional model: under the label its
        classifier finds most likely)."""
        texts = check_sentences(sentences)
        labels = self.predicted_labels(texts)
        mu, _ = self.encode_texts(texts, labels=labels)
        return self.decode(mu, strategy, seed, labels=self._names(labels), **decode_kwargs)

    def _names(self, labels: Optional[torch.Tensor]) -> Optional[list[str]]:
        return None if labels is None else [self.label_names[i] for i in labels.tolist()]

    def export_codes(self, texts: Sequence[str], path: str | Path, logvar: bool = False) -> list[Path]:
        """Write the posterior means (and log-variances) of ``texts`` to a .npy or .parquet file,
        one row per text, atomically (see :func:`textvae.files.write_codes`). Empty texts are
        encoded as empty sentences, so rows stay aligned with the input lines."""
        from textvae.files import CODE_FORMATS, write_codes

        if Path(path).suffix not in CODE_FORMATS:  # before any work
            raise InputError(f"--output must end in {' or '.join(CODE_FORMATS)}")
        mu, lv = self.encode_texts(list(texts))
        return write_codes(path, list(texts), mu.cpu(), lv.cpu() if logvar else None)

    def score(self, sentences: Sentences, method: str = "iw", iw_samples: int = SCORE_IW_SAMPLES, seed: int = 0,
              prior: str = "normal") -> list[dict]:
        """Likelihood bound per sentence (see :func:`textvae.evaluate.score_sentences`); ``prior``: p(z)
        of the bound, 'normal' (N(0, I)), 'fitted' or 'auto' (see :meth:`resolved_prior`)."""
        from textvae.evaluate import score_sentences

        texts = check_sentences(sentences)
        return score_sentences(self.model, self.tokenizer, texts, method, iw_samples, seed, self.resolved_prior(prior))

    # ------------------------------------------------------------------ latent arithmetic

    def interpolate(self, a: str, b: str, steps: int = 5, method: str = "lerp", strategy: str = "greedy",
                    seed: int = 0, **decode_kwargs: Any) -> list[str]:
        """Sentences along the path between the posterior means of ``a`` and ``b``.

        Args:
            steps: points on the path, endpoints included (>= 2); the first and last are
                the reconstructions of a and b.
            method: 'lerp' (straight line) or 'slerp' (great circle, norm moving linearly).
        """
        if steps < 2:
            raise InputError(f"--steps must be at least 2 (the two endpoints), got {steps}")
        if method not in latent.INTERPOLATIONS:
            raise InputError(f"unknown interpolation method {method!r}; use one of {', '.join(latent.INTERPOLATIONS)}")
        texts = check_sentences([a, b])
        labels = self.predicted_labels(texts)
        mu, _ = self.encode_texts(texts, labels=labels)
        path = latent.interpolate(mu[0], mu[1], steps, method)
        # a conditional model: a's label on the first half of the path, b's on the rest
        names = self._names(labels)
        path_labels = None if names is None else [names[0] if 2 * i < steps - 1 else names[1] for i in range(steps)]
        return self.decode(path, strategy, seed, labels=path_labels, **decode_kwargs)

    def attribute_vectors(self, sentences: Sequence[str], labels: Sequence[str],
                          label_names: Optional[Sequence[str]] = None, info: Optional[dict[str, Any]] = None
                          ) -> latent.Attributes:
        """Mean posterior mean per label (John et al. 2019), stored on this object.

        Args:
            sentences: N sentences.
            labels: N label strings, whatever the label column holds.
            label_names: the label order (default: sorted unique labels).
            info: extra provenance to keep with the vectors (source file, label column...).
        Returns:
            the :class:`textvae.latent.Attributes` now in ``self.attributes``.
        """
        texts = check_sentences(sentences)
        labels = [str(x) for x in labels]
        if len(labels) != len(texts):
            raise InputError(f"{len(texts)} sentences but {len(labels)} labels")
        names = list(label_names) if label_names is not None else sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise InputError(f"unknown label {unknown[0]!r}; known labels: {', '.join(names)}")
        mu, _ = self.encode_texts(texts, refine=False)  # the amortised means, as at training time
        lab = torch.tensor([index[x] for x in labels], device=mu.device)
        means, counts = latent.attribute_vectors(mu, lab, len(names))
        full_info = {"sentences": len(texts), "truncated": self.truncated, "latent_dim": self.latent_dim,
                     "weights_sha256": ckpt.weights_digest(self.model), **(info or {})}
        self.attributes = latent.Attributes(names, means.cpu(), counts.cpu(), full_info)
        return self.attributes

    def transfer(self, sentences: Sentences, source: str, target: str, alpha: Optional[float] = None,
                 method: str = style_transfer.DEFAULT_METHOD, strategy: str = "greedy", seed: int = 0,
                 candidates: int = style_transfer.SEARCH_CANDIDATES, judge: style_transfer.Judge = style_transfer.DEFAULT_JUDGE,
                 samples: int = style_transfer.CLOSEST_SAMPLES, fluency: Optional[float] = style_transfer.DEFAULT_FLUENCY,
                 max_unseen: float = style_transfer.DEFAULT_MAX_UNSEEN, copy_bias: float = style_transfer.DEFAULT_COPY_BIAS,
                 **decode_kwargs: Any) -> list[str]:
        """Rewrite sentences from the ``source`` label's style into the ``target``'s by latent
        arithmetic (the methods, strengths and judges of :mod:`textvae.transfer`; ``alpha`` None:
        the method's default, 0: the reconstruction; ``fluency`` and ``max_unseen``: the fluency
        guard of 'search' and 'closest'; ``copy_bias``: nats added to the logits of each source
        sentence's own tokens while its output is decoded)."""
        return self.transfer_detailed(sentences, source, target, alpha, method, strategy, seed, candidates, judge,
                                      samples, fluency, max_unseen, copy_bias, **decode_kwargs).texts

    def transfer_detailed(self, sentences: Sentences, source: str, target: str, alpha: Optional[float] = None,
                          method: str = style_transfer.DEFAULT_METHOD, strategy: str = "greedy", seed: int = 0,
                          candidates: int = style_transfer.SEARCH_CANDIDATES, judge: style_transfer.Judge = style_transfer.DEFAULT_JUDGE,
                          samples: int = style_transfer.CLOSEST_SAMPLES,
                          fluency: Optional[float] = style_transfer.DEFAULT_FLUENCY,
                          max_unseen: float = style_transfer.DEFAULT_MAX_UNSEEN, copy_bias: float = style_transfer.DEFAULT_COPY_BIAS,
                          **decode_kwargs: Any) -> style_transfer.Transferred:
        """:meth:`transfer`, also returning the strength used for each sentence."""
        opts = style_transfer.Options(method, alpha, strategy, seed, candidates, judge, samples, fluency, max_unseen,
                                      copy_bias)
        alpha = opts.strength()  # an unknown method or a bad alpha fails before the attribute vectors are needed
        attrs = style_transfer.needed_attributes(self, opts, source, target)
        return style_transfer.transfer(self, attrs, check_sentences(sentences), source, target, opts, **decode_kwargs)

    def analogy(self, a: Sentences, b: Sentences, c: Sentences, strategy: str = "greedy", seed: int = 0,
                **decode_kwargs: Any) -> list[str]:
        """a is to b as c is to ?: decodes z_c + (z_b - z_a). With a == b it gives c's reconstruction.

        a, b and c are single sentences or lists of the same length.
        """
        ta, tb, tc = check_sentences(a), check_sentences(b), check_sentences(c)
        if not len(ta) == len(tb) == len(tc):
            raise InputError(f"analogy needs as many a, b and c sentences; got {len(ta)}, {len(tb)}, {len(tc)}")
        n = len(ta)
        mu, _ = self.encode(ta + tb + tc)
        z = latent.analogy(mu[:n], mu[n : 2 * n], mu[2 * n :])
        labels = None
        if self.conditional:  # the label moves as the code does: b's where a's and b's differ, else c's
            la, lb, lc = (self._names(self.predicted_labels(t)) for t in (ta, tb, tc))
            labels = [y_b if y_a != y_b else y_c for y_a, y_b, y_c in zip(la, lb, lc)]
        return self.decode(z, strategy, seed, labels=labels, **decode_kwargs)

    def require_attributes(self) -> latent.Attributes:
        """The attribute vectors, or an error that says how to compute them."""
        if self.attributes is None:
            where = self.path or "DIR"
            data = self.config.data
            column = self.meta.get("label_column") or data.label_column or "COL"
            raise CheckpointError(
                f"{where} has no attribute vectors; compute them with "
                f"`textvae attributes --checkpoint {where} --data {data.train} --label-column {column}`")
        return self.attributes
