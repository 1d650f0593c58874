"""The ``textvae`` command line: one plain function per subcommand.

Each command parses its arguments, calls the library function that does the work and prints
the result; nothing else happens here. A command's help comes from its function's docstring and
its defaults from the library's constants. User errors (:class:`textvae.errors.TextVAEError`,
raised by the library) print one line on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from textvae import runtime
from textvae.errors import ConfigError, TextVAEError

log = logging.getLogger("textvae")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a sentence VAE from a YAML config; writes runs/<name>/checkpoint and metrics.jsonl."""
    from textvae.train import run_config, train

    cfg, out = run_config(args.config, args.set, args.out, args.resume)
    train(cfg, out, resume=args.resume, stop_after=args.stop_after)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample sentences from the prior of a trained model; prints one sentence per line."""
    from textvae.generate import check_options

    options = dict(strategy=args.strategy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   beam_size=args.beam_size, max_len=args.max_len, no_repeat_ngram=args.no_repeat_ngram)
    check_options(**options)
    vae = _load_vae(args, attributes=False, latent=False)
    vae.check_sample_label(args.label, args.prior)  # before any work
    texts, finished = vae.sample_detailed(args.n, seed=args.seed, prior=args.prior, label=args.label,
                                          z_temperature=args.z_temperature, words=args.words, **options)
    _print_lines(texts)
    if args.stats:
        from textvae.data import load_texts
        from textvae.evaluate import sample_quality

        dc = vae.config.data
        train_texts = load_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
        stats = sample_quality(texts, finished, train_texts)
        print(json.dumps({k: round(v, 4) for k, v in stats.items()}), file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model on held-out data: NLL, KL, IW-NLL, perplexity, MI, active units, BLEU, sample quality."""
    from textvae import checkpoint as ckpt
    from textvae.evaluate import evaluate_checkpoint, format_report

    loaded = ckpt.load_pretrained(args.checkpoint, device=_device(args.device))
    lm = ckpt.load_pretrained(args.lm_checkpoint, device=_device(args.device)) if args.lm_checkpoint else None
    prior = ckpt.resolve_prior(loaded, args.prior)
    report = evaluate_checkpoint(loaded, args.data, args.split, args.text_column, args.max_words, args.limit,
                                 args.iw_samples, args.batch_size, args.mi_batch_size, args.au_threshold,
                                 args.samples, args.seed, lm, ckpt.load_seen_words(loaded, args.words), prior,
                                 args.refine_steps, args.long, args.z_temperature)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint: {loaded.path}\ndata: {report['data']['source']} ({report['data']['sentences']} sentences)")
        print(format_report(report))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score sentences by likelihood (anomaly detection): NLL bound per sentence and per token, tab-separated."""
    from textvae.data import read_input

    vae = _load_vae(args, attributes=False, latent=False)
    texts = read_input(args.input, args.text_column or vae.config.data.text_column)
    records = vae.score(texts, args.method, args.iw_samples, args.seed, args.prior)
    _print_lines([json.dumps(r) if args.json else f"{r['nll']:.3f}\t{r['nll_per_token']:.4f}\t{r['text']}"
                  for r in records])
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Write posterior means (optionally log-variances) of sentences to .npy or .parquet, one row per input."""
    from textvae.data import read_input

    vae = _load_vae(args, attributes=False)
    texts = read_input(args.input, args.text_column or vae.config.data.text_column, keep_empty=True)
    files = vae.export_codes(texts, args.output, logvar=args.logvar)
    log.info("wrote %d rows x %d dimensions to %s", len(texts), vae.latent_dim, ", ".join(map(str, files)))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """Label sentences with a label-conditional model's classifier q(y|x): label and probability per line."""
    vae = _load_vae(args, attributes=False)
    if not vae.conditional:
        raise TextVAEError("classify needs a label-conditional model (trained with --set model.conditional=label); "
                           "this one is unconditional")
    texts = _input_sentences(args, vae)
    records = vae.classify(texts)
    lines = [json.dumps({"text": r["text"], "label": r["label"], "prob": round(r["prob"], 6),
                         "probs": {k: round(v, 6) for k, v in r["probs"].items()}}, ensure_ascii=False)
             if args.json else f"{r['label']}\t{r['prob']:.4f}\t{r['text']}" for r in records]
    _write_lines(args, lines)
    return 0


