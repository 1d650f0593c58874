"""Style transfer: the methods, their defaults, their candidates, their judges, and the choice.

Every method moves a sentence's posterior mean along the axis between two attribute vectors
(the mean posterior mean of each label's sentences, John et al. 2019; the difference of class
means is the transfer direction of Shen et al. 2020) and decodes the result:

    mean-diff   z + alpha (target - source)                 one decode per sentence
    project     set z's coordinate on the axis to the target mean's, times alpha
    search      'project' at alpha/n ... alpha; the weakest strength whose output the judge accepts
    closest     'mean-diff' at alpha/n ... alpha, each decoded once with the chosen strategy and
                ``samples`` times by nucleus sampling; of the outputs the judge accepts, the one
                with the highest sentence BLEU against the source
    relabel     a label-conditional model only (Kingma et al. 2014): z encoded under the source
                label, decoded with the target label (plus alpha (target - source), default 0)

A label-conditional model encodes every input under the source label and decodes every
candidate of every method with the target label.

``copy_bias`` (default DEFAULT_COPY_BIAS) adds that many nats to the logits of the source
sentence's own tokens at every decoding step of every method: the code says what to write and in
which style, the bias makes the decoder prefer the source's words where the code leaves the choice
open. z carries only part of a sentence, so from the code alone a transfer keeps the topic and
loses the details; with the bias the decoder keeps more of the words that both styles share. A
token's bonus lasts as many uses as the source has of it, then it is spent: the bias cannot make
the decoder loop on a source word ("Sweet! thou! Sweet! ... Sweet!"). 0 decodes from the code
alone; at strength 0 no method adds it (the output is the reconstruction).

'search' and 'closest' choose among candidates, and a fluency guard decides which may be chosen
besides the judge: a candidate with more than ``max_unseen`` of its words never seen in training,
or whose per-token likelihood under the model (given the code it was decoded from) is more than
``fluency`` nats below that of the input sentence under its own code, is not chosen. The input is
a real sentence of the source style, so the model's score of it is what fluent text scores at
that length and content, for this model, on any corpus.

The tensor arithmetic is :mod:`textvae.latent`'s; the style classifiers (scorer and judge) and
the scores are :mod:`textvae.style`'s; this module decides which candidates to decode, how to
judge them and which to keep, and runs the scored evaluation behind ``textvae
evaluate-transfer``. It works on any object that can encode texts and decode codes (the
:class:`Codec` protocol, which :class:`textvae.api.TextVAE` implements).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import torch

from textvae import latent, style
from textvae.config import Config
from textvae.errors import DataError, InputError
from textvae.generate import ROW_TABLES

log = logging.getLogger("textvae")

METHODS = ("mean-diff", "project", "search", "closest", "relabel")
DEFAULT_METHOD = "closest"
"""The default method: the best by GM(style accuracy, ref-BLEU) in both directions on the
validation books with the default model (docs/transfer_methods_valid.md). It decodes
SEARCH_CANDIDATES x (CLOSEST_SAMPLES + 1) candidates per sentence, so 'mean-diff' (one decode)
is the fast choice and the web demo's."""
DEFAULT_ALPHA = {"mean-diff": 2.0, "project": 2.0, "search": 4.0, "closest": 3.0, "relabel": 0.0}
"""Default strength per method, the best of a sweep on the validation books with the default
model; for 'search' and 'closest' it is the largest strength tried."""
JUDGES = ("auto", "char", "latent", "classifier")
DEFAULT_JUDGE = "auto"
"""How 'closest' and 'search' accept a candidate by default: the character n-gram style judge
when the checkpoint's training data (or a cached judge) is at hand, else the latent midpoint."""
JUDGE_THRESHOLD = 0.7
"""The style judge accepts a candidate whose target-style probability is at least this."""
SEARCH_CANDIDATES = 4
"""Strengths per sentence that 'search' and 'closest' try (alpha/4 ... alpha)."""
CLOSEST_SAMPLES = 20
"""'closest': sampled decodes per strength, besides the one of the chosen strategy (more
samples gave better picks on the validation books, at a cost linear in their number)."""
DEFAULT_FLUENCY = 0.5
"""Fluency guard: a candidate may be at most this many nats per token less likely under the
model than the input sentence under its own code (None: no likelihood guard)."""
DEFAULT_MAX_UNSEEN = 0.0
"""Fluency guard: the largest share of a candidate's words never seen in training (1: no guard)."""
DEFAULT_COPY_BIAS = 4.0
"""Nats added to the logits of the source's tokens: the best of 0, 2, 4 and 6 for 'closest' on the
validation books with the default model (GM(accuracy, ref-BLEU) 28.3 / 30.4 at 0, 40.2 / 42.5 at 4
for KJV->WEB / WEB->KJV; docs/quality.md)."""
_SAMPLE_SEED_STRIDE = 7919  # sampled decode d of strength k uses seed + 7919 d + k

