"""A small style classifier, and the scores of a style transfer.

The classifier is softmax regression on hashed word unigrams and bigrams, written in torch
(the "bag of n-grams" linear baseline of Joulin et al. 2017, fastText, without the hidden
layer). It trains in seconds on the training file of a checkpoint's config with its label
column, is deterministic for a seed, reports its accuracy on the config's validation file, and
is cached in the checkpoint folder (``style_classifier.safetensors`` + ``.json``) under a key
made of the training file's bytes, the columns and the hyperparameters, so a stale cache is
never reused.

Transfer scores follow the usual triple of the style-transfer literature (Shen et al. 2017;
Li et al. 2018; Luo et al. 2019): style accuracy by the classifier, self-BLEU (BLEU of the
outputs against their sources: content kept), ref-BLEU (against human references, when they
exist), and the geometric mean of accuracy with each BLEU (Xu et al. 2018 use the G-score).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from textvae import checkpoint as ckpt
from textvae.errors import DataError, InputError

if TYPE_CHECKING:
    from textvae.api import TextVAE

log = logging.getLogger("textvae")

CLASSIFIER, CLASSIFIER_INFO = "style_classifier.safetensors", "style_classifier.json"
JUDGE, JUDGE_INFO = "style_judge.safetensors", "style_judge.json"
FEATURES_VERSION = 1  # bump when featurisation changes: cached classifiers are then retrained
_TOKEN = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- features


def ngrams(text: str) -> list[str]:
    """Word unigrams and bigrams (with sentence-boundary markers), case kept: capitals
    (``LORD``) and punctuation are style too."""
    words = _TOKEN.findall(text)
    padded = ["<s>"] + words + ["</s>"]
    return words + [f"{a}\x1f{b}" for a, b in zip(padded, padded[1:])]


def char_ngrams(text: str) -> list[str]:
    """Character 2-, 3- and 4-grams, with start and end markers: the features of the transfer
    judge, chosen to differ from the scorer's word n-grams (see :func:`judge_for`)."""
    t = f"\x02{text}\x03"
    return [t[i : i + n] for n in (2, 3, 4) for i in range(len(t) - n + 1)]


FEATURES = {"word": (ngrams, "word uni+bigrams"), "char": (char_ngrams, "character 2-4-grams")}
"""Feature kinds: n-gram function and description."""
_ROLES = {"word": ("style classifier", CLASSIFIER, CLASSIFIER_INFO), "char": ("style judge", JUDGE, JUDGE_INFO)}
"""Per feature kind: what the classifier is for, and its (weights, info) files in a checkpoint."""