# --------------------------------------------------------------------------- latent space (textvae/api.py)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct sentences: encode each to its posterior mean and decode it (greedy by default)."""
    vae = _load_vae(args)
    texts = _input_sentences(args, vae)
    outputs = vae.reconstruct(texts, **_decoding(args))
    _write_records(args, [{"source": s, "output": o} for s, o in zip(texts, outputs)])
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    """Decode evenly spaced points on the latent path between two sentences (lerp or slerp)."""
    from textvae.data import check_sentences

    a, b = check_sentences(args.sentences)
    vae = _load_vae(args)
    outputs = vae.interpolate(a, b, steps=args.steps, method=args.method, **_decoding(args))
    _write_records(args, [{"step": i, "t": i / (args.steps - 1), "output": o} for i, o in enumerate(outputs)])
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """Rewrite sentences from one label's style into another's by latent arithmetic with the attribute vectors."""
    from textvae import transfer

    vae = _load_vae(args)
    opts = _transfer_options(args)
    opts.strength()
    attrs = transfer.needed_attributes(vae, opts, args.source, args.target)  # labels checked before any work
    texts = _input_sentences(args, vae)
    out = transfer.transfer(vae, attrs, texts, args.source, args.target, opts, **_decoding(args, extras_only=True))
    records = [{"source": s, "output": o, "alpha": round(float(a), 4)} for s, o, a in zip(texts, out.texts, out.alphas)]
    if args.score:
        args.json = True
        transfer.score_outputs(vae, records, args.target, seed=args.seed)
    _write_records(args, records)
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    """Sentence analogies: A is to B as C is to ? (decodes z_C + z_B - z_A)."""
    from textvae.data import check_sentences, read_tab_separated

    if args.sentences and (len(args.sentences) != 3 or args.input):
        raise TextVAEError("give three sentences A B C, or --input FILE with tab-separated A, B, C per line")
    triples = [tuple(check_sentences(args.sentences))] if args.sentences else read_tab_separated(args.input, 3)
    vae = _load_vae(args)
    a, b, c = (list(col) for col in zip(*triples))
    outputs = vae.analogy(a, b, c, **_decoding(args))
    _write_records(args, [{"a": x, "b": y, "c": z, "output": o} for x, y, z, o in zip(a, b, c, outputs)])
    return 0


def cmd_attributes(args: argparse.Namespace) -> int:
    """Compute attribute vectors (mean posterior mean per label) from a labelled file into a checkpoint folder."""
    from textvae.transfer import compute_attributes

    vae = _load_vae(args, attributes=False)  # stale or damaged vectors are what this command replaces
    attrs = compute_attributes(vae, args.data, args.split, args.label_column, args.text_column)
    for name, count, vec in zip(attrs.labels, attrs.counts.tolist(), attrs.means):
        log.info("%s: %d sentences, |mean| %.3f", name, count, float(vec.norm()))
    print(f"wrote attribute vectors for {len(attrs.labels)} labels ({', '.join(attrs.labels)}) to {vae.path}")
    return 0


def cmd_evaluate_transfer(args: argparse.Namespace) -> int:
    """Score style transfer: style accuracy, self-BLEU, ref-BLEU and their geometric means, against the copy baseline."""
    from textvae.style import format_transfer_report
    from textvae.transfer import evaluate_checkpoint

    vae = _load_vae(args)
    r = evaluate_checkpoint(vae, args.source, args.target, _transfer_options(args), args.data, args.split,
                            args.label_column, args.text_column, args.max_words, args.refs, args.refs_column,
                            args.id_column, args.limit, args.sweep, args.sweep_methods,
                            **_decoding(args, extras_only=True))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    refs = f"; references: {r['refs']} column {r['refs_column']}" if r["refs"] else ""
    print(f"checkpoint: {r['checkpoint']}\ndata: {r['data']} ({r['label_column']} == {args.source!r}, "
          f"{r['min_words']}..{r['max_words'] or 'any'} words){refs}\n")
    print(format_transfer_report(r))
    return 0