Judge = Union[str, Callable[[list[str]], torch.Tensor]]


class Codec(Protocol):
    """What transfer needs of a model: texts -> posterior means, codes -> texts, and the
    checkpoint's config, metadata and folder (for the style judge)."""

    config: Config
    meta: dict[str, Any]
    path: Optional[Path]
    tokenizer: Any  # the decoder's tokenizer (encode_batch, unk_id): for the copy bias
    judges: dict[str, style.StyleClassifier]  # style judges already loaded, by kind
    truncated: int  # sentences cut to the model's length by the last encode_texts(warn=True)
    warn_truncation: bool  # log a warning when encode_texts truncates

    def encode_texts(self, texts: list[str], warn: bool = True, refine: bool = True) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor, strategy: str = "greedy", seed: int | Sequence[int] = 0,
               **decode_kwargs: Any) -> list[str]: ...

    # for the fluency guard (a codec without them is guarded by neither test)
    def token_nll(self, z: torch.Tensor, texts: Sequence[str], labels: Any = None) -> torch.Tensor: ...

    def known_words(self, mode: str = "auto") -> Optional[set[str]]: ...


@dataclass
class Transferred:
    """Outputs of :func:`transfer`."""

    texts: list[str]
    alphas: torch.Tensor  # (N,) the strength used for each sentence


@dataclass(frozen=True)
class Options:
    """How to transfer: method, strength, decoding, and for 'search'/'closest' the candidates and judge."""

    method: str = DEFAULT_METHOD
    alpha: Optional[float] = None  # None: DEFAULT_ALPHA[method]
    strategy: str = "greedy"
    seed: int = 0
    candidates: int = SEARCH_CANDIDATES
    judge: Judge = DEFAULT_JUDGE
    samples: int = CLOSEST_SAMPLES
    fluency: Optional[float] = DEFAULT_FLUENCY  # nats per token below the input; None: off
    max_unseen: float = DEFAULT_MAX_UNSEEN  # share of unseen words a chosen candidate may have
    copy_bias: float = DEFAULT_COPY_BIAS  # nats added to the logits of the source's tokens (module docstring)

    def strength(self) -> float:
        """The strength to use, checked: a finite number."""
        if self.method not in METHODS:
            raise InputError(f"unknown transfer method {self.method!r}; use one of {', '.join(METHODS)}")
        alpha = DEFAULT_ALPHA[self.method] if self.alpha is None else float(self.alpha)
        if not alpha == alpha or alpha in (float("inf"), float("-inf")):
            raise InputError(f"alpha must be a finite number, got {alpha}")
        return alpha