def featurize(texts: Sequence[str], buckets: int, features: str = "word"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hashed, L2-normalised binary n-gram features in ``nn.EmbeddingBag`` form.

    crc32 (not Python's salted ``hash``) makes the bucket of an n-gram the same in every process.

    Returns:
        indices (M,), offsets (N,), per_sample_weights (M,): row i owns
        indices[offsets[i]:offsets[i+1]], each weighted 1/sqrt(its number of features).
    """
    grams = FEATURES[features][0]
    indices: list[int] = []
    weights: list[float] = []
    offsets: list[int] = []
    for text in texts:
        feats = sorted({zlib.crc32(g.encode("utf-8")) % buckets for g in grams(text)})
        offsets.append(len(indices))
        indices += feats
        weights += [1.0 / math.sqrt(len(feats))] * len(feats) if feats else []
    return (torch.tensor(indices, dtype=torch.long), torch.tensor(offsets, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32))


# --------------------------------------------------------------------------- the classifier


@dataclass
class StyleClassifier:
    """Softmax regression on hashed n-grams: logits = W x + b."""

    labels: list[str]
    weight: torch.Tensor  # (F, K) one row per feature bucket
    bias: torch.Tensor  # (K,)
    info: dict[str, Any] = field(default_factory=dict)
    features: str = "word"  # a key of FEATURES

    @property
    def buckets(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def logits(self, texts: Sequence[str], batch_size: int = 4096) -> torch.Tensor:
        """(N, K) logits."""
        out = []
        for start in range(0, len(texts), batch_size):
            idx, off, w = featurize(texts[start : start + batch_size], self.buckets, self.features)
            out.append(torch.nn.functional.embedding_bag(idx, self.weight, off, mode="sum", per_sample_weights=w)
                       + self.bias)
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, K) class probabilities, columns in the order of ``labels``."""
        return self.logits(texts).softmax(-1)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.logits(texts).argmax(-1).tolist()]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        if not texts:
            return float("nan")
        return sum(p == y for p, y in zip(self.predict(texts), labels)) / len(texts)

    def prob(self, texts: Sequence[str], label: str) -> torch.Tensor:
        """(N,) probability of ``label``."""
        if label not in self.labels:
            raise InputError(f"unknown label {label!r}; the style classifier knows: {', '.join(self.labels)}")
        return self.predict_proba(texts)[:, self.labels.index(label)]


def train_classifier(texts: Sequence[str], labels: Sequence[str], buckets: int = 1 << 18, epochs: int = 3,
                     batch_size: int = 64, lr: float = 0.2, seed: int = 0, features: str = "word") -> StyleClassifier:
    """Fit softmax regression by minibatch Adagrad (Duchi et al. 2011) on sparse gradients:
    each step reads and updates only the feature rows in its batch, so an epoch over 50k
    sentences takes a second or two on a CPU. Deterministic for ``seed``.

    Args:
        texts, labels: N training sentences and their label strings (>= 2 distinct labels).
        buckets: hashed feature space size F.
        epochs, batch_size, lr: optimisation (no explicit penalty: a few epochs from zero
            weights keep them small).
        features: 'word' (uni+bigrams, the scorer's) or 'char' (2-4-grams, the transfer judge's).
    """
    if features not in FEATURES:
        raise InputError(f"unknown classifier features {features!r}; use one of {', '.join(FEATURES)}")
    names = sorted(set(labels))
    if len(names) < 2:
        raise DataError(f"a style classifier needs at least two labels; the data has {names}")
    index = {n: i for i, n in enumerate(names)}
    y = torch.tensor([index[x] for x in labels])
    K = len(names)
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.zeros(buckets, K), torch.zeros(K)
    sq_w, sq_b = torch.zeros(buckets, K), torch.zeros(K)  # Adagrad's sums of squared gradients
    eps = 1e-10
    idx, off, w = featurize(texts, buckets, features)
    lengths = torch.diff(torch.cat([off, torch.tensor([len(idx)])]))
    for _ in range(epochs):
        for batch in torch.randperm(len(texts), generator=g).split(batch_size):
            n = lengths[batch]
            # positions of the batch rows' features in idx/w (a CSR row gather)
            row = torch.repeat_interleave(torch.arange(len(batch)), n)
            pos = off[batch][row] + torch.arange(len(row)) - torch.repeat_interleave(n.cumsum(0) - n, n)
            b_idx, b_w = idx[pos], w[pos]
            start = torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)[:-1]])
            logits = torch.nn.functional.embedding_bag(b_idx, weight, start, mode="sum", per_sample_weights=b_w) + bias
            # d(mean cross-entropy)/d(logits) = (softmax - one-hot) / B
            grad_logits = logits.softmax(-1)
            grad_logits[torch.arange(len(batch)), y[batch]] -= 1.0
            grad_logits /= len(batch)
            rows, inverse = torch.unique(b_idx, return_inverse=True)
            grad_rows = torch.zeros(len(rows), K).index_add_(0, inverse, b_w[:, None] * grad_logits[row])
            sq_w[rows] += grad_rows**2
            weight[rows] -= lr * grad_rows / (sq_w[rows].sqrt() + eps)
            grad_b = grad_logits.sum(0)
            sq_b += grad_b**2
            bias -= lr * grad_b / (sq_b.sqrt() + eps)
    clf = StyleClassifier(names, weight, bias, features=features)
    clf.info = {"model": f"softmax regression on hashed {FEATURES[features][1]} (L2-normalised binary features)",
                "features": features, "buckets": buckets, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                "train_sentences": len(texts), "train_accuracy": clf.accuracy(texts, labels)}
    return clf


# --------------------------------------------------------------------------- labelled data