# --------------------------------------------------------------------------- seeing what the model learned (textvae/viz.py, serve.py)


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot a run's training curves (reconstruction, KL, beta*KL, beta, active units, validation -ELBO) as PNGs, collapse marked."""
    from textvae.viz import plot_run

    files, spans = plot_run(args.run_dir, args.out, threshold=args.collapse_kl, min_steps=args.collapse_steps)
    _print_lines([str(f) for f in files])
    if spans:
        log.warning("posterior collapse: train KL under %g for steps %s", args.collapse_kl,
                    ", ".join(f"{a}-{b}" for a, b in spans))
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    """Draw a 2-D projection (PCA by default) of the posterior means of a data file, coloured by label."""
    from textvae.viz import write_map

    vae = _load_vae(args, attributes=False)
    out, m = write_map(vae, args.data, args.text_column, args.label_column, args.projection, args.limit,
                       args.seed, args.output)
    if m.kept_share is not None:
        log.info("attribute direction %s -> %s: %.0f%% of its length lies in the plotted plane",
                 m.label_names[0], m.label_names[1], 100 * m.kept_share)
    print(out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML report of a run: config, curves, evaluation, samples, interpolation, transfers."""
    from textvae.data import check_sentences
    from textvae.viz import build_report

    endpoints = tuple(check_sentences(args.interpolate)) if args.interpolate is not None else None
    out = build_report(args.run_dir, checkpoint=args.checkpoint, output=args.output, evaluation=args.evaluation,
                       samples=args.samples, seed=args.seed, interpolate=endpoints, transfers=args.transfers,
                       map_limit=args.map_limit, device=_device(args.device))
    print(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a local web demo: sample, interpolate with a slider, transfer with an alpha slider (plus JSON endpoints)."""
    from textvae.serve import serve

    def ready(url: str) -> None:
        print(f"serving the textvae demo on {url} (Ctrl-C stops)", flush=True)

    try:
        serve(args.checkpoint, host=args.host, port=args.port, device=_device(args.device), ready=ready)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- shared argument handling


def _load_vae(args: argparse.Namespace, attributes: bool = True, latent: bool = True):
    from textvae.api import TextVAE

    vae = TextVAE.from_pretrained(args.checkpoint, device=_device(args.device), attributes=attributes)
    if latent and vae.model.is_lm:
        raise TextVAEError("this checkpoint is a language model (latent_dim 0): it has no latent space")
    vae.refine_steps = getattr(args, "refine_steps", 0)  # checked when the first sentence is encoded
    return vae


def _input_sentences(args: argparse.Namespace, vae: Any) -> list[str]:
    """Sentences from the command line, else --input FILE, else stdin."""
    from textvae.data import check_sentences, read_input

    if args.sentences:
        if args.input:
            raise TextVAEError("give sentences as arguments or --input FILE, not both")
        return check_sentences(args.sentences)
    return read_input(args.input, vae.config.data.text_column)


def _decoding(args: argparse.Namespace, extras_only: bool = False) -> dict[str, Any]:
    """The decoding options of a latent command (checked by textvae.generate when it decodes);
    ``extras_only``: without strategy and seed (a transfer's Options hold them)."""
    kw: dict[str, Any] = {} if extras_only else {"strategy": args.strategy, "seed": args.seed}
    kw["words"] = args.words
    if getattr(args, "no_repeat_ngram", 0):
        kw["no_repeat_ngram"] = args.no_repeat_ngram
    if args.strategy == "sample" and hasattr(args, "top_p"):
        kw["top_p"] = args.top_p
    if args.strategy == "beam" and hasattr(args, "beam_size"):
        kw["beam_size"] = args.beam_size
    return kw


def _transfer_options(args: argparse.Namespace):
    from textvae.transfer import Options

    return Options(args.method, args.alpha, args.strategy, args.seed, args.candidates, args.judge, args.samples,
                   args.fluency, args.max_unseen, args.copy_bias)


def _write_records(args: argparse.Namespace, records: list[dict]) -> None:
    """One line per record: its 'output', or the whole record as JSON with --json; to --output
    FILE (written atomically) or stdout."""
    _write_lines(args, [json.dumps(r, ensure_ascii=False) if args.json else r["output"] for r in records])


def _write_lines(args: argparse.Namespace, lines: list[str]) -> None:
    """Lines to --output FILE (written atomically) or stdout."""
    from textvae.files import atomic_write

    if getattr(args, "output", None):
        atomic_write(args.output, "".join(x + "\n" for x in lines))
        log.info("wrote %d lines to %s", len(lines), args.output)
    else:
        _print_lines(lines)


def _print_lines(lines: list[str]) -> None:
    for x in lines:
        print(x)


def _device(name: str):
    from textvae.train import resolve_device

    try:
        return resolve_device(name)
    except (RuntimeError, ConfigError) as e:
        raise TextVAEError(f"bad --device {name!r}: {str(e).splitlines()[0]}") from None


def _floats(text: str) -> list[float]:
    """argparse type of comma-separated numbers ('' for none)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


# Bounds of every count and size given on the command line (each option's message names its bound).
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 100_000      # sentences sampled, importance samples
MAX_TOKENS = 100_000       # lengths, word limits, top-k
MAX_BATCH = 65_536
MAX_BEAM = 64
MAX_PATH = 1_000           # interpolation points
MAX_CANDIDATES = 100       # transfer strengths tried
MAX_ALPHA = 1_000.0
MAX_COUNT = 10**9          # steps, sentence limits
MAX_THREADS = 1_024


def _int(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {text if len(text) < 30 else text[:27] + '...'}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    """argparse type: a finite number in [lo, hi]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a finite number between {lo:g} and {hi:g}, got {text[:30]}")
        return value

    return parse


def _margin(text: str) -> Optional[float]:
    """argparse type of --fluency: 'off', or a number of nats per token in [0, 100]."""
    return None if text.strip().lower() == "off" else _float(0, 100)(text)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``textvae CMD: error: ...``) like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message.splitlines()[0] if message else 'bad arguments'} (see --help)",
              file=sys.stderr)
        sys.exit(2)


