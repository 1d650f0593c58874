"""Prior samples of one or more checkpoints at several z temperatures: how they read, how much they vary.

    python scripts/benchmark_samples.py --lm runs/lm_all runs/default --temperatures 1,0.9,0.8,0.7
    python scripts/benchmark_samples.py --lm runs/lm_all runs/default runs/other -n 600 --out samples.md

Each row draws ``-n`` sentences as ``textvae sample`` does by default (the fitted prior when the
checkpoint has one, only words seen in training, top-p 0.9), with the prior's noise scaled by the z
temperature (``textvae sample --z-temperature``), and reports:

- fluency: the exact NLL per token (eos counted) of the samples under ``--lm``, a language model of
  the same data that never saw z (lower reads more like the corpus to it; real held-out sentences
  give the level to compare with, printed once per LM);
- distinct-2 and self-BLEU (how much the samples vary), the share ending in eos, mean length,
  the share copied verbatim from the training data and of words never seen in training;
- the first five samples.

With ``--labels``, a checkpoint trained on labelled data also gets one row per label, its samples
drawn as ``textvae sample --label`` draws them (a model that is not label-conditional: from the
prior fitted to that label's training codes), and every row is read by the checkpoint's style
classifier (the transfer scorer, ``textvae.style.classifier_for``): a label row reports the share
of its samples classified as that label and their mean probability of it; a row without a label
reports the share of each label and the mean probability of the most likely one (a sample that
changes style halfway scores lower).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint or run folders")
    p.add_argument("--lm", required=True, help="the language-model baseline (model.latent_dim=0) that judges fluency")
    p.add_argument("--temperatures", default="1,0.9,0.8,0.7", help="comma-separated z temperatures")
    p.add_argument("-n", type=int, default=200, help="samples per row (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", default="auto", choices=("auto", "normal", "fitted"))
    p.add_argument("--split", default="valid", choices=("valid", "test"),
                   help="held-out split whose real sentences give the fluency to compare with")
    p.add_argument("--max-words", type=int, default=25, help="real sentences of at most this many words (0: all)")
    p.add_argument("--labels", action="store_true",
                   help="also a row per label (textvae sample --label), all rows read by the style classifier")
    p.add_argument("--out", help="markdown report (default: print)")
    p.add_argument("--json", help="also write the figures as JSON")
    args = p.parse_args()

    from textvae.errors import TextVAEError
    from textvae.generate import MAX_Z_TEMPERATURE

    try:
        temperatures = [float(x) for x in args.temperatures.split(",") if x.strip()]
    except ValueError:
        p.error(f"--temperatures: expected comma-separated numbers, got {args.temperatures!r}")
    if not temperatures or any(not 0 < t <= MAX_Z_TEMPERATURE for t in temperatures) or args.n < 1:
        p.error(f"--temperatures must be numbers in (0, {MAX_Z_TEMPERATURE:g}] and -n at least 1")
    try:
        rows = run(args, temperatures)
    except TextVAEError as e:
        print(f"benchmark_samples: error: {e}", file=sys.stderr)
        return 2
    write(args, rows)
    return 0


def run(args: argparse.Namespace, temperatures: list[float]) -> list[dict]:
    from textvae import TextVAE
    from textvae import checkpoint as ckpt
    from textvae.data import load_texts
    from textvae.evaluate import distinct_n, lm_nll_per_token, self_bleu, unseen_word_rate, vocabulary
    from textvae.style import classifier_for

    lm = ckpt.load_pretrained(args.lm)
    judge = (lm.model, lm.tokenizer)
    rows, train_cache = [], {}
    for path in args.checkpoints:
        vae = TextVAE.from_pretrained(path)
        dc = vae.config.data
        if dc.train not in train_cache:
            texts = load_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
            train_cache[dc.train] = (set(texts), vocabulary(texts))
        train_set, known = train_cache[dc.train]
        held = getattr(dc, args.split)
        split_name = dc.valid_split if args.split == "valid" else dc.test_split
        real = load_texts(held, split_name, dc.text_column, dc.min_words, args.max_words) if held else []
        real_nll = lm_nll_per_token(judge, real[: args.n * 5]) if real else None
        labels = vae.label_names if args.labels else []
        clf = classifier_for(vae) if labels else None
        for tau, label in [(t, y) for t in temperatures for y in [None, *labels]]:
            t0 = time.time()
            texts, finished = vae.sample_detailed(args.n, seed=args.seed, prior=args.prior, z_temperature=tau,
                                                  label=label)
            n = len(texts)
            rows.append({
                "checkpoint": path, "z_temperature": tau, "n": n, "prior": args.prior, "label": label,
                "style": None if clf is None else style_figures(clf, texts, label),
                "lm_nll_per_token": lm_nll_per_token(judge, texts), "real_lm_nll_per_token": real_nll,
                "distinct_2": distinct_n(texts, 2), "self_bleu": self_bleu(texts), "eos_rate": sum(finished) / n,
                "mean_words": sum(len(t.split()) for t in texts) / n,
                "copied_rate": sum(t in train_set for t in texts) / n,
                "unseen_words": unseen_word_rate(texts, known), "seconds": time.time() - t0, "examples": texts[:5],
            })
            real = "-" if real_nll is None else f"{real_nll:.3f}"
            print(f"{path}{'' if label is None else ', label ' + label} z temperature {tau:g}: fluency {rows[-1]['lm_nll_per_token']:.3f} (real {real}), "
                  f"distinct-2 {rows[-1]['distinct_2']:.3f}", file=sys.stderr)
    return rows


def style_figures(clf, texts: list[str], label) -> dict:
    """The style classifier's reading of samples: for a label's samples the share classified as it
    and their mean probability of it; otherwise the share of each label and the mean probability
    of the most likely one."""
    probs = clf.predict_proba(texts)
    if label is not None:
        col = probs[:, clf.labels.index(label)]
        return {"accuracy": float((probs.argmax(-1) == clf.labels.index(label)).float().mean()),
                "mean_prob": float(col.mean())}
    share = torch.bincount(probs.argmax(-1), minlength=len(clf.labels)).float() / len(texts)
    return {"shares": dict(zip(clf.labels, share.tolist())), "mean_top_prob": float(probs.max(-1).values.mean())}


def style_cell(style) -> str:
    if style is None:
        return "-"
    if "accuracy" in style:
        return f"{100 * style['accuracy']:.1f}% as the label (p {style['mean_prob']:.2f})"
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in style["shares"].items())
    return f"{shares} (top p {style['mean_top_prob']:.2f})"


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    command = "python scripts/benchmark_samples.py " + " ".join(sys.argv[1:])
    lengths = f"of at most {args.max_words} words" if args.max_words else "of any length"
    lines = [f"Reproduce with `{command}`. {args.n} prior samples per row (prior {args.prior}, seen words, top-p 0.9, "
             f"seed {args.seed}); fluency: NLL per token (eos counted) under `{args.lm}`, which never saw z; "
             f"real: the same for the first {args.n * 5} {args.split} sentences {lengths}.", "",
             "| checkpoint | label | z temperature | fluency (real) | distinct-2 | self-BLEU | eos | mean words "
             "| copied | unseen words | style classifier |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        real = f" ({r['real_lm_nll_per_token']:.2f})" if r["real_lm_nll_per_token"] is not None else ""
        lines.append(f"| {r['checkpoint']} | {r['label'] or '-'} | {r['z_temperature']:g} | "
                     f"{r['lm_nll_per_token']:.2f}{real} | {r['distinct_2']:.2f} | {r['self_bleu']:.1f} | "
                     f"{100 * r['eos_rate']:.1f}% | {r['mean_words']:.1f} | {100 * r['copied_rate']:.1f}% | "
                     f"{100 * r['unseen_words']:.1f}% | {style_cell(r['style'])} |")
    for r in rows:
        label = "" if r["label"] is None else f", label {r['label']}"
        lines += ["", f"{r['checkpoint']}{label}, z temperature {r['z_temperature']:g}:", ""]
        lines += [f"{i}. {t}" for i, t in enumerate(r["examples"], 1)]
    report = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(report)
    else:
        print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
