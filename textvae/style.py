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
from typing import Any, Optional, Protocol, Sequence

import torch

from textvae import checkpoint as ckpt
from textvae.config import Config
from textvae.data import read_labelled
from textvae.errors import DataError, InputError

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


class Labelled(Protocol):
    """A checkpoint whose config names the labelled training data (a :class:`textvae.api.TextVAE`)."""

    config: Config
    meta: dict[str, Any]
    path: Optional[Path]


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


def classifier_for(vae: Labelled, seed: int = 0, buckets: int = 1 << 18, refresh: bool = False,
                   features: str = "word") -> StyleClassifier:
    """The style classifier of a checkpoint: trained on its config's training file and label
    column, scored on its validation file, cached in its folder.

    Args:
        vae: the checkpoint (only its config, metadata and folder are used).
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


def judge_for(vae: Labelled, refresh: bool = False) -> StyleClassifier:
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


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1f}"


def _secs(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def format_transfer_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of transfer scores."""
    lines = ["| system | method | alpha | style acc. | self-BLEU | ref-BLEU | GM(acc, self-BLEU) | GM(acc, ref-BLEU) "
             "| unseen words | s/sentence |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        alpha = "–" if r.get("alpha") is None else f"{r['alpha']:g}"
        if str(r.get("method")).startswith(("search", "closest")) and r.get("mean_alpha") is not None:
            alpha += f" (mean {r['mean_alpha']:.2f})"
        lines.append(f"| {r['system']} | {r.get('method') or '–'} | {alpha} | {_pct(r['accuracy'])} | "
                     f"{_num(r['self_bleu'])} | {_num(r['ref_bleu'])} | {_num(r['gm_self'])} | {_num(r['gm_ref'])} | "
                     f"{_pct(r.get('unseen_words'))} | {_secs(r.get('seconds_per_sentence'))} |")
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
        "GM: sqrt(accuracy in % x BLEU); unseen words: share of the words never seen in the model's training "
        "data; s/sentence: wall-clock seconds per sentence on this machine",
        f"sacrebleu signature: {report['signature']}",
    ]
    return "\n".join(parts)