# --------------------------------------------------------------------------- arguments


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=500 (repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=_int(1, MAX_COUNT), default=None, metavar="N",
                   help="stop after N steps in this call (resume later with --resume)")


def _add_sample(p: argparse.ArgumentParser) -> None:
    from textvae.generate import DEFAULT_BEAM_SIZE, DEFAULT_TOP_P, STRATEGIES

    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("-n", type=_int(1, MAX_SAMPLES), default=10, help="number of sentences (default 10)")
    p.add_argument("--strategy", choices=STRATEGIES, default="sample", help="decoding strategy (default: sample)")
    p.add_argument("--temperature", type=_float(0.0, 100.0), default=1.0)
    p.add_argument("--top-k", type=_int(0, MAX_TOKENS), default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=_float(0.0, 1.0), default=DEFAULT_TOP_P,
                   help=f"nucleus sampling mass (default {DEFAULT_TOP_P:g}; 1 disables)")
    p.add_argument("--beam-size", type=_int(1, MAX_BEAM), default=DEFAULT_BEAM_SIZE)
    p.add_argument("--max-len", type=_int(1, MAX_TOKENS), default=None, help="most tokens per sentence")
    p.add_argument("--no-repeat-ngram", type=_int(0, MAX_TOKENS), default=0, metavar="N",
                   help="forbid repeating any token N-gram in a sentence (greedy/sample; default 0: off)")
    p.add_argument("--seed", type=_int(0, MAX_SEED), default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    _add_words(p)
    _add_prior(p)
    p.add_argument("--label", metavar="LABEL", help="write in this label's style: a label-conditional model "
                   "(model.conditional=label) decodes with it; a model trained on labelled data draws z from the "
                   "prior fitted to that label's training codes (default: no label; a conditional model draws "
                   "each sentence's label at random)")
    p.add_argument("--stats", action="store_true",
                   help="print eos rate, novelty against the training data and distinct-n as JSON on stderr")


def _add_words(p: argparse.ArgumentParser) -> None:
    from textvae.checkpoint import DEFAULT_WORDS, WORDS_MODES

    p.add_argument("--words", choices=WORDS_MODES, default=DEFAULT_WORDS,
                   help="seen: spell only words of the training data; any: any token sequence; auto: seen when the "
                        f"checkpoint stores its training words or its training file can be read (default: {DEFAULT_WORDS})")


def _add_refine(p: argparse.ArgumentParser) -> None:
    from textvae.evaluate import MAX_REFINE_STEPS

    p.add_argument("--refine-steps", type=_int(0, MAX_REFINE_STEPS), default=0, metavar="N",
                   help="semi-amortised encoding (Kim et al. 2018): N gradient steps on each posterior mean against "
                        f"the decoder's likelihood of its sentence before decoding (0 to {MAX_REFINE_STEPS}; default 0: "
                        "the encoder's mean)")


def _add_prior(p: argparse.ArgumentParser) -> None:
    from textvae.generate import DEFAULT_Z_TEMPERATURE, MAX_Z_TEMPERATURE
    from textvae.prior import DEFAULT_PRIOR, PRIORS

    p.add_argument("--prior", choices=PRIORS, default=DEFAULT_PRIOR,
                   help="normal: z ~ N(0, I); fitted: z from the Gaussian mixture fitted to the training codes "
                        "(fitted and stored in the checkpoint when missing); auto: fitted when the checkpoint "
                        f"stores it or its training data can be read, else normal (default: {DEFAULT_PRIOR})")
    p.add_argument("--z-temperature", type=_float(1e-3, MAX_Z_TEMPERATURE), default=DEFAULT_Z_TEMPERATURE,
                   help="scale the prior's noise: below 1 draws codes nearer its modes, for samples that read "
                        f"better and vary less (Kingma & Dhariwal 2018; default {DEFAULT_Z_TEMPERATURE:g}; "
                        "1: the prior itself)")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=_int(0, MAX_SEED), default=0)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    from textvae.evaluate import (AU_THRESHOLD, DEFAULT_IW_SAMPLES, EVAL_SPLITS, IW_BATCH_SIZE, LONG_MODES,
                                  MI_BATCH_SIZE, SAMPLE_COUNT)

    _add_checkpoint(p)
    p.add_argument("--data", help="data file or hub dataset (default: the checkpoint config's data for --split)")
    p.add_argument("--split", default="test", choices=EVAL_SPLITS,
                   help="which of the config's data files to use, or the hub split (default: test)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--max-words", type=_int(0, MAX_TOKENS), default=None,
                   help="drop longer sentences (default: the checkpoint's data.max_words; 0: no limit)")
    p.add_argument("--limit", type=_int(0, MAX_COUNT), default=0, help="evaluate only the first N sentences (0: all)")
    p.add_argument("--long", choices=LONG_MODES, default="truncate",
                   help="sentences longer than max_len: truncate them (default) or drop them as training does")
    p.add_argument("--iw-samples", type=_int(1, MAX_SAMPLES), default=DEFAULT_IW_SAMPLES,
                   help=f"importance samples K for IW-NLL (default {DEFAULT_IW_SAMPLES}, as He et al. 2019)")
    p.add_argument("--batch-size", type=_int(1, MAX_BATCH), default=IW_BATCH_SIZE, help=f"sentences per IW batch (default {IW_BATCH_SIZE})")
    p.add_argument("--mi-batch-size", type=_int(1, MAX_BATCH), default=MI_BATCH_SIZE,
                   help=f"batch size of the MI estimator (default {MI_BATCH_SIZE})")
    p.add_argument("--au-threshold", type=_float(0.0, 1e6), default=AU_THRESHOLD,
                   help=f"active-unit threshold on Cov(E_q[z]) (default {AU_THRESHOLD:g})")
    p.add_argument("--samples", type=_int(0, MAX_SAMPLES), default=SAMPLE_COUNT,
                   help=f"prior samples for sample-quality figures (default {SAMPLE_COUNT}; 0: none)")
    p.add_argument("--lm-checkpoint", metavar="DIR",
                   help="a language model of the same data (model.latent_dim=0): adds its NLL, IW-NLL minus it and "
                        "the latent efficiency (LM NLL - reconstruction) / KL")
    _add_words(p)
    _add_prior(p)
    _add_refine(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_score(p: argparse.ArgumentParser) -> None:
    from textvae.evaluate import SCORE_IW_SAMPLES, SCORE_METHODS
    from textvae.prior import PRIORS

    _add_input_file(p)
    p.add_argument("--method", choices=SCORE_METHODS, default="iw",
                   help="iw: importance-weighted NLL bound; elbo: negative ELBO (default iw)")
    p.add_argument("--iw-samples", type=_int(1, MAX_SAMPLES), default=SCORE_IW_SAMPLES,
                   help=f"importance samples K (default {SCORE_IW_SAMPLES})")
    p.add_argument("--prior", choices=PRIORS, default="normal",
                   help="p(z) of the bound: normal (N(0, I), default), fitted (the Gaussian mixture fitted to the "
                        "training codes, the model that sample draws from) or auto (fitted when available)")
    p.add_argument("--json", action="store_true", help="one JSON object per sentence")


def _add_input_file(p: argparse.ArgumentParser) -> None:
    _add_checkpoint(p)
    p.add_argument("--input", help="a .txt file (one sentence per line), a data file, or stdin")
    p.add_argument("--text-column", help="text column of a data file (default: the checkpoint's)")


def _add_encode(p: argparse.ArgumentParser) -> None:
    _add_input_file(p)
    p.add_argument("--output", required=True, help="FILE.npy (posterior means) or FILE.parquet (text, mu[, logvar])")
    p.add_argument("--logvar", action="store_true", help="also write log-variances (.npy: FILE.logvar.npy)")
    _add_refine(p)


def _add_latent_common(p: argparse.ArgumentParser, json_help: str = "one JSON object per line") -> None:
    from textvae.generate import DEFAULT_BEAM_SIZE, DEFAULT_TOP_P, STRATEGIES

    _add_checkpoint(p)
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy",
                   help="decoding strategy (default: greedy; --seed drives 'sample')")
    p.add_argument("--top-p", type=_float(0.0, 1.0), default=DEFAULT_TOP_P,
                   help=f"nucleus mass for --strategy sample (default {DEFAULT_TOP_P:g})")
    p.add_argument("--beam-size", type=_int(1, MAX_BEAM), default=DEFAULT_BEAM_SIZE,
                   help=f"beams for --strategy beam (default {DEFAULT_BEAM_SIZE})")
    p.add_argument("--no-repeat-ngram", type=_int(0, MAX_TOKENS), default=0, metavar="N",
                   help="forbid repeating any token N-gram in an output (greedy/sample; default 0: off)")
    _add_words(p)
    _add_refine(p)
    p.add_argument("--json", action="store_true", help=json_help)


