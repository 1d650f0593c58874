"""Semi-supervised, label-conditional VAEs: classification against a baseline trained on the
same labelled rows, and conditional samples.

    python scripts/benchmark_semisupervised.py runs/ssvae_0.01 runs/ssvae_0.1 runs/ssvae_1.0 \
        --split valid --samples 200 --out docs/semisupervised.md

Each checkpoint is a model trained with ``--set model.conditional=label`` (and
``data.label_fraction``). For each:

- **classification**: the model's classifier q(y|x) against textvae's n-gram style classifier
  (softmax regression on hashed word uni+bigrams, ``textvae/style.py``) trained on *the same
  labelled rows only*: the rows the model kept its labels for, rebuilt from its config
  (``data.label_fraction`` and ``train.seed``, as training chose them). Both are scored on the
  held-out split's sentences that pass the model's data filters.
- **conditional samples**: ``--samples`` prior samples per label (N(0, I), top-p 0.9, seen words
  when the checkpoint stores them), the share that the scorer (the same n-gram classifier trained
  on every labelled training row: the scorer of ``textvae evaluate-transfer``) assigns to the
  label asked for, distinct-2, eos rate and the share of words never seen in training.

Writes a markdown report (and ``--json``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from textvae import style  # noqa: E402
from textvae.api import TextVAE  # noqa: E402
from textvae.data import load_texts, prepare_split  # noqa: E402
from textvae.evaluate import distinct_n, unseen_word_rate, vocabulary  # noqa: E402
from textvae.train import keep_label_fraction  # noqa: E402


def labelled_training_rows(vae: TextVAE) -> tuple[list[str], list[str], int]:
    """The training rows whose labels the model was trained with: (texts, labels, all rows)."""
    dc, mc = vae.config.data, vae.model.cfg
    corpus, names = prepare_split(dc.train, dc.train_split, vae.tokenizer, mc.max_len, text_column=dc.text_column,
                                  label_column=dc.label_column, min_words=dc.min_words, max_words=dc.max_words,
                                  label_names=vae.label_names, name="train", allow_unlabelled=True)
    corpus = keep_label_fraction(corpus, dc.label_fraction, vae.config.train.seed, dc.train)
    keep = [i for i, y in enumerate(corpus.labels) if y >= 0]
    return [corpus.texts[i] for i in keep], [names[corpus.labels[i]] for i in keep], len(corpus)


def heldout(vae: TextVAE, split: str) -> tuple[list[str], list[str], str]:
    dc = vae.config.data
    source = {"valid": dc.valid, "test": dc.test}[split]
    if not source:
        raise SystemExit(f"the checkpoint's config names no {split} data")
    corpus, names = prepare_split(source, dc.valid_split if split == "valid" else dc.test_split, vae.tokenizer,
                                  vae.model.cfg.max_len, text_column=dc.text_column, label_column=dc.label_column,
                                  min_words=dc.min_words, max_words=dc.max_words, label_names=vae.label_names,
                                  name=split)
    return corpus.texts, [names[y] for y in corpus.labels], source


def run_one(path: str, split: str, n_samples: int, seed: int) -> dict:
    vae = TextVAE.from_pretrained(path)
    if not vae.conditional:
        raise SystemExit(f"{path}: not a label-conditional model (train with --set model.conditional=label)")
    t0 = time.perf_counter()
    texts, labels, n_train = labelled_training_rows(vae)
    base = style.train_classifier(texts, labels, seed=seed)
    ev_texts, ev_labels, source = heldout(vae, split)
    predicted = [r["label"] for r in vae.classify(ev_texts)]
    model_acc = sum(p == y for p, y in zip(predicted, ev_labels)) / len(ev_labels)
    base_acc = base.accuracy(ev_texts, ev_labels)
    scorer = style.classifier_for(vae)
    dc = vae.config.data
    known = vocabulary(load_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words))
    samples = {}
    for label in vae.label_names:
        out, finished = vae.sample_detailed(n_samples, seed=seed, label=label, prior="normal")
        samples[label] = {
            "asked_share": sum(p == label for p in scorer.predict(out)) / len(out),
            "distinct_2": distinct_n(out, 2),
            "eos_rate": sum(finished) / len(finished),
            "unseen_words": unseen_word_rate(out, known),
            "examples": out[:5],
        }
    return {"checkpoint": path, "label_fraction": dc.label_fraction, "labelled_rows": len(texts),
            "training_rows": n_train, "heldout": source, "heldout_sentences": len(ev_texts),
            "model_accuracy": model_acc, "baseline_accuracy": base_acc,
            "scorer_heldout_accuracy": scorer.info.get("heldout_accuracy"), "samples": samples,
            "seconds": time.perf_counter() - t0}


def report(results: list[dict], split: str, n_samples: int) -> str:
    lines = ["| checkpoint | labelled rows | q(y|x) accuracy | baseline (same rows) accuracy |",
             "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['checkpoint']} | {r['labelled_rows']} of {r['training_rows']} "
                     f"({100 * r['labelled_rows'] / r['training_rows']:.1f}%) | {100 * r['model_accuracy']:.1f}% | "
                     f"{100 * r['baseline_accuracy']:.1f}% |")
    lines += ["", f"Held-out: {results[0]['heldout']} ({results[0]['heldout_sentences']} sentences, split {split}).",
              "", f"Conditional samples ({n_samples} per label, N(0, I), top-p 0.9): share the scorer assigns to "
              "the label asked for, distinct-2, eos, unseen words.", "",
              "| checkpoint | label | asked-label share | distinct-2 | eos | unseen words |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        for label, s in r["samples"].items():
            lines.append(f"| {r['checkpoint']} | {label} | {100 * s['asked_share']:.1f}% | {s['distinct_2']:.2f} | "
                         f"{100 * s['eos_rate']:.0f}% | {100 * s['unseen_words']:.1f}% |")
    for r in results:
        lines += ["", f"Samples of {r['checkpoint']}:", ""]
        for label, s in r["samples"].items():
            lines += [f"- {label}: {x}" for x in s["examples"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--split", choices=("valid", "test"), default="valid")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="markdown file")
    ap.add_argument("--json", help="JSON file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    results = [run_one(p, args.split, args.samples, args.seed) for p in args.checkpoints]
    text = report(results, args.split, args.samples)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