def read_labelled(source: str, text_column: str, label_column: str, split: str = "train", min_words: int = 1,
                  max_words: int = 0, id_column: Optional[str] = None) -> list[dict[str, Any]]:
    """Rows {text, label, id?, row} of a labelled file, cleaned as for training: whitespace
    normalised, empty rows dropped, word-count filters applied. ``row`` is the position in the file."""
    from textvae.data import column, load_split, normalise_text

    ds = load_split(source, split, text_column, label_column)
    if id_column is not None and id_column not in ds.column_names:
        raise DataError(f"{source}: no column {id_column!r}; columns are: {', '.join(ds.column_names)}")
    ids = column(ds, id_column) if id_column else [None] * len(ds)
    rows = []
    for i, (text, label, key) in enumerate(zip(column(ds, text_column), column(ds, label_column), ids)):
        text = normalise_text(text if isinstance(text, str) else None)
        words = len(text.split())
        if not text or label is None or words < min_words or (max_words and words > max_words):
            continue
        rows.append({"text": text, "label": str(label), "id": key, "row": i})
    return rows


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
    from textvae.data import column, load_split, normalise_text

    rows = [r for r in read_labelled(data, text_column, label_column, split, min_words, max_words, id_column)
            if r["label"] == source_label]
    if not rows:
        raise DataError(f"{data}: no {source_label!r} rows with {min_words}..{max_words or 'any'} words")
    references = None
    if refs:
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
    sources = [r["text"] for r in rows]
    if limit:
        sources = sources[:limit]
        references = None if references is None else references[:limit]
    return sources, references


def _file_key(source: str) -> str:
    p = Path(source)
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    return "name:" + source  # a hub dataset: keyed by its name


# --------------------------------------------------------------------------- cached per checkpoint


def classifier_files(clf: StyleClassifier) -> dict[str, bytes]:
    from safetensors.torch import save

    _, weights, info_name = _ROLES[clf.features]
    tensors = save({"weight": clf.weight.contiguous(), "bias": clf.bias.contiguous()})
    info = {**clf.info, "labels": clf.labels, "tensors_sha256": hashlib.sha256(tensors).hexdigest()}
    return {weights: tensors, info_name: (json.dumps(info, indent=2) + "\n").encode("utf-8")}


def _load_cached(folder: Path, key: dict[str, Any], features: str) -> Optional[StyleClassifier]:
    from safetensors.torch import load

    _, weights, info_name = _ROLES[features]
    try:
        info = json.loads((folder / info_name).read_text(encoding="utf-8"))
        if info.get("key") != key:
            log.info("cached %s is stale (other data or settings): retraining", info_name)
            return None
        raw = (folder / weights).read_bytes()
        if info.get("tensors_sha256") != hashlib.sha256(raw).hexdigest():
            return None
        t = load(raw)
        return StyleClassifier(list(info["labels"]), t["weight"], t["bias"], info, features)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def classifier_for(vae: "TextVAE", seed: int = 0, buckets: int = 1 << 18, refresh: bool = False,
                   features: str = "word") -> StyleClassifier:
    """The style classifier of a checkpoint: trained on its config's training file and label
    column, scored on its validation file, cached in its folder.

    Args:
        vae: the loaded model (only its config, metadata and folder are used).
        refresh: retrain even when a valid cache exists.
        features: 'word' for the scorer of transfers; 'char' for the judge of :func:`judge_for`.
    """
    dc = vae.config.data
    what = _ROLES[features][0]
    label_column = vae.meta.get("label_column") or dc.label_column
    if not label_column:
        raise DataError(f"the checkpoint's config has no data.label_column, so there is nothing to train a "
                        f"{what} on")
    key = {"features": FEATURES_VERSION, "train": dc.train, "train_split": dc.train_split,
           "train_data": _file_key(dc.train), "text_column": dc.text_column, "label_column": label_column,
           "buckets": buckets, "seed": seed}
    if features != "word":
        key["kind"] = features
    folder = vae.path
    if folder is not None and not refresh:
        cached = _load_cached(folder, key, features)
        if cached is not None:
            return cached
    log.info("training the %s on %s (column %r)", what, dc.train, label_column)
    rows = read_labelled(dc.train, dc.text_column, label_column, dc.train_split)
    clf = train_classifier([r["text"] for r in rows], [r["label"] for r in rows], buckets=buckets, seed=seed,
                           features=features)
    clf.info["key"] = key
    clf.info["train_file"] = dc.train
    if dc.valid:
        valid = read_labelled(dc.valid, dc.text_column, label_column, dc.valid_split)
        known = [r for r in valid if r["label"] in clf.labels]
        clf.info["heldout_file"] = dc.valid
        clf.info["heldout_sentences"] = len(known)
        clf.info["heldout_accuracy"] = clf.accuracy([r["text"] for r in known], [r["label"] for r in known])
    log.info("%s: held-out accuracy %s on %s", what, _pct(clf.info.get("heldout_accuracy")), dc.valid)
    if folder is not None:
        try:
            ckpt.write_files(folder, classifier_files(clf))
        except OSError as e:
            log.warning("could not cache the %s in %s: %s", what, folder, e)
    return clf


