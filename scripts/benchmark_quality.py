"""Language model, autoencoder and sampler at once: the figures of one or more checkpoints.

    python scripts/benchmark_quality.py --lm runs/lm runs/default runs/other --out docs/quality.md
    python scripts/benchmark_quality.py --lm runs/lm runs/default --split test --limit 0

For each checkpoint, on the held-out split (``--split``, default valid), twice: on the sentences of at
most ``--max-words`` words (default: the checkpoint's data.max_words, or 25 when it keeps every
length) and on every sentence that fits model.max_len:

- latent efficiency (LM NLL - reconstruction) / KL, and IW-NLL - LM NLL, against ``--lm`` (the
  same decoder without z, trained on the same data and budget);
- greedy reconstruction BLEU from the posterior mean and the share of unseen words in the
  reconstructions, decoding any token sequence and decoding only words seen in training;
- prior samples (N(0, I) and the fitted mixture, seen words): unseen-word rate, distinct-2, share
  ending in eos; ten examples of each.

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
    common = dict(data=args.data, split=args.split, limit=args.limit, iw_samples=args.iw_samples, seed=args.seed)
    for filt, max_words in (("filtered", short), ("all", 0)):
        t0 = time.perf_counter()
        full = evaluate_checkpoint(loaded, max_words=max_words, samples=args.samples, lm=lm, words=None, **common)
        constrained = _decode_only(loaded, seen, None, max_words, args)
        fitted_s = _decode_only(loaded, seen, fitted, max_words, args)
        out[filt] = {"any": full, "seen": constrained, "fitted": fitted_s, "seconds": time.perf_counter() - t0}
        print(f"{path} ({filt}): {out[filt]['seconds']:.0f} s", file=sys.stderr)
    return out


def _decode_only(loaded, words, prior, max_words, args: argparse.Namespace) -> dict:
    """Reconstructions and samples with ``words``/``prior`` (likelihood figures are decoding-free: K = 1)."""
    from textvae.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(loaded, data=args.data, split=args.split, max_words=max_words, limit=args.limit,
                               iw_samples=1, samples=args.samples, seed=args.seed, words=words, prior=prior)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint or run folders")
    ap.add_argument("--lm", help="the language-model baseline (model.latent_dim=0) of the same data")
    ap.add_argument("--data", help="held-out file (default: the checkpoint config's for --split)")
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--limit", type=int, default=0, help="first N sentences (0: all)")
    ap.add_argument("--max-words", type=int, default=0,
                    help="the first pass's word filter (default: the checkpoint's data.max_words, or 25 without one)")
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
    lines = [f"Reproduce with `{command}`. Split: {args.split}; IW-NLL with K = {args.iw_samples}; "
             f"{args.samples} prior samples (top-p 0.9) per row; BLEU: sacreBLEU corpus BLEU of greedy "
             "reconstructions from the posterior mean; unseen words: share of output words (whitespace, punctuation "
             "stripped, lowercased) that never occur in the training file.", "",
             "| checkpoint | sentences | rec | KL | IW-NLL | LM NLL | IW-NLL - LM | latent eff. | rec. BLEU any / seen "
             "| rec. unseen any / seen | samples unseen N(0,I) any / seen / fitted seen | distinct-2 | eos |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for filt in ("filtered", "all"):
            a, s, f = r[filt]["any"], r[filt]["seen"], r[filt]["fitted"]
            label = f"≤ {r['max_words']} words" if filt == "filtered" else f"all ≤ {r['max_len']} tokens"
            lm = f"{a['lm_nll']:.2f}" if "lm_nll" in a else "–"
            gap = f"{a['iw_gap']:+.2f}" if "iw_gap" in a else "–"
            eff = f"{a['latent_efficiency']:.3f}" if "latent_efficiency" in a else "–"
            lines.append(
                f"| {r['path']} | {label}, {a['data']['sentences']} | {a['rec']:.2f} | {a['kl']:.2f} | {a['iw_nll']:.2f} "
                f"| {lm} | {gap} | {eff} | {a['recon_bleu']:.1f} / {s['recon_bleu']:.1f} | "
                f"{_pct(a['recon_unseen_words'])} / {_pct(s['recon_unseen_words'])} | "
                f"{_pct(a['samples']['unseen_words'])} / {_pct(s['samples']['unseen_words'])} / "
                f"{_pct(f['samples']['unseen_words'])} | {a['samples']['distinct_2']:.2f} / {s['samples']['distinct_2']:.2f}"
                f" / {f['samples']['distinct_2']:.2f} | {_pct(s['samples']['eos_rate'])} / {_pct(f['samples']['eos_rate'])} |")
    for r in results:
        a, s, f = r["filtered"]["any"], r["filtered"]["seen"], r["filtered"]["fitted"]
        lines += ["", f"## {r['path']} (step {r['step']}): examples", "",
                  "Reconstructions (source → any tokens | seen words):", ""]
        for x, y in zip(a["recon_examples"], s["recon_examples"]):
            lines.append(f"- {x['source']}\n  - any: {x['output']}\n  - seen: {y['output']}")
        lines += ["", "Prior samples, N(0, I), seen words:", ""] + [f"- {t}" for t in s["samples"]["examples"]]
        lines += ["", "Prior samples, fitted prior, seen words:", ""] + [f"- {t}" for t in f["samples"]["examples"]]
        lines += ["", "Prior samples, N(0, I), any tokens:", ""] + [f"- {t}" for t in a["samples"]["examples"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
