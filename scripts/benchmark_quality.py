"""Language model, autoencoder and sampler at once: the figures of one or more checkpoints.

    python scripts/benchmark_quality.py --lm runs/lm runs/default runs/other --out docs/quality.md
    python scripts/benchmark_quality.py --lm runs/lm runs/default --split test --limit 0

For each checkpoint, on the held-out split (``--split``, default valid), twice: on the sentences of at
most ``--max-words`` words (default: the checkpoint's data.max_words, or 25 when it keeps every
length) and on every sentence that fits model.max_len (``--long drop``, the default, as training
keeps them; ``--long truncate`` cuts the longer ones instead, as ``textvae evaluate`` does by default):

- latent efficiency (LM NLL - reconstruction) / KL, and IW-NLL - LM NLL, against ``--lm`` (the
  same decoder without z, trained on the same data and budget), with N(0, I) as the prior and with
  the checkpoint's fitted prior (the two-stage model that ``textvae sample`` draws from);
- greedy reconstruction BLEU from the posterior mean and the share of unseen words in the
  reconstructions, decoding any token sequence and decoding only words seen in training;
- prior samples (N(0, I) decoding any tokens, and the fitted prior decoding seen words, the CLI's
  default): unseen-word rate, distinct-2, share ending in eos; ten examples of each.

Everything is computed by ``textvae.evaluate.evaluate_checkpoint``, the function behind
``textvae evaluate``. Writes a markdown report with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def measure(path: str, lm, args: argparse.Namespace) -> dict:
    from textvae import checkpoint as ckpt
    from textvae.evaluate import evaluate_checkpoint

    loaded = ckpt.load_pretrained(path)
    seen = ckpt.load_seen_words(loaded, "seen")
    fitted = ckpt.load_prior(loaded)
    short = args.max_words or loaded.config.data.max_words or 25
    out = {"path": path, "step": loaded.meta.get("step"), "max_len": loaded.config.model.max_len, "max_words": short}
    common = dict(data=args.data, split=args.split, limit=args.limit, seed=args.seed, samples=args.samples,
                  long=args.long)
    for filt, max_words in (("filtered", short), ("all", 0)):
        t0 = time.perf_counter()
        # what the CLI does by default: seen-word decoding, samples from the fitted prior; the
        # likelihood under N(0, I) and under the fitted prior from the same importance samples
        main = evaluate_checkpoint(loaded, max_words=max_words, iw_samples=args.iw_samples, lm=lm, words=seen,
                                   prior=fitted, **common)
        # decoding any token sequence from N(0, I): where made-up words come from (no likelihood: K = 1)
        raw = evaluate_checkpoint(loaded, max_words=max_words, iw_samples=1, words=None, prior=None, **common)
        out[filt] = {"seen": main, "any": raw, "seconds": time.perf_counter() - t0}
        print(f"{path} ({filt}): {out[filt]['seconds']:.0f} s", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint or run folders")
    ap.add_argument("--lm", help="the language-model baseline (model.latent_dim=0) of the same data")
    ap.add_argument("--data", help="held-out file (default: the checkpoint config's for --split)")
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--limit", type=int, default=0, help="first N sentences (0: all)")
    ap.add_argument("--max-words", type=int, default=0,
                    help="the first pass's word filter (default: the checkpoint's data.max_words, or 25 without one)")
    ap.add_argument("--long", choices=("drop", "truncate"), default="drop",
                    help="sentences longer than model.max_len: drop them (default, as training) or truncate them")
    ap.add_argument("--iw-samples", type=int, default=100)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="markdown file (default: print only)")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    os.chdir(REPO)
    from textvae import checkpoint as ckpt
    from textvae.files import atomic_write

    lm = ckpt.load_pretrained(args.lm) if args.lm else None
    results = [measure(p, lm, args) for p in args.checkpoints]
    text = render(results, args)
    if args.out:
        atomic_write(args.out, text)
    if args.json:
        atomic_write(args.json, json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render(results: list[dict], args: argparse.Namespace) -> str:
    command = "python scripts/benchmark_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"Reproduce with `{command}`. Split: {args.split}; IW-NLL with K = {args.iw_samples}, under N(0, I) "
             "and under the checkpoint's fitted prior (the same importance samples; the KL to the fitted prior by "
             f"Monte Carlo); {args.samples} prior samples (top-p 0.9) per row; BLEU: sacreBLEU corpus BLEU of greedy "
             "reconstructions from the posterior mean; unseen words: share of output words (whitespace, punctuation "
             "stripped, lowercased) that never occur in the training file; seen: decoding only words seen in "
             "training (the CLI's default), any: any token sequence.", "",
             "| checkpoint | sentences | rec | KL N(0,I) / fitted | IW-NLL N(0,I) / fitted | LM NLL "
             "| IW-NLL - LM N(0,I) / fitted | latent eff. N(0,I) / fitted | rec. BLEU any / seen "
             "| rec. unseen any / seen | samples unseen N(0,I) any / fitted seen | distinct-2 N(0,I) any / fitted seen "
             "| eos N(0,I) any / fitted seen |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for filt in ("filtered", "all"):
            s, a = r[filt]["seen"], r[filt]["any"]
            f = s.get("fitted_prior", {})
            fit = "that fit" if args.long == "drop" else "cut to"
            label = f"≤ {r['max_words']} words" if filt == "filtered" else f"all {fit} {r['max_len']} tokens"
            lm = f"{s['lm_nll']:.2f}" if "lm_nll" in s else "–"
            gap = f"{s['iw_gap']:+.2f} / {f['iw_gap']:+.2f}" if "iw_gap" in f else "–"
            eff = f"{s['latent_efficiency']:.3f} / {f['latent_efficiency']:.3f}" if "latent_efficiency" in f else "–"
            lines.append(
                f"| {r['path']} | {label}, {s['data']['sentences']} | {s['rec']:.2f} | {s['kl']:.2f} / {f['kl']:.2f} "
                f"| {s['iw_nll']:.2f} / {f['iw_nll']:.2f} | {lm} | {gap} | {eff} "
                f"| {a['recon_bleu']:.1f} / {s['recon_bleu']:.1f} "
                f"| {_pct(a['recon_unseen_words'])} / {_pct(s['recon_unseen_words'])} "
                f"| {_pct(a['samples']['unseen_words'])} / {_pct(s['samples']['unseen_words'])} "
                f"| {a['samples']['distinct_2']:.2f} / {s['samples']['distinct_2']:.2f} "
                f"| {_pct(a['samples']['eos_rate'])} / {_pct(s['samples']['eos_rate'])} |")
    for r in results:
        s, a = r["filtered"]["seen"], r["filtered"]["any"]
        lines += ["", f"## {r['path']} (step {r['step']}): examples", "",
                  "Reconstructions (source → any tokens | seen words):", ""]
        for x, y in zip(a["recon_examples"], s["recon_examples"]):
            lines.append(f"- {x['source']}\n  - any: {x['output']}\n  - seen: {y['output']}")
        lines += ["", "Prior samples, fitted prior, seen words:", ""] + [f"- {t}" for t in s["samples"]["examples"]]
        lines += ["", "Prior samples, N(0, I), any tokens:", ""] + [f"- {t}" for t in a["samples"]["examples"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