def judge_for(vae: "TextVAE", refresh: bool = False) -> StyleClassifier:
    """The judge of the 'closest' and 'search' transfers (``judge='char'``): a second classifier
    on the same training data, with character 2-4-grams and another seed, cached as
    ``style_judge.safetensors``. It is not the scorer (word n-grams, :func:`classifier_for`), so
    a transfer chosen by the judge is still scored by a model that did not choose it; both learn
    from the same labelled sentences, so they share that data's view of each style."""
    return classifier_for(vae, seed=1, refresh=refresh, features="char")


# --------------------------------------------------------------------------- transfer scores


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> tuple[float, str]:
    """sacrebleu corpus BLEU (default 13a tokenisation, one reference) and its signature."""
    import sacrebleu

    metric = sacrebleu.BLEU()
    score = metric.corpus_score(list(hyps), [list(refs)])
    return float(score.score), str(metric.get_signature())


@functools.lru_cache(maxsize=1)
def _sentence_metric():
    import sacrebleu

    return sacrebleu.BLEU(effective_order=True)


def sentence_bleu(hyp: str, ref: str) -> float:
    """sacrebleu sentence BLEU (effective order); one metric object serves every call, since
    'closest' scores up to SEARCH_CANDIDATES x (CLOSEST_SAMPLES + 1) candidates per sentence with it."""
    return float(_sentence_metric().sentence_score(hyp, [ref]).score)


def geometric_mean(accuracy: float, bleu: float) -> float:
    """sqrt(accuracy in % x BLEU): the G-score of Xu et al. (2018)."""
    return math.sqrt(max(accuracy, 0.0) * 100.0 * max(bleu, 0.0))


def score_transfer(outputs: Sequence[str], sources: Sequence[str], target: str, clf: StyleClassifier,
                   refs: Optional[Sequence[str]] = None) -> dict[str, Optional[float]]:
    """Accuracy (share classified as ``target``), self-BLEU (outputs vs sources), ref-BLEU and
    the geometric means of accuracy (%) with each BLEU."""
    acc = sum(p == target for p in clf.predict(outputs)) / len(outputs)
    self_b, _ = corpus_bleu(outputs, sources)
    row: dict[str, Optional[float]] = {"accuracy": acc, "self_bleu": self_b, "gm_self": geometric_mean(acc, self_b),
                                       "ref_bleu": None, "gm_ref": None}
    if refs is not None:
        ref_b, _ = corpus_bleu(outputs, refs)
        row["ref_bleu"], row["gm_ref"] = ref_b, geometric_mean(acc, ref_b)
    return row


