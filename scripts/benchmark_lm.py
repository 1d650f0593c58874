"""Train the VAE and its language-model baseline with the same budget and compare them.

    python scripts/benchmark_lm.py --config configs/default.yaml --out docs/benchmark_lm.md

Trains ``--config`` twice: as configured (the VAE) and with ``model.latent_dim=0`` and
``train.word_dropout.rate=0`` (the same decoder with no encoder and no z, and no word dropout,
which only weakens a language model: a plain language model at its own best settings), with the
same data, steps and seed. Both are evaluated on the config's test data by the code behind
``textvae evaluate``: the VAE's latent efficiency (LM NLL - rec) / KL and IW-NLL - LM NLL are
measured against the LM's exact NLL on the same sentences (also with the VAE's fitted prior as its
p(z), the two-stage model that ``textvae sample`` draws from), and the unseen-word rates of
reconstructions and prior samples against the training corpus's words. Held-out test sentences
are also scored against out-of-domain sentences (``data/ood/modern.txt``) and the AUROC
reported (the VAE's under N(0, I) and under its fitted prior, ``textvae score --prior fitted``).
Writes a markdown table and prints it. Existing run folders are reused (``--retrain`` trains them
again).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from textvae.checkpoint import load_pretrained, load_prior  # noqa: E402
from textvae.data import load_texts, read_sentences  # noqa: E402
from textvae.config import load_config  # noqa: E402
from textvae.evaluate import auroc, drop_long, evaluate_model, iw_nll, iw_nlls, prepare_ids  # noqa: E402
from textvae.train import train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], help="config overrides for both runs")
    ap.add_argument("--runs", default="runs/benchmark_lm", help="folder for the two run folders")
    ap.add_argument("--iw-samples", type=int, default=500)
    ap.add_argument("--limit", type=int, default=0, help="evaluate the first N test sentences (0: all)")
    ap.add_argument("--ood", default="data/ood/modern.txt", help="out-of-domain sentences for the AUROC")
    ap.add_argument("--ood-iw-samples", type=int, default=100)
    ap.add_argument("--out", default="docs/benchmark_lm.md")
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    runs = Path(args.runs)
    trained = {}
    for name, extra in (("VAE", []), ("LM (no latent)", ["model.latent_dim=0", "train.word_dropout.rate=0.0"])):
        cfg = load_config(args.config, args.set + extra + ["train.progress=false"])
        run = runs / ("vae" if not extra else "lm")
        t0 = time.perf_counter()
        if args.retrain and run.exists():
            shutil.rmtree(run)
        if not (run / "checkpoint" / "model.safetensors").exists():
            train(cfg, run)
        trained[name] = (cfg, run, time.perf_counter() - t0)
    results = {}
    lm_nll = None
    for name in ("LM (no latent)", "VAE"):  # the LM first: the VAE's efficiency is measured against it
        cfg, run, train_s = trained[name]
        loaded = load_pretrained(run)
        dc = loaded.config.data
        texts = load_texts(dc.test, dc.test_split, dc.text_column, dc.min_words, dc.max_words)
        # the sentences that fit model.max_len, as training keeps them (both models share the config)
        texts, dropped = drop_long(loaded.tokenizer, texts, loaded.config.model.max_len)
        texts = texts[:args.limit] if args.limit else texts
        train_texts = load_texts(dc.train, dc.train_split, dc.text_column, 0, 0)
        t0 = time.perf_counter()
        # the VAE also with its fitted prior (the two-stage model `textvae sample` draws from)
        prior = None if loaded.model.is_lm else load_prior(loaded)
        report = evaluate_model(loaded.model, loaded.tokenizer, texts, iw_samples=args.iw_samples,
                                training_texts=train_texts, lm_nll=lm_nll, prior=prior)
        if loaded.model.is_lm:
            ids, _ = prepare_ids(loaded.tokenizer, texts, loaded.config.model.max_len)
            lm_nll = iw_nll(loaded.model, ids, loaded.tokenizer, k=1)  # exact for a language model
        eval_s = time.perf_counter() - t0
        # Anomaly detection: in-domain held-out sentences should get lower NLL per token
        # than out-of-domain ones; AUROC = P(score(in) < score(out)).
        # The VAE scores under N(0, I) and under its fitted prior (`textvae score --prior fitted`),
        # from the same importance samples.
        ood = read_sentences(args.ood)
        priors = [None] if prior is None else [None, prior]
        scores = {}
        for split, sents in (("in", texts), ("ood", ood)):
            ids, _ = prepare_ids(loaded.tokenizer, sents, loaded.config.model.max_len)
            nlls = iw_nlls(loaded.model, ids, loaded.tokenizer, priors, k=args.ood_iw_samples)
            scores[split] = [[v / (len(x) + 1) for v, x in zip(nll.tolist(), ids)] for nll in nlls]
        aurocs = [auroc([-s for s in a], [-s for s in b]) for a, b in zip(scores["in"], scores["ood"])]
        report["ood_auroc"] = aurocs[0]
        if prior is not None:
            report["fitted_prior"]["ood_auroc"] = aurocs[1]
        report["dropped_long"] = dropped
        report["train_seconds"] = train_s
        report["eval_seconds"] = eval_s
        report["steps"] = cfg.train.max_steps
        results[name] = report
        print(f"{name}: evaluated in {eval_s:.0f}s", file=sys.stderr)
    results = {name: results[name] for name in trained}  # VAE first in the tables

    table = render(results, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table)
    return 0


def render(results: dict, args: argparse.Namespace) -> str:
    first = next(iter(results.values()))
    k = args.iw_samples
    lines = [
        "# VAE against its language-model baseline",
        "",
        f"Config `{args.config}` {' '.join('--set ' + s for s in args.set)}; both models trained for "
        f"{first['steps']} steps with the same data and seed; the LM is the same decoder with "
        "`model.latent_dim=0` and no word dropout. Test data: "
        f"{first['data']['sentences']} sentences of the config's test split "
        f"({first['data']['source'] if 'source' in first['data'] else 'test'}), those that fit "
        f"model.max_len ({first['dropped_long']} longer ones left out, as training leaves them out).",
        "",
        "| model | IW-NLL (nats/sent.) | IW-NLL - LM | latent eff. | PPL/word | PPL/token | rec | KL | MI | AU | "
        "rec. BLEU | rec. unseen words | OOD AUROC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        au = f"{r['active_units']}/{r['latent_dim']}" if r["latent_dim"] else "-"
        gap = f"{r['iw_gap']:+.2f}" if r.get("iw_gap") is not None else "-"
        eff = f"{r['latent_efficiency']:.3f}" if r.get("latent_efficiency") is not None else "-"
        unseen = f"{100 * r['recon_unseen_words']:.1f}%" if r.get("recon_unseen_words") is not None else "-"
        lines.append(
            f"| {name} | {r['iw_nll']:.2f} | {gap} | {eff} | {r['ppl_word']:.1f} | {r['ppl_token']:.2f} | "
            f"{r['rec']:.2f} | {r['kl']:.2f} | {r['mi']:.2f} | {au} | {r['recon_bleu']:.1f} | {unseen} | "
            f"{r['ood_auroc']:.3f} |")
        f = r.get("fitted_prior")
        if f is not None:
            gap = f"{f['iw_gap']:+.2f}" if f.get("iw_gap") is not None else "-"
            eff = f"{f['latent_efficiency']:.3f}" if f.get("latent_efficiency") is not None else "-"
            lines.append(f"| {name} with its fitted prior ({f['components']} {f['covariance']}-covariance Gaussians) "
                         f"| {f['iw_nll']:.2f} | {gap} | {eff} | | | {r['rec']:.2f} | {f['kl']:.2f} | | | | | "
                         f"{f['ood_auroc']:.3f} |")
    lines += [
        "",
        f"Conventions: IW-NLL with K = {k} importance samples (Burda et al. 2016; the LM's NLL is exact); "
        "PPL/token counts eos, PPL/word = exp(NLL / whitespace words), eos not counted; MI by the "
        f"minibatch estimator of He et al. 2019 (batch {first['mi_batch_size']}); AU: Cov(E_q[z]) > "
        f"{first['au_threshold']}; reconstruction BLEU: greedy from the posterior mean, sacreBLEU "
        f"({first['bleu_signature']}); latent efficiency: (LM NLL - rec) / KL, reconstruction nats bought per "
        "nat of KL; unseen words: share of output words (whitespace, punctuation stripped, lowercased) that "
        "never occur in the training file; decoding any token sequence; OOD AUROC: probability that a held-out "
        "test sentence has a lower "
        f"IW-NLL per token (K = {args.ood_iw_samples}, under the row's p(z)) than a sentence of `{args.ood}`.",
        "",
        "| model | samples distinct-2 | self-BLEU | mean words | ending in eos | copied from training | "
        "unseen words | train s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        s = r["samples"]
        unseen = f"{100 * s['unseen_words']:.1f}%" if s.get("unseen_words") is not None else "-"
        lines.append(f"| {name} | {s['distinct_2']:.3f} | {s['self_bleu']:.1f} | {s['mean_words']:.1f} | "
                     f"{100 * s['eos_rate']:.1f}% | {100 * (s['copied_rate'] or 0):.1f}% | {unseen} | "
                     f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    cmd = f"python scripts/benchmark_lm.py --config {args.config} --iw-samples {k}" + \
        "".join(f" --set {s}" for s in args.set) + (f" --limit {args.limit}" if args.limit else "")
    lines += ["", f"{first['samples']['n']} prior samples, top-p 0.9. Reproduce with:", "", "```bash", cmd, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