def check_labels(attrs: latent.Attributes, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two attribute vectors; an unknown label, or the same label twice, is an error."""
    s, t = attrs.vector(source), attrs.vector(target)
    if source == target:
        raise InputError(f"the source and target labels are the same ({source!r})")
    return s, t


def needed_attributes(codec: Any, opts: Options, source: str, target: str) -> Optional[latent.Attributes]:
    """The attribute vectors a transfer needs, its labels checked: None for 'relabel' at strength 0
    (which needs only a conditional model that knows both labels)."""
    if opts.method == "relabel":
        check_conditional(codec)
    if getattr(codec, "conditional", False):
        codec.label_index(source, "--from")
        codec.label_index(target, "--to")
    if opts.method == "relabel" and opts.strength() == 0:
        if source == target:
            raise InputError(f"the source and target labels are the same ({source!r})")
        return None
    attrs = codec.require_attributes()
    check_labels(attrs, source, target)
    return attrs


def check_conditional(codec: Any) -> None:
    if not getattr(codec, "conditional", False):
        raise InputError("--method relabel needs a label-conditional model (trained with --set "
                         "model.conditional=label); this one is unconditional: use mean-diff, project, search or closest")


def transfer(codec: Codec, attrs: Optional[latent.Attributes], texts: list[str], source: str, target: str,
             opts: Options = Options(), **decode_kwargs: Any) -> Transferred:
    """Rewrite ``texts`` (normalised, non-empty) from the ``source`` label's style into the ``target``'s.

    Args:
        codec: the model (see :class:`Codec`).
        attrs: the attribute vectors.
        opts: method, strength, decoding and judge; ``opts.judge`` is 'char' (the style judge of
            :func:`textvae.style.judge_for`, accepted at probability >= JUDGE_THRESHOLD),
            'latent' (the re-encoded output lies past the midpoint of the two attribute vectors;
            needs no data), 'auto' ('char' when it can be had, else 'latent'), 'classifier' (the
            scorer itself: optimistic) or a function from texts to a (N,) bool tensor.
        decode_kwargs: passed to :func:`textvae.generate.decode` (top_p, beam_size, no_repeat_ngram...).
    """
    alpha = opts.strength()
    if opts.method in ("search", "closest") and opts.candidates < 1:
        raise InputError("--candidates must be at least 1")
    if opts.method == "closest" and opts.samples < 0:
        raise InputError("--samples must be at least 0")
    if opts.fluency is not None and not 0 <= opts.fluency < float("inf"):
        raise InputError(f"--fluency must be a number of nats >= 0 (or 'off'), got {opts.fluency}")
    if not 0 <= opts.max_unseen <= 1:
        raise InputError(f"--max-unseen must be a share between 0 and 1, got {opts.max_unseen}")
    if not 0 <= opts.copy_bias < float("inf"):
        raise InputError(f"--copy-bias must be a number of nats >= 0, got {opts.copy_bias}")
    if opts.method == "relabel":
        check_conditional(codec)
    seeds = sentence_seeds(texts, opts.seed)  # a sentence's output does not depend on its batch
    if getattr(codec, "conditional", False):
        # Kingma et al. 2014: z from q(z|x, y = source); every candidate decoded with y = target
        mu, _ = codec.encode_texts(texts, labels=source)
        decode_kwargs = {**decode_kwargs, "labels": target}
    else:
        mu, _ = codec.encode_texts(texts)
    if opts.copy_bias > 0 and alpha != 0:
        bias, budget = copy_bias(codec, texts, opts.copy_bias)
        decode_kwargs = {**decode_kwargs, "token_bias": bias, "token_budget": budget}
    if opts.method == "relabel" and alpha == 0:
        return Transferred(codec.decode(mu, opts.strategy, seeds, **decode_kwargs), torch.zeros(len(mu)))
    if attrs is None:
        raise InputError(f"the {opts.method} transfer at strength {alpha:g} needs attribute vectors")
    s, t = check_labels(attrs, source, target)
    device = _device_of(codec)
    s, t = s.to(device), t.to(device)
    if opts.method in ("mean-diff", "project", "relabel"):
        # (relabel at alpha != 0: the relabelled code also moved along the attribute vectors)
        z = latent.transfer(mu, s, t, alpha, "mean-diff" if opts.method == "relabel" else opts.method)
        return Transferred(codec.decode(z, opts.strategy, seeds, **decode_kwargs), torch.full((len(mu),), alpha))
    if opts.method == "closest" and alpha == 0:  # no move: the reconstruction, as for every method
        return Transferred(codec.decode(mu, opts.strategy, seeds, **decode_kwargs), torch.zeros(len(mu)))
    judge = make_judge(codec, opts.judge, s, t, target)
    guard = make_guard(codec, opts, texts, mu, source if getattr(codec, "conditional", False) else None,
                       decode_kwargs.get("labels"), decode_kwargs.get("words", "auto"))

    def accept(outs: list[str], z: torch.Tensor, rows: Sequence[int],
               worth: Optional[Callable[[int, str], bool]] = None) -> torch.Tensor:
        """judge, then guard; the guard scores only what the judge took (and ``worth`` keeps)."""
        ok = judge(outs).cpu()
        if guard is None:
            return ok
        keep = [i for i, x in enumerate(ok.tolist()) if x and (worth is None or worth(i, outs[i]))]
        out = torch.zeros(len(outs), dtype=torch.bool)
        if keep:
            out[keep] = guard([outs[i] for i in keep], z[keep], [rows[i] for i in keep])
        return out

    if opts.method == "closest":
        return _closest(codec, texts, mu, s, t, alpha, opts, accept, seeds, **decode_kwargs)
    return _search(codec, mu, s, t, alpha, opts, accept, seeds, **decode_kwargs)


def copy_bias(codec: Codec, texts: Sequence[str], bonus: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (N, V) sparse tables: ``bonus`` on the ids of each text's own tokens (its unknown pieces
    excepted), and how many times each occurs in the text (the bias's budget: see
    :func:`textvae.generate.decode`). Decoding makes each batch's rows dense (a dense table of a
    large file under a large vocabulary would not fit in memory)."""
    tok = codec.tokenizer
    rows, cols, counts = [], [], []
    for i, ids in enumerate(tok.encode_batch(list(texts))):
        uses = Counter(t for t in ids if t != tok.unk_id)
        kept = sorted(uses)
        rows += [i] * len(kept)
        cols += kept
        counts += [float(uses[t]) for t in kept]
    index = torch.tensor([rows, cols], dtype=torch.long).view(2, -1)
    shape = (len(texts), codec.config.model.vocab_size)
    bias = torch.sparse_coo_tensor(index, torch.full((len(rows),), float(bonus)), shape, check_invariants=True)
    budget = torch.sparse_coo_tensor(index, torch.tensor(counts, dtype=torch.float32), shape, check_invariants=True)
    return bias.coalesce(), budget.coalesce()


def _rows(decode_kwargs: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """decode_kwargs for a subset of the sentences (the copy bias and its budget have one row per sentence)."""
    index = torch.tensor(list(rows), dtype=torch.long)
    return {k: v.index_select(0, index) if k in ROW_TABLES and v is not None else v
            for k, v in decode_kwargs.items()}


def sentence_seeds(texts: Sequence[str], seed: int) -> list[int]:
    """One seed per sentence, from ``seed`` and the sentence's text (not its place in the
    batch): the same sentence gets the same sampled decodes alone and beside any others."""
    return [seed + int.from_bytes(hashlib.sha256(x.encode("utf-8", "replace")).digest()[:4], "big") for x in texts]


Accept = Callable[..., torch.Tensor]
"""(candidate texts, the codes they were decoded from, their sentences' rows[, worth]) -> (N,) bool;
``worth(i, text)`` False spares candidate i the fluency guard (it would not be chosen anyway)."""


def _search(codec: Codec, mu: torch.Tensor, s: torch.Tensor, t: torch.Tensor, alpha: float, opts: Options,
            accept: Accept, seeds: list[int], **decode_kwargs: Any) -> Transferred:
    """'search': the weakest strength on the 'project' path whose output is accepted (else the strongest)."""
    codes, alphas = latent.search_candidates(mu, s, t, alpha, opts.candidates, base="project")
    chosen_texts: list[Optional[str]] = [None] * len(mu)
    chosen = torch.full((len(mu),), float(alphas[-1]))
    open_rows = list(range(len(mu)))
    for k in range(opts.candidates):  # weakest first; only undecided sentences are decoded again
        outs = codec.decode(codes[k, open_rows], opts.strategy, [seeds[r] for r in open_rows],
                            **_rows(decode_kwargs, open_rows))
        last = k == opts.candidates - 1
        ok = torch.zeros(len(outs), dtype=torch.bool) if last else accept(outs, codes[k, open_rows], open_rows)
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


def _closest(codec: Codec, sources: list[str], mu: torch.Tensor, s: torch.Tensor, t: torch.Tensor, alpha: float,
             opts: Options, accept: Accept, seeds: list[int], **decode_kwargs: Any) -> Transferred:
    """'closest': of the accepted candidates (judge and fluency guard), the one nearest the source
    text (sentence BLEU); when none is accepted, the ``opts.strategy`` output at full strength."""
    codes, alphas = latent.search_candidates(mu, s, t, alpha, opts.candidates, base="mean-diff")
    sampling = {k: v for k, v in decode_kwargs.items() if k != "beam_size"}
    n = len(mu)
    texts: list[Optional[str]] = [None] * n
    best = [float("-inf")] * n
    chosen = torch.full((n,), float(alphas[-1]))
    fallback: list[str] = []
    for k in range(opts.candidates):
        for d in range(opts.samples + 1):
            if d == 0:
                outs = codec.decode(codes[k], opts.strategy, seeds, **decode_kwargs)
            else:
                outs = codec.decode(codes[k], "sample", [x + _SAMPLE_SEED_STRIDE * d + k for x in seeds], **sampling)
            if k == opts.candidates - 1 and d == 0:
                fallback = outs
            scores = [style.sentence_bleu(text, sources[i]) for i, text in enumerate(outs)]
            # only a candidate that would be chosen needs the fluency guard's likelihood
            ok = accept(outs, codes[k], range(n), lambda i, _: scores[i] > best[i])
            for i, (text, good) in enumerate(zip(outs, ok.tolist())):
                if good and scores[i] > best[i]:
                    texts[i], best[i], chosen[i] = text, scores[i], float(alphas[k])
    return Transferred([x if x is not None else y for x, y in zip(texts, fallback)], chosen)


# --------------------------------------------------------------------------- judges and the fluency guard


def make_guard(codec: Codec, opts: Options, sources: list[str], mu: torch.Tensor, source_label: Optional[str],
               target_labels: Any, words: Any) -> Optional[Accept]:
    """The fluency guard of 'search' and 'closest' (see the module docstring), or None when it
    has nothing to test: a function from (candidates, their codes, their sentences' rows) to (N,) bool.

    The unseen-word test runs when decoding may spell any token sequence (``words='any'``) and
    the training words can be had (``codec.known_words``); the likelihood test scores each
    input under its own code ``mu`` (a conditional model: with ``source_label``) once, and each
    candidate under its code with ``target_labels``.
    """
    from textvae.evaluate import words_of

    known = None  # 'seen' (and 'auto' where the words can be had) decodes only seen words already
    if opts.max_unseen < 1 and words == "any" and hasattr(codec, "known_words"):
        known = codec.known_words("auto")
    scored = opts.fluency is not None and hasattr(codec, "token_nll")
    if known is None and not scored:
        return None
    floor = codec.token_nll(mu, sources, labels=source_label) if scored else None

    def fluent(texts: list[str], z: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        ok = torch.ones(len(texts), dtype=torch.bool)
        if known is not None:
            for i, text in enumerate(texts):
                w = words_of(text)
                ok[i] = not w or sum(x not in known for x in w) <= opts.max_unseen * len(w)
        if floor is not None and bool(ok.any()):
            labels = target_labels
            if labels is not None and not isinstance(labels, (str, int)):
                labels = [list(labels)[r] for r in rows]
            nll = codec.token_nll(z, texts, labels=labels)
            ok &= nll <= floor[list(rows)] + opts.fluency
        return ok

    return fluent


def make_judge(codec: Codec, judge: Judge, source: torch.Tensor, target: torch.Tensor, target_label: str
               ) -> Callable[[list[str]], torch.Tensor]:
    """A function from candidate texts to (N,) bool: is each in the target style? (See :func:`transfer`.)"""
    if callable(judge):
        return judge
    if judge == "latent":
        return _latent_judge(codec, source, target)
    if judge in ("char", "auto"):
        try:
            clf = codec.judges.get("char") or style.judge_for(codec)
            codec.judges["char"] = clf
            clf.prob([], target_label)  # a label the judge does not know fails here, not on a candidate
        except (DataError, InputError, OSError) as e:
            if judge == "char":
                raise
            log.warning("no style judge (%s); judging transfers by the latent midpoint instead", e)
            return _latent_judge(codec, source, target)
        return lambda texts: clf.prob(texts, target_label) >= JUDGE_THRESHOLD
    if judge == "classifier":
        scorer = style.classifier_for(codec)
        return lambda texts: torch.tensor([p == target_label for p in scorer.predict(texts)])
    raise InputError(f"unknown judge {judge!r}; use one of {', '.join(JUDGES)}")


def _latent_judge(codec: Codec, source: torch.Tensor, target: torch.Tensor) -> Callable[[list[str]], torch.Tensor]:
    """Accept a candidate whose re-encoded code lies past the midpoint of the two attribute vectors."""
    u = latent.style_axis(source, target)
    middle = float(((source + target) / 2) @ u)

    def past_midpoint(texts: list[str]) -> torch.Tensor:
        keep = [i for i, x in enumerate(texts) if x.strip()]
        ok = torch.zeros(len(texts), dtype=torch.bool)
        if keep:
            mu, _ = codec.encode_texts([texts[i] for i in keep], warn=False, refine=False)  # outputs: no warning
            ok[keep] = ((mu @ u) > middle).cpu()
        return ok

    return past_midpoint


def _device_of(codec: Codec) -> torch.device:
    return getattr(codec, "device", torch.device("cpu"))


# --------------------------------------------------------------------------- attribute vectors of a corpus


def corpus_attributes(model: Any, corpus: Any, tok: Any, label_names: Sequence[str],
                      info: Optional[dict[str, Any]] = None, mu: Optional[torch.Tensor] = None) -> latent.Attributes:
    """Attribute vectors of a labelled, tokenised corpus (what training stores in its final checkpoint).

    Args:
        model: the VAE; corpus: a :class:`textvae.data.Corpus` with label indices (``corpus.labels``)
            into ``label_names``; tok: the model's tokenizer.
        info: provenance kept with the vectors (source file, label column...).
        mu: the posterior means of every corpus row when already computed (an unconditional
            model's: a conditional one encodes each row under its own label here).
    """
    from textvae.checkpoint import weights_digest
    from textvae.evaluate import posterior_params

    if corpus.labels is None:
        raise ValueError("the corpus has no labels")
    keep = [i for i, y in enumerate(corpus.labels) if y >= 0]  # unlabelled rows (-1) have no say
    ids, labels = [corpus.ids[i] for i in keep], torch.as_tensor([corpus.labels[i] for i in keep])
    if mu is not None and not model.conditional:
        mu = mu[torch.as_tensor(keep, dtype=torch.long)]
    else:  # a conditional model: q(z|x, y) under each row's own label
        mu, _ = posterior_params(model, ids, tok, batch_size=256, labels=labels if model.conditional else None)
    means, counts = latent.attribute_vectors(mu, labels, len(label_names))
    full = {"sentences": len(keep), "latent_dim": model.cfg.latent_dim, "weights_sha256": weights_digest(model),
            **(info or {})}
    return latent.Attributes(list(label_names), means.cpu(), counts.cpu(), full)


def provenance(source: str, split: str, data_config: Any, label_column: str, text_column: Optional[str] = None,
               **extra: Any) -> dict[str, Any]:
    """Where a set of attribute vectors came from (kept in ``attributes.json``)."""
    return {"source": source, "split": split, "text_column": text_column or data_config.text_column,
            "label_column": label_column, "min_words": data_config.min_words, "max_words": data_config.max_words,
            **extra}


# --------------------------------------------------------------------------- scored evaluation


def transfer_inputs(data: str, source_label: str, text_column: str, label_column: str, min_words: int = 1,
                    max_words: int = 0, refs: Optional[str] = None, refs_column: Optional[str] = None,
                    id_column: Optional[str] = None, split: str = "train", limit: int = 0
                    ) -> tuple[list[str], Optional[list[str]]]:
    """Inputs of a transfer evaluation and their references.

    The inputs are the rows of the labelled file ``data`` whose label is ``source_label`` and
    that pass the word-count filters. References come from column ``refs_column`` of the file
    ``refs``: joined on ``id_column`` (present in both files) when given, else the n-th
    reference belongs to the n-th ``source_label`` row of ``data`` (counted before the
    word-count filters). Inputs without a reference are left out, with a warning.

    Returns:
        (sources, references or None), at most ``limit`` of each (0: all).
    """
    from textvae.data import read_labelled

    rows = [r for r in read_labelled(data, text_column, label_column, split, min_words, max_words, id_column)
            if r["label"] == source_label]
    if not rows:
        raise DataError(f"{data}: no {source_label!r} rows with {min_words}..{max_words or 'any'} words")
    references = None
    if refs:
        rows, references = _references(rows, data, source_label, text_column, label_column, refs, refs_column,
                                       id_column, split)
    sources = [r["text"] for r in rows]
    if limit:
        sources = sources[:limit]
        references = None if references is None else references[:limit]
    return sources, references


def _references(rows: list[dict[str, Any]], data: str, source_label: str, text_column: str, label_column: str,
                refs: str, refs_column: Optional[str], id_column: Optional[str], split: str
                ) -> tuple[list[dict[str, Any]], list[str]]:
    from textvae.data import column, load_split, normalise_text, read_labelled

    if not refs_column:
        raise InputError("references need the name of their column")
    ds = load_split(refs, "train", refs_column)
    texts = [normalise_text(t if isinstance(t, str) else None) for t in column(ds, refs_column)]
    if id_column:
        if id_column not in ds.column_names:
            raise DataError(f"{refs}: no column {id_column!r}; columns are: {', '.join(ds.column_names)}")
        by_id = {str(k): t for k, t in zip(column(ds, id_column), texts)}
        kept = [r for r in rows if str(r["id"]) in by_id]
        if len(kept) < len(rows):
            log.warning("%d inputs have no reference with the same %s; they are left out",
                        len(rows) - len(kept), id_column)
        rows = kept
        references = [by_id[str(r["id"])] for r in rows]
    else:
        every = [r for r in read_labelled(data, text_column, label_column, split) if r["label"] == source_label]
        order = {r["row"]: n for n, r in enumerate(every)}
        if len(order) != len(texts):
            raise DataError(f"{data} has {len(order)} {source_label!r} rows but {refs} has {len(texts)} "
                            f"references; align them with --id-column COL")
        references = [texts[order[r["row"]]] for r in rows]
    if not rows:
        raise DataError(f"no input of {data} has a reference in {refs}")
    empty = sum(not t for t in references)
    if empty:
        raise DataError(f"{refs}: {empty} references in column {refs_column!r} are empty")
    return rows, references


def check_method_names(methods: Sequence[str]) -> None:
    """Methods of an evaluation may name their judge ('search:latent', 'closest:classifier')."""
    for m in methods:
        name, _, how = m.partition(":")
        if name not in DEFAULT_ALPHA or (how and (name not in ("search", "closest") or how not in JUDGES)):
            raise InputError(f"unknown transfer method {m!r}; use mean-diff, project, search, closest or relabel "
                             f"(search and closest may name their judge: search:latent, closest:classifier...)")


def evaluate_transfer(codec: Codec, attrs: latent.Attributes, clf: style.StyleClassifier, sources: Sequence[str],
                      source: str, target: str, refs: Optional[Sequence[str]] = None, opts: Options = Options(),
                      sweep: Sequence[float] = (), methods: Sequence[str] = (), **decode_kwargs: Any
                      ) -> dict[str, Any]:
    """Transfer ``sources`` and score them against the copy baseline (and the references).

    Args:
        codec, attrs: the model and its attribute vectors.
        clf: the style classifier that scores (not the judge).
        sources: sentences in the ``source`` style.
        refs: their human rewrites in the target style, aligned, or None.
        opts: the transfer to report (``opts.method`` may name its judge: 'closest:latent').
        sweep: strengths to also report, for each of ``methods`` (default: ``opts.method``).
    Returns:
        {"rows": [{"system", "method", "alpha", "accuracy", "self_bleu", "ref_bleu", "gm_self", "unseen_words",
        "seconds_per_sentence" (wall clock, this machine, the judge's first load included),
        "gm_ref", "mean_alpha"}...], "sweep": [...], "examples": [...], "signature": sacrebleu's, ...}
    """
    for label in (source, target):
        attrs.index(label)
        if label not in clf.labels:
            raise InputError(f"unknown label {label!r}; the style classifier knows: {', '.join(clf.labels)}")
    check_method_names([opts.method, *methods])
    alpha = DEFAULT_ALPHA[opts.method.partition(":")[0]] if opts.alpha is None else opts.alpha
    from textvae.evaluate import unseen_word_rate

    sources = list(sources)
    known = codec.known_words("auto") if hasattr(codec, "known_words") else None

    def unseen(texts: Sequence[str]) -> Optional[float]:
        return None if known is None else unseen_word_rate(texts, known)

    rows = [{"system": "copy (output = input)", "method": None, "alpha": None,
             **style.score_transfer(sources, sources, target, clf, refs), "unseen_words": unseen(sources)}]
    if refs is not None:
        rows.append({"system": "reference", "method": None, "alpha": None,
                     **style.score_transfer(list(refs), sources, target, clf, refs), "unseen_words": unseen(refs)})

    def run(m: str, a: float, system: str) -> tuple[dict[str, Any], list[str]]:
        name, _, how = m.partition(":")
        o = replace(opts, method=name, alpha=a, judge=how or opts.judge)
        start = time.perf_counter()
        out = transfer(codec, attrs, sources, source, target, o, **decode_kwargs)
        seconds = (time.perf_counter() - start) / max(len(sources), 1)
        row = {"system": system, "method": m, "alpha": a,
               **style.score_transfer(out.texts, sources, target, clf, refs), "mean_alpha": float(out.alphas.mean()),
               "unseen_words": unseen(out.texts), "seconds_per_sentence": seconds}
        return row, out.texts

    codec.encode_texts(sources, refine=False)  # warns once about sentences too long for the model
    truncated, codec.warn_truncation = codec.truncated, False
    try:
        main_row, outputs = run(opts.method, alpha, "textvae transfer")
        rows.append(main_row)
        sweep_rows = [run(m, float(a), "sweep")[0] for m in (methods or [opts.method]) for a in sweep]
    finally:
        codec.warn_truncation = True
    _, signature = style.corpus_bleu(sources[:1], sources[:1])
    examples = [{"source": s, "output": o, **({"reference": r} if refs is not None else {})}
                for s, o, r in zip(sources, outputs, refs if refs is not None else [None] * len(sources))]
    return {"source_label": source, "target_label": target, "sentences": len(sources), "truncated": truncated,
            "rows": rows, "sweep": sweep_rows, "examples": examples, "signature": signature, "classifier": clf.info}


def evaluate_checkpoint(vae: Any, source: str, target: str, opts: Options = Options(), data: Optional[str] = None,
                        split: str = "train", label_column: Optional[str] = None, text_column: Optional[str] = None,
                        max_words: Optional[int] = None, refs: Optional[str] = None, refs_column: Optional[str] = None,
                        id_column: Optional[str] = None, limit: int = 0, sweep: Sequence[float] = (),
                        methods: Sequence[str] = (), **decode_kwargs: Any) -> dict[str, Any]:
    """``textvae evaluate-transfer``: :func:`evaluate_transfer` on the ``source`` rows of a
    labelled file (default: the checkpoint config's test file), scored by the checkpoint's style
    classifier (:func:`textvae.style.classifier_for`), with references from ``refs`` when given."""
    attrs = vae.require_attributes()
    attrs.index(source), attrs.index(target)
    dc = vae.config.data
    data = data or dc.test
    if not data:
        raise InputError("the checkpoint's config names no test data; give --data FILE")
    label_column = label_column or vae.meta.get("label_column") or dc.label_column
    if not label_column:
        raise InputError("give --label-column COL (the checkpoint's config names no label column)")
    if refs and not refs_column:
        raise InputError("--refs needs --refs-column COL (the column of the references)")
    if limit < 0 or (max_words is not None and max_words < 0):
        raise InputError("--limit and --max-words must be >= 0")
    max_words = dc.max_words if max_words is None else max_words
    sources, references = transfer_inputs(data, source, text_column or dc.text_column, label_column, dc.min_words,
                                          max_words, refs=refs, refs_column=refs_column, id_column=id_column,
                                          split=split, limit=limit)
    clf = style.classifier_for(vae, seed=opts.seed)
    report = evaluate_transfer(vae, attrs, clf, sources, source, target, references, opts, sweep, methods,
                               **decode_kwargs)
    report.update({"checkpoint": str(vae.path), "data": data, "refs": refs, "refs_column": refs_column,
                   "label_column": label_column, "min_words": dc.min_words, "max_words": max_words})
    return report


def score_outputs(vae: Any, records: list[dict[str, Any]], target: str, seed: int = 0) -> list[dict[str, Any]]:
    """Add the scorer's verdict on each transfer record {source, output}: target_prob,
    in_target_style and the sentence BLEU of the output against its source (self_bleu)."""
    clf = style.classifier_for(vae, seed=seed)
    outputs = [r["output"] for r in records]
    for r, p, label in zip(records, clf.prob(outputs, target).tolist(), clf.predict(outputs)):
        r["target_prob"] = round(p, 4)
        r["in_target_style"] = label == target
        r["self_bleu"] = round(style.sentence_bleu(r["output"], r["source"]), 2)
    return records


def compute_attributes(vae: Any, data: str, split: str = "train", label_column: Optional[str] = None,
                       text_column: Optional[str] = None) -> latent.Attributes:
    """Attribute vectors of a labelled file, with the training pipeline's filters (so they match
    those training stores), written into the checkpoint folder (only the two attribute files,
    each atomically) and set on ``vae``."""
    from textvae import checkpoint as ckpt
    from textvae.data import prepare_split

    dc = vae.config.data
    label_column = label_column or vae.meta.get("label_column") or dc.label_column
    if not label_column:
        raise InputError("give --label-column COL (the checkpoint's config names no label column)")
    text_column = text_column or dc.text_column
    corpus, names = prepare_split(data, split, vae.tokenizer, vae.model.cfg.max_len, text_column=text_column,
                                  label_column=label_column, min_words=dc.min_words, max_words=dc.max_words,
                                  name="attributes")
    if len(names) < 2:
        log.warning("the data holds a single label (%s): transfer needs at least two", ", ".join(names))
    attrs = corpus_attributes(vae.model, corpus, vae.tokenizer, names,
                              provenance(data, split, dc, label_column, text_column))
    ckpt.write_files(vae.path, ckpt.attribute_files(attrs))
    vae.attributes = attrs
    return attrs