def evaluate_transfer(vae: "TextVAE", clf: StyleClassifier, sources: Sequence[str], source: str, target: str,
                      refs: Optional[Sequence[str]] = None, method: Optional[str] = None, alpha: Optional[float] = None,
                      sweep: Sequence[float] = (), methods: Sequence[str] = (), seed: int = 0,
                      strategy: str = "greedy", candidates: Optional[int] = None, judge: Optional[str] = None,
                      no_repeat_ngram: int = 0, samples: Optional[int] = None) -> dict[str, Any]:
    """Transfer ``sources`` and score them against the copy baseline (and the references).

    Args:
        vae: the model, with attribute vectors.
        clf: the style classifier.
        sources: sentences in the ``source`` style.
        refs: their human rewrites in the target style, aligned, or None.
        method, alpha: the transfer to report (defaults of :meth:`TextVAE.transfer`).
        sweep: strengths to also report, for each of ``methods`` (default: ``method``); a method
            'search:classifier' or 'closest:latent' names the judge too.
        judge: how 'search' and 'closest' accept a candidate (default ``DEFAULT_JUDGE``; see
            :meth:`TextVAE.transfer`).
        samples: sampled decodes per strength of 'closest' (default ``CLOSEST_SAMPLES``).
        no_repeat_ngram: decoding option of :func:`textvae.generate.decode` (0: off).
    Returns:
        {"rows": [{"system", "method", "alpha", "accuracy", "self_bleu", "ref_bleu", "gm_self",
        "gm_ref", "mean_alpha"}...], "examples": [...], "signature": sacrebleu's, ...}
    """
    from textvae.api import CLOSEST_SAMPLES, DEFAULT_ALPHA, DEFAULT_JUDGE, DEFAULT_TRANSFER, JUDGES, SEARCH_CANDIDATES

    judge = judge or DEFAULT_JUDGE
    for label in (source, target):
        vae.require_attributes().index(label)
        if label not in clf.labels:
            raise InputError(f"unknown label {label!r}; the style classifier knows: {', '.join(clf.labels)}")
    method = method or DEFAULT_TRANSFER
    for m in [method, *methods]:
        name, _, how = m.partition(":")
        if name not in DEFAULT_ALPHA or (how and (name not in ("search", "closest") or how not in JUDGES)):
            raise InputError(f"unknown transfer method {m!r}; use mean-diff, project, search or closest "
                             f"(search and closest may name their judge: search:latent, closest:classifier...)")
    alpha = DEFAULT_ALPHA[method.partition(":")[0]] if alpha is None else alpha
    candidates = candidates or SEARCH_CANDIDATES
    samples = CLOSEST_SAMPLES if samples is None else samples
    sources = list(sources)
    rows = [{"system": "copy (output = input)", "method": None, "alpha": None,
             **score_transfer(sources, sources, target, clf, refs)}]
    if refs is not None:
        rows.append({"system": "reference", "method": None, "alpha": None,
                     **score_transfer(list(refs), sources, target, clf, refs)})

    def run(m: str, a: float, system: str) -> tuple[dict[str, Any], list[str]]:
        name, _, how = m.partition(":")  # 'search:classifier' picks the judge of the search
        out = vae.transfer_detailed(sources, source, target, a, name, strategy=strategy, seed=seed,
                                    candidates=candidates, judge=how or judge, samples=samples,
                                    **({"no_repeat_ngram": no_repeat_ngram} if no_repeat_ngram else {}))
        row = {"system": system, "method": m, "alpha": a, **score_transfer(out.texts, sources, target, clf, refs),
               "mean_alpha": float(out.alphas.mean())}
        return row, out.texts

    vae.encode(sources)  # warns once about sentences too long for the model
    truncated, vae.warn_truncation = vae.truncated, False
    try:
        main_row, outputs = run(method, alpha, "textvae transfer")
        rows.append(main_row)
        sweep_rows = []
        for m in (methods or [method]):
            for a in sweep:
                sweep_rows.append(run(m, float(a), "sweep")[0])
    finally:
        vae.warn_truncation = True
    _, signature = corpus_bleu(sources[:1], sources[:1])
    examples = [{"source": s, "output": o, **({"reference": r} if refs is not None else {})}
                for s, o, r in zip(sources, outputs, refs if refs is not None else [None] * len(sources))]
    return {"source_label": source, "target_label": target, "sentences": len(sources), "truncated": truncated,
            "rows": rows,
            "sweep": sweep_rows, "examples": examples, "signature": signature, "classifier": clf.info}


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1f}"


def format_transfer_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of transfer scores."""
    lines = ["| system | method | alpha | style acc. | self-BLEU | ref-BLEU | GM(acc, self-BLEU) | GM(acc, ref-BLEU) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        alpha = "–" if r.get("alpha") is None else f"{r['alpha']:g}"
        if str(r.get("method")).startswith(("search", "closest")) and r.get("mean_alpha") is not None:
            alpha += f" (mean {r['mean_alpha']:.2f})"
        lines.append(f"| {r['system']} | {r.get('method') or '–'} | {alpha} | {_pct(r['accuracy'])} | "
                     f"{_num(r['self_bleu'])} | {_num(r['ref_bleu'])} | {_num(r['gm_self'])} | {_num(r['gm_ref'])} |")
    return "\n".join(lines)


def format_transfer_report(report: dict[str, Any]) -> str:
    """The report of ``textvae evaluate-transfer`` as markdown."""
    c = report["classifier"]
    parts = [
        f"{report['source_label']} -> {report['target_label']}: {report['sentences']} sentences",
        "",
        format_transfer_table(report["rows"]),
    ]
    if report["sweep"]:
        parts += ["", "Strength sweep:", "", format_transfer_table(report["sweep"])]
    parts += [
        "",
        f"style accuracy: share of outputs that the style classifier labels {report['target_label']!r}; "
        f"classifier: {c.get('model')}, {c.get('buckets')} buckets, trained on {c.get('train_file')} "
        f"({c.get('train_sentences')} sentences), held-out accuracy {_pct(c.get('heldout_accuracy'))} on "
        f"{c.get('heldout_file', 'n/a')}",
        "self-BLEU: corpus BLEU of the outputs against their sources; ref-BLEU: against the references; "
        "GM: sqrt(accuracy in % x BLEU)",
        f"sacrebleu signature: {report['signature']}",
    ]
    return "\n".join(parts)