def _add_sentences(p: argparse.ArgumentParser) -> None:
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="sentences (default: --input FILE, else stdin)")
    p.add_argument("--input", help="text file, one sentence per line, or a data file (.jsonl, .csv...: its text "
                                   "column); '-': stdin")
    p.add_argument("--output", help="write the lines to FILE (atomically) instead of stdout")


def _add_reconstruct(p: argparse.ArgumentParser) -> None:
    _add_sentences(p)
    _add_latent_common(p, "one JSON object per line: source, output")


def _add_interpolate(p: argparse.ArgumentParser) -> None:
    from textvae.latent import INTERPOLATIONS

    p.add_argument("sentences", nargs=2, metavar="SENTENCE", help="the two endpoints A and B")
    p.add_argument("--steps", type=_int(2, MAX_PATH), default=5, help="points on the path, endpoints included (default 5)")
    p.add_argument("--method", choices=INTERPOLATIONS, default="lerp",
                   help="lerp: straight line; slerp: great circle with the norm moving linearly (default lerp)")
    _add_latent_common(p, "one JSON object per line: step, t, output")


def _add_transfer_options(p: argparse.ArgumentParser) -> None:
    from textvae import transfer as t

    alphas = ", ".join(f"{m} {a:g}" for m, a in t.DEFAULT_ALPHA.items())
    p.add_argument("--from", dest="source", required=True, metavar="LABEL", help="label of the input style")
    p.add_argument("--to", dest="target", required=True, metavar="LABEL", help="label of the output style")
    p.add_argument("--method", choices=t.METHODS, default=t.DEFAULT_METHOD,
                   help="mean-diff: z + alpha (target mean - source mean); project: set z's coordinate on the "
                        "style axis to the target mean's; search: try strengths up to alpha on the project "
                        "path, keep the weakest that lands in the target style; closest: decode several "
                        "candidates at strengths up to alpha on the mean-diff path, keep the one in the target "
                        "style that is closest to the source; relabel (a label-conditional model): decode z with "
                        f"the target label (default: {t.DEFAULT_METHOD})")
    p.add_argument("--alpha", type=_float(-MAX_ALPHA, MAX_ALPHA), default=None,
                   help=f"strength; 0 gives the reconstruction (default per method: {alphas}; for search and "
                        "closest it is the largest tried)")
    p.add_argument("--candidates", type=_int(1, MAX_CANDIDATES), default=t.SEARCH_CANDIDATES,
                   help=f"search, closest: strengths tried per sentence (default {t.SEARCH_CANDIDATES}: "
                        "evenly spaced up to alpha)")
    p.add_argument("--samples", type=_int(0, MAX_CANDIDATES * 10), default=t.CLOSEST_SAMPLES,
                   help=f"closest: sampled decodes per strength besides the --strategy one (default {t.CLOSEST_SAMPLES})")
    _add_judge_and_bias(p)


