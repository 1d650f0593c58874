"""The Python API: a trained sentence VAE behind text-in, text-out methods.

    from textvae import TextVAE

    vae = TextVAE.from_pretrained("runs/default")
    vae.reconstruct(["In the beginning God created the heaven and the earth."])
    vae.interpolate("Jesus wept.", "And God said, Let there be light.", steps=5, method="slerp")
    vae.transfer(["And he said unto them, Go ye into the city."], source="kjv", target="web")

The command line (``textvae reconstruct|interpolate|transfer|analogy|attributes``) calls these
same methods. The tensor arithmetic is in ``textvae/latent.py``; reading and writing model
folders is ``textvae/checkpoint.py``'s; decoding is ``textvae/generate.py``'s.
Every method batches its input, takes the device from the model and is deterministic for a
given ``seed`` (only ``strategy="sample"`` uses it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from textvae import checkpoint as ckpt
from textvae import latent
from textvae.config import Config
from textvae.errors import CheckpointError, DataError, InputError
from textvae.model import SentenceVAE
from textvae.tokenizer import Tokenizer

log = logging.getLogger("textvae")

Sentences = Union[str, Sequence[str]]
Judge = Union[str, Callable[[list[str]], torch.Tensor]]

DEFAULT_TRANSFER = "closest"
"""Default transfer method: the best by GM(style accuracy, ref-BLEU) over both directions on the
validation books with the default model (docs/transfer_methods_valid.md). On the first 200
inputs per direction, 'closest' (alpha 3, 10 samples, latent judge) scored 25.7 KJV->WEB and
23.1 WEB->KJV against 19.3 and 17.9 for 'mean-diff' at alpha 2; with the character n-gram judge
and 20 samples it gained about 2 and 3 GM more on the first 300. It decodes 84 candidates per
sentence, so 'mean-diff' stays the fast choice (and the web demo's)."""
DEFAULT_ALPHA = {"mean-diff": 2.0, "project": 2.0, "search": 4.0, "closest": 3.0}
"""Default strength per method, the best of a sweep on the validation books with the default
model; for 'search' and 'closest' it is the largest strength tried."""
JUDGES = ("auto", "char", "latent", "classifier")
DEFAULT_JUDGE = "auto"
"""How 'closest' and 'search' accept a candidate by default: the character n-gram style judge
when the checkpoint's training data (or a cached judge) is at hand, else the latent midpoint
(see :meth:`TextVAE.transfer`)."""
JUDGE_THRESHOLD = 0.7
"""The style judge accepts a candidate whose target-style probability is at least this."""
SEARCH_CANDIDATES = 4
"""Strengths per sentence that 'search' and 'closest' try (alpha/4 ... alpha)."""
CLOSEST_SAMPLES = 20
"""'closest': sampled decodes per strength, besides the one of the chosen strategy. On the
validation books 10 beat 3 (GM 25.7 against 24.0 KJV->WEB, 23.1 against 21.6 WEB->KJV) and,
with the character n-gram judge, 20 beat 10 (25.5 against 24.6, 25.6 against 24.1)."""

# Keys that save_checkpoint writes itself; everything else in config.json is carried over.
_BASE_META = ("format", "version", "saved_at", "config", "vocab_size", "special_tokens", "special_ids",
              "pretrained_configs", "encoder_tokenizer")


@dataclass
class Transferred:
    """Output of :meth:`TextVAE.transfer_detailed`."""

    texts: list[str]
    alphas: torch.Tensor  # (N,) the strength used for each sentence


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
                 meta: Optional[dict[str, Any]] = None, attributes: Optional[ckpt.Attributes] = None,
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
        self._style_judge = None  # the 'char' judge, loaded (or trained) on first use

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

    # ------------------------------------------------------------------ text <-> z

    def encode(self, sentences: Sentences) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of sentences.

        Sentences longer than the model's limit are truncated, counted in ``self.truncated``
        and reported with a warning; an empty sentence is an error.

        Returns:
            mu, logvar: (N, L) float32 on the model's device.
        """
        return self._encode(self._texts(sentences))

    def _encode(self, texts: list[str], warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        from textvae.evaluate import prepare_ids

        if self.model.is_lm:
            raise InputError("this checkpoint is a language model (latent_dim 0): it has no latent space")
        ids, truncated = prepare_ids(self.tokenizer, texts, self.model.cfg.max_len)
        if warn:
            self.truncated = truncated
        if truncated and warn and self.warn_truncation:
            log.warning("%d of %d sentences were longer than the model's limit (%d tokens, bos/eos included) "
                        "and were truncated", truncated, len(texts), self.model.cfg.max_len)
        return latent.posterior_means(self.model, ids, self.tokenizer, self.batch_size)

    def decode(self, z: torch.Tensor, strategy: str = "greedy", seed: int = 0, **decode_kwargs: Any) -> list[str]:
        """Decode codes z (N, L) or (L,) into sentences.

        Args:
            strategy: 'greedy', 'sample' or 'beam' (see ``textvae.generate.decode``; its
                temperature, top_k, top_p, beam_size and max_len pass through).
            seed: random source of 'sample'.
        """
        from textvae.generate import decode

        z = torch.as_tensor(z, dtype=torch.float32)
        if z.dim() == 1:
            z = z[None]
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise InputError(f"z must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        device = self.device
        g = torch.Generator(device=device).manual_seed(seed)
        texts: list[str] = []
        for start in range(0, z.shape[0], self.batch_size):
            out = decode(self.model, z[start : start + self.batch_size].to(device), self.tokenizer.bos_id,
                         self.tokenizer.eos_id, strategy=strategy, generator=g, **decode_kwargs)
            texts += [self.tokenizer.decode(ids) for ids in out.ids]
        return texts

    def sample(self, n: int, seed: int = 0, strategy: str = "sample", top_p: float = 0.9,
               **decode_kwargs: Any) -> list[str]:
        """n sentences decoded from codes drawn from the prior N(0, I)."""
        from textvae.generate import sample

        if n < 1:
            raise InputError("the number of samples must be at least 1")
        texts, _ = sample(self.model, self.tokenizer, n, seed=seed, batch_size=self.batch_size,
                          strategy=strategy, top_p=top_p, **decode_kwargs)
        return texts

    def reconstruct(self, sentences: Sentences, strategy: str = "greedy", seed: int = 0,
                    **decode_kwargs: Any) -> list[str]:
        """Encode to the posterior mean and decode again."""
        mu, _ = self.encode(sentences)
        return self.decode(mu, strategy, seed, **decode_kwargs)

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
        mu, _ = self.encode([a, b])
        path = latent.interpolate(mu[0], mu[1], steps, method)
        return self.decode(path, strategy, seed, **decode_kwargs)

    def attribute_vectors(self, sentences: Sequence[str], labels: Sequence[str],
                          label_names: Optional[Sequence[str]] = None, info: Optional[dict[str, Any]] = None
                          ) -> ckpt.Attributes:
        """Mean posterior mean per label (John et al. 2019), stored on this object.

        Args:
            sentences: N sentences.
            labels: N label strings, whatever the label column holds.
            label_names: the label order (default: sorted unique labels).
            info: extra provenance to keep with the vectors (source file, label column...).
        Returns:
            the :class:`textvae.checkpoint.Attributes` now in ``self.attributes``.
        """
        texts = self._texts(sentences)
        labels = [str(x) for x in labels]
        if len(labels) != len(texts):
            raise InputError(f"{len(texts)} sentences but {len(labels)} labels")
        names = list(label_names) if label_names is not None else sorted(set(labels))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise InputError(f"unknown label {unknown[0]!r}; known labels: {', '.join(names)}")
        mu, _ = self.encode(texts)
        lab = torch.tensor([index[x] for x in labels], device=mu.device)
        means, counts = latent.attribute_vectors(mu, lab, len(names))
        full_info = {"sentences": len(texts), "truncated": self.truncated, "latent_dim": self.latent_dim,
                     "weights_sha256": ckpt.weights_digest(self.model), **(info or {})}
        self.attributes = ckpt.Attributes(names, means.cpu(), counts.cpu(), full_info)
        return self.attributes

    def transfer(self, sentences: Sentences, source: str, target: str, alpha: Optional[float] = None,
                 method: str = DEFAULT_TRANSFER, strategy: str = "greedy", seed: int = 0,
                 candidates: int = SEARCH_CANDIDATES, judge: Judge = DEFAULT_JUDGE, samples: int = CLOSEST_SAMPLES,
                 **decode_kwargs: Any) -> list[str]:
        """Rewrite sentences from the ``source`` label's style into the ``target``'s by latent arithmetic.

        Args:
            alpha: strength (default: ``DEFAULT_ALPHA[method]``); 0 gives the reconstruction.
            method: 'mean-diff' (add target mean - source mean), 'project' (set the coordinate
                along the style axis to the target mean's) or 'search' (try ``candidates``
                strengths up to alpha on the 'project' path, keep the weakest whose output
                ``judge`` accepts as the target style) or 'closest' (decode ``candidates``
                strengths up to alpha on the 'mean-diff' path, each once with ``strategy`` and
                ``samples`` times by nucleus sampling; of the outputs ``judge`` accepts, keep the
                one with the highest sentence BLEU against the source; when none is accepted,
                the ``strategy`` output at full strength).
            judge: for 'search' and 'closest': 'char' (the style judge of
                :func:`textvae.style.judge_for`, a character n-gram classifier trained on the
                config's training data, not the scorer: accepted when it gives the target at least
                ``JUDGE_THRESHOLD``), 'latent' (re-encode the output: accepted when its posterior
                mean lies past the midpoint of the two attribute vectors along the style axis; it
                needs no data), 'auto' ('char' when the training data can be read or the judge is
                cached in the checkpoint, else 'latent'), 'classifier' (the scorer of
                ``textvae/style.py``, so its accuracy is optimistic) or a function from texts to
                a (N,) bool tensor.
        """
        return self.transfer_detailed(sentences, source, target, alpha, method, strategy, seed, candidates, judge,
                                      samples, **decode_kwargs).texts

    def transfer_detailed(self, sentences: Sentences, source: str, target: str, alpha: Optional[float] = None,
                          method: str = DEFAULT_TRANSFER, strategy: str = "greedy", seed: int = 0,
                          candidates: int = SEARCH_CANDIDATES, judge: Judge = DEFAULT_JUDGE,
                          samples: int = CLOSEST_SAMPLES, **decode_kwargs: Any) -> Transferred:
        """:meth:`transfer`, also returning the strength used for each sentence."""
        if method not in latent.TRANSFER_METHODS:
            raise InputError(f"unknown transfer method {method!r}; use one of {', '.join(latent.TRANSFER_METHODS)}")
        alpha = DEFAULT_ALPHA[method] if alpha is None else float(alpha)
        if not alpha == alpha or alpha in (float("inf"), float("-inf")):
            raise InputError(f"alpha must be a finite number, got {alpha}")
        attrs = self.require_attributes()
        s, t = attrs.vector(source).to(self.device), attrs.vector(target).to(self.device)
        if source == target:
            raise InputError(f"the source and target labels are the same ({source!r})")
        texts = self._texts(sentences)
        mu, _ = self._encode(texts)
        if method not in ("search", "closest"):
            z = latent.transfer(mu, s, t, alpha, method)
            return Transferred(self.decode(z, strategy, seed, **decode_kwargs), torch.full((len(mu),), alpha))
        if candidates < 1:
            raise InputError("--candidates must be at least 1")
        if method == "closest" and alpha == 0:  # no move: the reconstruction, as for every method
            return Transferred(self.decode(mu, strategy, seed, **decode_kwargs), torch.zeros(len(mu)))
        accept = self._judge(judge, s, t, target)
        if method == "closest":
            return self._closest(texts, mu, s, t, alpha, candidates, samples, accept, strategy, seed, **decode_kwargs)
        codes, alphas = latent.search_candidates(mu, s, t, alpha, candidates, base="project")
        chosen_texts: list[Optional[str]] = [None] * len(mu)
        chosen = torch.full((len(mu),), float(alphas[-1]))
        open_rows = list(range(len(mu)))
        for k in range(candidates):  # weakest first; only undecided sentences are decoded again
            outs = self.decode(codes[k, open_rows], strategy, seed, **decode_kwargs)
            last = k == candidates - 1
            ok = torch.zeros(len(outs), dtype=torch.bool) if last else accept(outs).cpu()
            still = []
            for row, text, good in zip(open_rows, outs, ok.tolist()):
                if good or last:
                    chosen_texts[row] = text
                    chosen[row] = float(alphas[k])
                else:
                    still.append(row)
            open_rows = still
            if not open_rows:
                break
        return Transferred([x or "" for x in chosen_texts], chosen)

    def _closest(self, sources: list[str], mu: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                 alpha: float, candidates: int, samples: int, accept: Callable[[list[str]], torch.Tensor],
                 strategy: str, seed: int, **decode_kwargs: Any) -> Transferred:
        """The 'closest' transfer: of the accepted candidates, the one nearest the source text."""
        from textvae.style import sentence_bleu

        if samples < 0:
            raise InputError("--samples must be at least 0")
        codes, alphas = latent.search_candidates(mu, source, target, alpha, candidates, base="mean-diff")
        sampling = {k: v for k, v in decode_kwargs.items() if k != "beam_size"}
        n = len(mu)
        texts: list[Optional[str]] = [None] * n
        best = [float("-inf")] * n
        chosen = torch.full((n,), float(alphas[-1]))
        for k in range(candidates):
            for d in range(samples + 1):
                if d == 0:
                    outs = self.decode(codes[k], strategy, seed, **decode_kwargs)
                else:
                    outs = self.decode(codes[k], "sample", seed + 7919 * d + k, **sampling)
                if k == candidates - 1 and d == 0:
                    fallback = outs
                for i, (text, ok) in enumerate(zip(outs, accept(outs).tolist())):
                    if not ok:
                        continue
                    score = sentence_bleu(text, sources[i])
                    if score > best[i]:
                        texts[i], best[i], chosen[i] = text, score, float(alphas[k])
        return Transferred([x if x is not None else y for x, y in zip(texts, fallback)], chosen)

    def analogy(self, a: Sentences, b: Sentences, c: Sentences, strategy: str = "greedy", seed: int = 0,
                **decode_kwargs: Any) -> list[str]:
        """a is to b as c is to ?: decodes z_c + (z_b - z_a). With a == b it gives c's reconstruction.

        a, b and c are single sentences or lists of the same length.
        """
        ta, tb, tc = self._texts(a), self._texts(b), self._texts(c)
        if not len(ta) == len(tb) == len(tc):
            raise InputError(f"analogy needs as many a, b and c sentences; got {len(ta)}, {len(tb)}, {len(tc)}")
        n = len(ta)
        mu, _ = self.encode(ta + tb + tc)
        z = latent.analogy(mu[:n], mu[n : 2 * n], mu[2 * n :])
        return self.decode(z, strategy, seed, **decode_kwargs)

    # ------------------------------------------------------------------ helpers

    def require_attributes(self) -> ckpt.Attributes:
        """The attribute vectors, or an error that says how to compute them."""
        if self.attributes is None:
            where = self.path or "DIR"
            data = self.config.data
            column = self.meta.get("label_column") or data.label_column or "COL"
            raise CheckpointError(
                f"{where} has no attribute vectors; compute them with "
                f"`textvae attributes --checkpoint {where} --data {data.train} --label-column {column}`")
        return self.attributes

    def _judge(self, judge: Judge, source: torch.Tensor, target: torch.Tensor, target_label: str
               ) -> Callable[[list[str]], torch.Tensor]:
        if callable(judge):
            return judge
        if judge == "latent":
            u = latent.style_axis(source, target)
            middle = float(((source + target) / 2) @ u)

            def past_midpoint(texts: list[str]) -> torch.Tensor:
                keep = [i for i, x in enumerate(texts) if x.strip()]
                ok = torch.zeros(len(texts), dtype=torch.bool)
                if keep:
                    mu, _ = self._encode([texts[i] for i in keep], warn=False)  # model outputs: no warning
                    ok[keep] = ((mu @ u) > middle).cpu()
                return ok

            return past_midpoint
        if judge in ("char", "auto"):
            from textvae.style import judge_for

            try:
                clf = self._style_judge = self._style_judge or judge_for(self)
                clf.prob([], target_label)  # a label the judge does not know fails here, not on a candidate
            except (DataError, InputError, OSError) as e:
                if judge == "char":
                    raise
                log.warning("no style judge (%s); judging transfers by the latent midpoint instead", e)
                return self._judge("latent", source, target, target_label)
            return lambda texts: clf.prob(texts, target_label) >= JUDGE_THRESHOLD
        if judge == "classifier":
            from textvae.style import classifier_for

            clf = classifier_for(self)
            return lambda texts: torch.tensor([p == target_label for p in clf.predict(texts)])
        raise InputError(f"unknown judge {judge!r}; use one of {', '.join(JUDGES)}")

    @staticmethod
    def _texts(sentences: Sentences) -> list[str]:
        from textvae.data import normalise_text

        if isinstance(sentences, str):
            sentences = [sentences]
        texts = []
        for i, s in enumerate(sentences, start=1):
            if not isinstance(s, str):
                raise InputError(f"sentence {i} is not a string ({type(s).__name__})")
            t = normalise_text(s)
            if not t:
                raise InputError(f"sentence {i} is empty")
            texts.append(t)
        if not texts:
            raise InputError("no sentences given")
        return texts