def _add_judge_and_bias(p: argparse.ArgumentParser) -> None:
    from textvae import transfer as t

    p.add_argument("--judge", choices=t.JUDGES, default=t.DEFAULT_JUDGE,
                   help="search, closest: how an output is accepted as the target style. char: a character n-gram "
                        "style judge trained on the config's training data (not the scorer); latent: its "
                        "re-encoded code is past the midpoint of the two attribute vectors (needs no data); "
                        "auto: char when the training data or a cached judge is at hand, else latent; "
                        f"classifier: the scoring classifier itself (optimistic) (default: {t.DEFAULT_JUDGE})")
    p.add_argument("--copy-bias", type=_float(0, 100), default=t.DEFAULT_COPY_BIAS, metavar="NATS",
                   help="add NATS to the logits of the source sentence's own tokens at every decoding step, so that "
                        "the output keeps the source's words where the code leaves the choice open; a token's bonus "
                        "lasts as many uses as the source has of it (every method; 0: the code alone; default "
                        f"{t.DEFAULT_COPY_BIAS:g})")
    _add_fluency(p)


def _add_fluency(p: argparse.ArgumentParser) -> None:
    from textvae import transfer as t

    p.add_argument("--fluency", type=_margin, default=t.DEFAULT_FLUENCY, metavar="NATS",
                   help="search, closest: never choose a candidate more than NATS per token less likely under the "
                        "model than the input under its own code; 'off' for no likelihood guard "
                        f"(default {t.DEFAULT_FLUENCY:g})")
    p.add_argument("--max-unseen", type=_float(0, 1), default=t.DEFAULT_MAX_UNSEEN, metavar="SHARE",
                   help="search, closest with --words any: never choose a candidate with more than this share of "
                        f"words unseen in training (default {t.DEFAULT_MAX_UNSEEN:g})")


def _add_transfer(p: argparse.ArgumentParser) -> None:
    _add_sentences(p)
    _add_transfer_options(p)
    p.add_argument("--score", action="store_true",
                   help="add the style classifier's verdict, its target probability and the sentence BLEU to the "
                        "source (implies --json)")
    _add_latent_common(p, "one JSON object per line: source, output, alpha (and scores with --score)")


def _add_classify(p: argparse.ArgumentParser) -> None:
    _add_sentences(p)
    _add_checkpoint(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line: text, label, prob, probs")


def _add_analogy(p: argparse.ArgumentParser) -> None:
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="A B C (or --input FILE of tab-separated triples)")
    p.add_argument("--input", help="file of lines 'A<TAB>B<TAB>C' ('-': stdin)")
    p.add_argument("--output", help="write the lines to FILE (atomically) instead of stdout")
    _add_latent_common(p, "one JSON object per line: a, b, c, output")


def _add_attributes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder (the vectors are written into it)")
    p.add_argument("--data", required=True, help="labelled data file or hub dataset")
    p.add_argument("--label-column", help="label column (default: the checkpoint's)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--split", default="train", help="hub split (local files are one split)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _add_evaluate_transfer(p: argparse.ArgumentParser) -> None:
    from textvae.generate import STRATEGIES

    _add_checkpoint(p)
    _add_transfer_options(p)
    p.add_argument("--data", help="labelled file; its rows whose label is --from are the inputs "
                                  "(default: the checkpoint config's test file)")
    p.add_argument("--split", default="train", help="hub split (local files are one split)")
    p.add_argument("--label-column", help="label column (default: the checkpoint's)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--max-words", type=_int(0, MAX_TOKENS), default=None,
                   help="drop longer inputs (default: the checkpoint's data.max_words; 0: no limit)")
    p.add_argument("--refs", help="file with reference transfers (e.g. data/bible/test_parallel.jsonl.gz)")
    p.add_argument("--refs-column", help="column of --refs holding the references (e.g. web)")
    p.add_argument("--id-column", help="join inputs and references on this column (default: same order)")
    p.add_argument("--limit", type=_int(0, MAX_COUNT), default=0, help="first N inputs only (0: all)")
    p.add_argument("--sweep", type=_floats, default="0,0.5,1,1.5,2,3",
                   help="strengths to report as well (comma-separated; '' none)")
    p.add_argument("--sweep-methods", type=_names, default="mean-diff,project,search",
                   help="methods of the sweep (comma-separated)")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="decoding (default greedy)")
    _add_words(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_plot(p: argparse.ArgumentParser) -> None:
    from textvae.viz import COLLAPSE_KL, COLLAPSE_STEPS

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl")
    p.add_argument("--out", help="folder for the PNGs (default: RUN_DIR/plots)")
    p.add_argument("--collapse-kl", type=_float(0.0, 1e6), default=COLLAPSE_KL,
                   help=f"train KL (nats/sentence) under which the posterior counts as collapsed (default {COLLAPSE_KL})")
    p.add_argument("--collapse-steps", type=_int(1, MAX_COUNT), default=COLLAPSE_STEPS,
                   help=f"...for at least this many steps (default {COLLAPSE_STEPS})")


def _add_map(p: argparse.ArgumentParser) -> None:
    from textvae.viz import MAP_LIMIT

    _add_checkpoint(p)
    p.add_argument("--data", help="data file to encode (default: the checkpoint config's validation file)")
    p.add_argument("--label-column", help="column to colour by (default: the checkpoint's, when the file has it; "
                                          "'none': no colours)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--projection", choices=("pca", "axis"), default="pca",
                   help="pca: the two directions of largest variance; axis: x along the attribute direction "
                        "(first label -> second), y the largest remaining variance (default pca)")
    p.add_argument("--limit", type=_int(0, MAX_COUNT), default=MAP_LIMIT,
                   help=f"encode a random subset of at most N sentences (default {MAP_LIMIT}; 0: all)")
    p.add_argument("--output", help="PNG file (default: RUN_DIR/plots/map.png)")


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl (and checkpoint/)")
    p.add_argument("--checkpoint", help="model to show (default: RUN_DIR's checkpoint)")
    p.add_argument("--output", help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--evaluation", help="JSON from `textvae evaluate --json` (default: RUN_DIR/evaluation.json if present)")
    p.add_argument("--samples", type=_int(0, MAX_CANDIDATES * 10), default=8, help="prior samples to show (default 8)")
    p.add_argument("--interpolate", nargs=2, metavar="SENTENCE", help="endpoints of the interpolation "
                                                                      "(default: two validation sentences)")
    p.add_argument("--transfers", type=_int(0, MAX_CANDIDATES * 10), default=3, help="example transfers per direction (default 3)")
    p.add_argument("--map-limit", type=_int(0, MAX_COUNT), default=1000, help="validation sentences in the latent map (0: no map)")
    p.add_argument("--seed", type=_int(0, MAX_SEED), default=0)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("--port", type=_int(0, 65535), default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the demo to the network)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
    "train": (cmd_train, _add_train),
    "sample": (cmd_sample, _add_sample),
    "evaluate": (cmd_evaluate, _add_evaluate),
    "score": (cmd_score, _add_score),
    "encode": (cmd_encode, _add_encode),
    "classify": (cmd_classify, _add_classify),
    "reconstruct": (cmd_reconstruct, _add_reconstruct),
    "interpolate": (cmd_interpolate, _add_interpolate),
    "transfer": (cmd_transfer, _add_transfer),
    "analogy": (cmd_analogy, _add_analogy),
    "attributes": (cmd_attributes, _add_attributes),
    "evaluate-transfer": (cmd_evaluate_transfer, _add_evaluate_transfer),
    "plot": (cmd_plot, _add_plot),
    "map": (cmd_map, _add_map),
    "report": (cmd_report, _add_report),
    "serve": (cmd_serve, _add_serve),
}


def build_parser() -> argparse.ArgumentParser:
    from textvae import __version__

    parser = _Parser(prog="textvae", description="Sentence-level variational autoencoders.")
    parser.add_argument("--version", action="version", version=f"textvae {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    parser.add_argument("--threads", type=_int(0, MAX_THREADS), default=None, metavar="N",
                        help="CPU threads for torch (default: one per core). Idle threads spin briefly "
                             f"(GOMP_SPINCOUNT={runtime.SPIN_COUNT}) and then sleep, so that a machine other "
                             "processes keep busy does not stall training; the count changes the numbers, the "
                             "spin does not")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, add) in COMMANDS.items():
        doc = (fn.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
        add(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if sys.stdout is None:  # started with stdout closed (`>&-`): a write must fail, not vanish
        sys.stdout = runtime.ClosedStream()
    try:
        from textvae.files import check_not_input

        check_not_input(getattr(args, "output", None), [getattr(args, "input", None)])
        runtime.configure_threads(args.threads)
        status = args.func(args)
        sys.stdout.flush()  # a full or closed stdout fails here, while it can still be reported
        return status
    except TextVAEError as e:
        return _report_error(args.command, e)
    except KeyboardInterrupt:
        print(f"textvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `textvae sample | head`: the reader has what it wanted
        runtime.silence_stdout()
        return 0
    except OSError as e:  # a full disk, a read-only file system, a closed or full stream
        runtime.silence_stdout()
        return _report_error(args.command, TextVAEError(_os_message(e)))


def _os_message(e: OSError) -> str:
    reason = e.strerror or str(e) or type(e).__name__
    where = ": ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{reason}: {where}" if where else reason


def _report_error(command: str, e: TextVAEError) -> int:
    """One line on stderr, exit status 2."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    if rank != "0" and isinstance(e, ConfigError):
        # Under torchrun every rank reads the same config: rank 0 reports it, once. Exiting at
        # once could let torchrun stop rank 0 before it has printed, so give it a moment.
        import time

        time.sleep(3)
        return 2
    where = f" (rank {rank})" if rank != "0" else ""
    print(f"textvae {command}{where}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
