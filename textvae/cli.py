"""The ``textvae`` command line: one plain function per subcommand.

Each command's help comes from its function's docstring; user errors print one
line on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from textvae.errors import ConfigError, TextVAEError

log = logging.getLogger("textvae")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a sentence VAE from a YAML config; writes runs/<name>/checkpoint and metrics.jsonl."""
    from textvae import checkpoint as ckpt
    from textvae.config import from_dict, apply_overrides, load_config
    from textvae.train import train

    if args.config is None and not args.resume:
        raise TextVAEError("give --config FILE (or --resume with --out RUN_DIR)")
    if args.config is None:
        if args.out is None:
            raise TextVAEError("--resume without --config needs --out RUN_DIR")
        saved = ckpt.read_meta(Path(args.out) / ckpt.CHECKPOINT_DIR)["config"]
        saved["model"]["vocab_size"] = 0
        cfg = from_dict(apply_overrides(saved, args.set))
    else:
        cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    train(cfg, out, resume=args.resume, stop_after=args.stop_after)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample sentences from the prior of a trained model; prints one sentence per line."""
    from textvae.checkpoint import load_pretrained
    from textvae.evaluate import sample_quality
    from textvae.generate import sample

    if args.n < 1:
        raise TextVAEError("-n must be at least 1")
    if not 0.0 < args.top_p <= 1.0:
        raise TextVAEError("--top-p must be in (0, 1]")
    if args.temperature <= 0:
        raise TextVAEError("--temperature must be > 0")
    if args.beam_size < 1 or args.top_k < 0 or (args.max_len is not None and args.max_len < 1):
        raise TextVAEError("--beam-size and --max-len must be at least 1, --top-k at least 0")
    _check_no_repeat(args)
    loaded = load_pretrained(args.checkpoint, device=_device(args.device))
    texts, finished = sample(loaded.model, loaded.tokenizer, args.n, seed=args.seed, strategy=args.strategy,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             beam_size=args.beam_size, max_len=args.max_len, no_repeat_ngram=args.no_repeat_ngram)
    for t in texts:
        print(t)
    if args.stats:
        from textvae.data import read_training_texts

        dc = loaded.config.data
        train_texts = read_training_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
        stats = sample_quality(texts, finished, train_texts)
        print(json.dumps({k: round(v, 4) for k, v in stats.items()}), file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model on held-out data: NLL, KL, IW-NLL, perplexity, MI, active units, BLEU, sample quality."""
    from textvae.checkpoint import load_pretrained
    from textvae.evaluate import evaluate_model, format_report

    if args.iw_samples < 1:
        raise TextVAEError("--iw-samples must be at least 1")
    if args.samples < 0 or args.batch_size < 1 or args.mi_batch_size < 2:
        raise TextVAEError("--samples must be >= 0, --batch-size >= 1, --mi-batch-size >= 2")
    loaded = load_pretrained(args.checkpoint, device=_device(args.device))
    dc = loaded.config.data
    source = args.data or getattr(dc, args.split, None)
    if not source:
        raise TextVAEError(f"the checkpoint's config names no {args.split} data; pass --data FILE")
    texts = _load_texts(source, args.split, args.text_column or dc.text_column, dc.min_words,
                        dc.max_words if args.max_words is None else args.max_words, args.limit)
    train_texts = None
    if args.samples:
        try:
            train_texts = _load_texts(dc.train, dc.train_split, dc.text_column, 0, 0, 0)
        except TextVAEError as e:
            log.warning("copy rate of samples not computed: %s", e)
    report = evaluate_model(loaded.model, loaded.tokenizer, texts, iw_samples=args.iw_samples,
                            batch_size=args.batch_size, mi_batch_size=args.mi_batch_size,
                            au_threshold=args.au_threshold, n_samples=args.samples, training_texts=train_texts,
                            seed=args.seed)
    report["checkpoint"] = str(loaded.path)
    report["data"]["source"] = source
    if report["data"]["truncated"]:
        log.warning("%d sentences were longer than the model's limit (%d tokens) and were truncated",
                    report["data"]["truncated"], loaded.config.model.max_len)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint: {loaded.path}\ndata: {source} ({report['data']['sentences']} sentences)")
        print(format_report(report))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score sentences by likelihood (anomaly detection): NLL bound per sentence and per token, tab-separated."""
    from textvae.checkpoint import load_pretrained
    from textvae.evaluate import elbo_per_sentence, iw_nll, prepare_ids

    if args.iw_samples < 1:
        raise TextVAEError("--iw-samples must be at least 1")
    loaded = load_pretrained(args.checkpoint, device=_device(args.device))
    texts = _read_sentences(args.input)
    ids, truncated = prepare_ids(loaded.tokenizer, texts, loaded.config.model.max_len)
    if truncated:
        log.warning("%d sentences were longer than the model's limit (%d tokens) and were truncated",
                    truncated, loaded.config.model.max_len)
    if args.method == "iw":
        nll = iw_nll(loaded.model, ids, loaded.tokenizer, k=args.iw_samples, seed=args.seed)
    else:
        nll, _ = elbo_per_sentence(loaded.model, ids, loaded.tokenizer, seed=args.seed)
    for text, x, v in zip(texts, ids, nll.tolist()):
        per_token = v / (len(x) + 1)  # eos counted
        if args.json:
            print(json.dumps({"text": text, "nll": v, "nll_per_token": per_token, "tokens": len(x) + 1,
                              "method": args.method, "iw_samples": args.iw_samples if args.method == "iw" else None}))
        else:
            print(f"{v:.3f}\t{per_token:.4f}\t{text}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Write posterior means (optionally log-variances) of sentences to .npy or .parquet, one row per input."""
    from textvae.checkpoint import load_pretrained
    from textvae.evaluate import posterior_params, prepare_ids

    out = Path(args.output)
    if out.suffix not in (".npy", ".parquet"):
        raise TextVAEError("--output must end in .npy or .parquet")
    loaded = load_pretrained(args.checkpoint, device=_device(args.device))
    if loaded.model.is_lm:
        raise TextVAEError("this checkpoint is a language model without a latent space; nothing to encode")
    if args.input is None or Path(args.input).suffix.lower() in ("", ".txt") or args.input == "-":
        texts = _read_sentences(args.input, keep_empty=True)
    else:
        texts = _load_texts(args.input, "train", args.text_column or loaded.config.data.text_column, 0, 0, 0,
                            keep_empty=True)
    ids, truncated = prepare_ids(loaded.tokenizer, texts, loaded.config.model.max_len)
    if truncated:
        log.warning("%d sentences were longer than the model's limit (%d tokens) and were truncated",
                    truncated, loaded.config.model.max_len)
    mu, logvar = posterior_params(loaded.model, ids, loaded.tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    if out.suffix == ".npy":
        import numpy as np

        np.save(tmp, mu.numpy())
        if args.logvar:
            lv_path = out.with_name(out.stem + ".logvar.npy")
            lv_tmp = lv_path.with_name(f".{lv_path.name}.tmp.npy")
            np.save(lv_tmp, logvar.numpy())
            os.replace(lv_tmp, lv_path)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"text": texts, "mu": mu.tolist()}
        if args.logvar:
            cols["logvar"] = logvar.tolist()
        pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, out)
    log.info("wrote %d rows x %d dimensions to %s", mu.shape[0], mu.shape[1], out)
    return 0


# --------------------------------------------------------------------------- latent space (textvae/api.py)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct sentences: encode each to its posterior mean and decode it (greedy by default)."""
    vae = _load_vae(args)
    texts = _input_sentences(args)
    outputs = vae.reconstruct(texts, **_decoding(args))
    _write_lines(args, [{"source": s, "output": o} for s, o in zip(texts, outputs)])
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    """Decode evenly spaced points on the latent path between two sentences (lerp or slerp)."""
    if args.steps < 2:
        raise TextVAEError(f"--steps must be at least 2 (the two endpoints), got {args.steps}")
    a, b = _check_arguments(args.sentences)
    vae = _load_vae(args)
    outputs = vae.interpolate(a, b, steps=args.steps, method=args.method, **_decoding(args))
    _write_lines(args, [{"step": i, "t": i / (args.steps - 1), "output": o} for i, o in enumerate(outputs)])
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """Rewrite sentences from one label's style into another's by latent arithmetic with the attribute vectors."""
    from textvae.api import CLOSEST_SAMPLES, DEFAULT_TRANSFER, SEARCH_CANDIDATES

    vae = _load_vae(args)
    attrs = vae.require_attributes()
    attrs.index(args.source), attrs.index(args.target)  # unknown labels fail before any work
    texts = _input_sentences(args)
    out = vae.transfer_detailed(texts, args.source, args.target, alpha=args.alpha, method=args.method or DEFAULT_TRANSFER,
                                candidates=args.candidates or SEARCH_CANDIDATES, judge=args.judge,
                                samples=CLOSEST_SAMPLES if args.samples is None else args.samples, **_decoding(args))
    records = [{"source": s, "output": o, "alpha": round(float(a), 4)} for s, o, a in zip(texts, out.texts, out.alphas)]
    if args.score:
        from textvae.style import classifier_for, sentence_bleu

        args.json = True
        clf = classifier_for(vae, seed=args.seed)
        probs = clf.prob(out.texts, args.target).tolist()
        for r, p, label in zip(records, probs, clf.predict(out.texts)):
            r["target_prob"] = round(p, 4)
            r["in_target_style"] = label == args.target
            r["self_bleu"] = round(sentence_bleu(r["output"], r["source"]), 2)
    _write_lines(args, records)
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    """Sentence analogies: A is to B as C is to ? (decodes z_C + z_B - z_A)."""
    if args.sentences:
        if len(args.sentences) != 3 or args.input:
            raise TextVAEError("give three sentences A B C, or --input FILE with tab-separated A, B, C per line")
        triples = [_check_arguments(args.sentences)]
    else:
        triples = []
        for i, line in enumerate(_read_sentences_raw(args.input), start=1):
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) != 3 or not all(parts):
                raise TextVAEError(f"line {i}: expected three non-empty tab-separated sentences A, B, C")
            triples.append(tuple(parts))
    vae = _load_vae(args)
    a, b, c = (list(col) for col in zip(*triples))
    outputs = vae.analogy(a, b, c, **_decoding(args))
    _write_lines(args, [{"a": x, "b": y, "c": z, "output": o} for x, y, z, o in zip(a, b, c, outputs)])
    return 0


def cmd_attributes(args: argparse.Namespace) -> int:
    """Compute attribute vectors (mean posterior mean per label) from a labelled file into a checkpoint folder."""
    from textvae import checkpoint as ckpt
    from textvae.data import prepare_split
    from textvae.latent import corpus_attributes

    vae = _load_vae(args, attributes=False)  # stale or damaged vectors are what this command replaces
    dc = vae.config.data
    label_column = args.label_column or vae.meta.get("label_column") or dc.label_column
    if not label_column:
        raise TextVAEError("give --label-column COL (the checkpoint's config names no label column)")
    text_column = args.text_column or dc.text_column
    # The training pipeline's filters, so the vectors match those computed at the end of training.
    corpus, names = prepare_split(args.data, args.split, vae.tokenizer, vae.model.cfg.max_len, text_column=text_column,
                                  label_column=label_column, min_words=dc.min_words, max_words=dc.max_words,
                                  name="attributes")
    if len(names) < 2:
        log.warning("the data holds a single label (%s): transfer needs at least two", ", ".join(names))
    attrs = corpus_attributes(vae.model, corpus, vae.tokenizer, names, {
        "source": args.data, "split": args.split, "text_column": text_column, "label_column": label_column,
        "min_words": dc.min_words, "max_words": dc.max_words})
    ckpt.write_files(vae.path, ckpt.attribute_files(attrs))
    for name, count, vec in zip(attrs.labels, attrs.counts.tolist(), attrs.means):
        log.info("%s: %d sentences, |mean| %.3f", name, count, float(vec.norm()))
    print(f"wrote attribute vectors for {len(names)} labels ({', '.join(names)}) to {vae.path}")
    return 0


def cmd_evaluate_transfer(args: argparse.Namespace) -> int:
    """Score style transfer: style accuracy, self-BLEU, ref-BLEU and their geometric means, against the copy baseline."""
    from textvae.style import classifier_for, evaluate_transfer, format_transfer_report, transfer_inputs

    vae = _load_vae(args)
    attrs = vae.require_attributes()
    attrs.index(args.source), attrs.index(args.target)
    dc = vae.config.data
    data = args.data or dc.test
    if not data:
        raise TextVAEError("the checkpoint's config names no test data; give --data FILE")
    label_column = args.label_column or vae.meta.get("label_column") or dc.label_column
    if not label_column:
        raise TextVAEError("give --label-column COL (the checkpoint's config names no label column)")
    if args.refs and not args.refs_column:
        raise TextVAEError("--refs needs --refs-column COL (the column of the references)")
    if args.limit < 0 or (args.max_words is not None and args.max_words < 0):
        raise TextVAEError("--limit and --max-words must be >= 0")
    sweep = _floats(args.sweep, "--sweep")
    max_words = dc.max_words if args.max_words is None else args.max_words
    sources, refs = transfer_inputs(data, args.source, args.text_column or dc.text_column, label_column,
                                    dc.min_words, max_words, refs=args.refs, refs_column=args.refs_column,
                                    id_column=args.id_column, split=args.split, limit=args.limit)
    clf = classifier_for(vae, seed=args.seed)
    report = evaluate_transfer(vae, clf, sources, args.source, args.target, refs=refs,
                               method=args.method, alpha=args.alpha, sweep=sweep,
                               methods=args.sweep_methods.split(",") if args.sweep_methods else (),
                               seed=args.seed, strategy=args.strategy, candidates=args.candidates, judge=args.judge,
                               samples=args.samples)
    report.update({"checkpoint": str(vae.path), "data": data, "refs": args.refs, "min_words": dc.min_words,
                   "max_words": max_words})
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint: {vae.path}\ndata: {data} ({label_column} == {args.source!r}, {dc.min_words}..{max_words or 'any'} "
              f"words){'; references: ' + args.refs + ' column ' + args.refs_column if args.refs else ''}\n")
        print(format_transfer_report(report))
    return 0


# --------------------------------------------------------------------------- seeing what the model learned (textvae/viz.py, serve.py)


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot a run's training curves (reconstruction, KL, beta*KL, beta, active units, validation -ELBO) as PNGs, collapse marked."""
    from textvae.viz import plot_run

    files, spans = plot_run(args.run_dir, args.out, threshold=args.collapse_kl, min_steps=args.collapse_steps)
    for f in files:
        print(f)
    if spans:
        log.warning("posterior collapse: train KL under %g for steps %s", args.collapse_kl,
                    ", ".join(f"{a}-{b}" for a, b in spans))
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    """Draw a 2-D projection (PCA by default) of the posterior means of a data file, coloured by label."""
    from textvae.viz import MAP_LIMIT, atomic_write_bytes, latent_map, load_labelled

    if args.limit is not None and args.limit < 0:
        raise TextVAEError("--limit must be >= 0")
    vae = _load_vae(args, attributes=False)
    data = args.data or vae.config.data.valid or vae.config.data.train
    texts, labels, column = load_labelled(data, vae, args.text_column, args.label_column,
                                          limit=MAP_LIMIT if args.limit is None else args.limit, seed=args.seed)
    if args.projection == "axis" and (labels is None or len(set(labels)) < 2):
        raise TextVAEError("--projection axis needs labelled data with at least two labels (--label-column COL)")
    png, m = latent_map(vae, texts, labels, args.projection,
                        title=f"{Path(data).name}: posterior means of {len(texts)} sentences"
                              + (f", coloured by {column}" if column else ""))
    run_dir = vae.path.parent if vae.path.name == "checkpoint" else vae.path
    out = Path(args.output) if args.output else run_dir / "plots" / "map.png"
    atomic_write_bytes(out, png)
    if m.kept_share is not None:
        log.info("attribute direction %s -> %s: %.0f%% of its length lies in the plotted plane",
                 m.label_names[0], m.label_names[1], 100 * m.kept_share)
    print(out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML report of a run: config, curves, evaluation, samples, interpolation, transfers."""
    from textvae.viz import build_report

    if args.interpolate is not None:
        _check_arguments(args.interpolate)
    out = build_report(args.run_dir, checkpoint=args.checkpoint, output=args.output, evaluation=args.evaluation,
                       samples=args.samples, seed=args.seed, interpolate=tuple(args.interpolate) if args.interpolate else None,
                       transfers=args.transfers, map_limit=args.map_limit, device=_device(args.device))
    print(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a local web demo: sample, interpolate with a slider, transfer with an alpha slider (plus JSON endpoints)."""
    from textvae.serve import serve

    if not 0 <= args.port <= 65535:
        raise TextVAEError(f"--port must be in 0..65535, got {args.port}")

    def ready(url: str) -> None:
        print(f"serving the textvae demo on {url} (Ctrl-C stops)", flush=True)

    try:
        serve(args.checkpoint, host=args.host, port=args.port, device=_device(args.device), ready=ready)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _load_vae(args: argparse.Namespace, attributes: bool = True):
    from textvae.api import TextVAE

    vae = TextVAE.from_pretrained(args.checkpoint, device=_device(args.device), attributes=attributes)
    if vae.model.is_lm:
        raise TextVAEError("this checkpoint is a language model (latent_dim 0): it has no latent space")
    return vae


def _input_sentences(args: argparse.Namespace) -> list[str]:
    """Sentences from the command line, else --input FILE, else stdin."""
    if args.sentences:
        if args.input:
            raise TextVAEError("give sentences as arguments or --input FILE, not both")
        return _check_arguments(args.sentences)
    return _read_sentences(args.input)


def _check_arguments(sentences: list[str]) -> list[str]:
    from textvae.data import normalise_text

    texts = [normalise_text(s) for s in sentences]
    for i, t in enumerate(texts, start=1):
        if not t:
            raise TextVAEError(f"sentence {i} is empty")
    return texts


def _read_sentences_raw(path: str | None) -> list[str]:
    """Non-empty lines of a UTF-8 file or stdin, tabs kept."""
    if path is None or path == "-":
        if sys.stdin.isatty():
            raise TextVAEError("no input: give --input FILE or pipe lines on stdin")
        raw, name = sys.stdin.buffer.read(), "stdin"
    else:
        if not Path(path).is_file():
            raise TextVAEError(f"input file not found: {path}")
        raw, name = Path(path).read_bytes(), path
    try:
        lines = [line for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise TextVAEError(f"{name}: not valid UTF-8 (byte {e.start})") from None
    if not lines:
        raise TextVAEError(f"{name}: no lines")
    return lines


def _check_no_repeat(args: argparse.Namespace) -> None:
    n = getattr(args, "no_repeat_ngram", 0)
    if n < 0:
        raise TextVAEError("--no-repeat-ngram must be >= 0")
    if n and args.strategy == "beam":
        raise TextVAEError("--no-repeat-ngram applies to --strategy greedy or sample, not beam")


def _decoding(args: argparse.Namespace) -> dict:
    _check_no_repeat(args)
    kw = {"strategy": args.strategy, "seed": args.seed}
    if getattr(args, "no_repeat_ngram", 0):
        kw["no_repeat_ngram"] = args.no_repeat_ngram
    if args.strategy == "sample":
        if not 0.0 < args.top_p <= 1.0:
            raise TextVAEError("--top-p must be in (0, 1]")
        kw["top_p"] = args.top_p
    if args.strategy == "beam":
        if args.beam_size < 1:
            raise TextVAEError("--beam-size must be at least 1")
        kw["beam_size"] = args.beam_size
    return kw


def _write_lines(args: argparse.Namespace, records: list[dict]) -> None:
    """One line per record: its 'output', or the whole record as JSON with --json; to --output
    FILE (written atomically) or stdout."""
    lines = [json.dumps(r, ensure_ascii=False) if args.json else r["output"] for r in records]
    out = getattr(args, "output", None)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        os.replace(tmp, path)
        log.info("wrote %d lines to %s", len(lines), path)
    else:
        for x in lines:
            print(x)


def _floats(text: str | None, option: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TextVAEError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _read_sentences(path: str | None, keep_empty: bool = False) -> list[str]:
    """Sentences, one per line, from a UTF-8 text file or stdin ('-' or None)."""
    from textvae.data import normalise_text

    if path is None or path == "-":
        if sys.stdin.isatty():
            raise TextVAEError("no input: give --input FILE or pipe sentences on stdin")
        raw = sys.stdin.buffer.read()
        name = "stdin"
    else:
        p = Path(path)
        if not p.is_file():
            raise TextVAEError(f"input file not found: {path}")
        raw = p.read_bytes()
        name = path
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    texts = []
    for i, line in enumerate(lines, start=1):
        try:
            texts.append(normalise_text(line.decode("utf-8")))
        except UnicodeDecodeError:
            raise TextVAEError(f"{name}: line {i} is not valid UTF-8") from None
    empty = sum(not t for t in texts)
    if not keep_empty:
        texts = [t for t in texts if t]
        if empty:
            log.warning("skipped %d empty lines", empty)
    elif empty:
        log.warning("%d empty lines are encoded as empty sentences", empty)
    if not texts:
        raise TextVAEError(f"{name}: no sentences")
    return texts


def _load_texts(source: str, split: str, text_column: str, min_words: int, max_words: int, limit: int = 0,
                keep_empty: bool = False) -> list[str]:
    """Cleaned texts of a data file or hub split (the training pipeline's cleaning rules)."""
    from textvae.data import clean, column, load_split, normalise_text

    ds = load_split(source, split, text_column)
    if keep_empty:
        texts = [normalise_text(t if isinstance(t, str) else "") for t in column(ds, text_column)]
    else:
        ds, report = clean(ds, text_column, min_words, max_words)
        log.info("%s: %s", source, report)
        texts = column(ds, "text")
    if limit:
        texts = texts[:limit]
    if not texts:
        raise TextVAEError(f"{source}: no sentences left after cleaning")
    return texts


def _device(name: str):
    from textvae.errors import ConfigError
    from textvae.train import resolve_device

    try:
        return resolve_device(name)
    except (RuntimeError, ConfigError) as e:
        raise TextVAEError(f"bad --device {name!r}: {str(e).splitlines()[0]}") from None


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=500 (repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N steps in this call (resume later with --resume)")


def _add_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("-n", type=int, default=10, help="number of sentences (default 10)")
    p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="sample",
                   help="decoding strategy (default: sample)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9; 1 disables)")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=None, help="most tokens per sentence")
    p.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N",
                   help="forbid repeating any token N-gram in a sentence (greedy/sample; default 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--stats", action="store_true",
                   help="print eos rate, novelty against the training data and distinct-n as JSON on stderr")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    _add_checkpoint(p)
    p.add_argument("--data", help="data file or hub dataset (default: the checkpoint config's data for --split)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"),
                   help="which of the config's data files to use, or the hub split (default: test)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--max-words", type=int, default=None,
                   help="drop longer sentences (default: the checkpoint's data.max_words; 0: no limit)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N sentences (0: all)")
    p.add_argument("--iw-samples", type=int, default=500, help="importance samples K for IW-NLL (default 500, as He et al. 2019)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per IW batch")
    p.add_argument("--mi-batch-size", type=int, default=128, help="batch size of the MI estimator")
    p.add_argument("--au-threshold", type=float, default=0.01, help="active-unit threshold on Cov(E_q[z])")
    p.add_argument("--samples", type=int, default=200, help="prior samples for sample-quality figures (0: none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_score(p: argparse.ArgumentParser) -> None:
    _add_checkpoint(p)
    p.add_argument("--input", help="text file, one sentence per line (default: stdin)")
    p.add_argument("--method", choices=("iw", "elbo"), default="iw",
                   help="iw: importance-weighted NLL bound; elbo: negative ELBO (default iw)")
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples K (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per sentence")


def _add_encode(p: argparse.ArgumentParser) -> None:
    _add_checkpoint(p)
    p.add_argument("--input", help="a .txt file (one sentence per line), a data file, or stdin")
    p.add_argument("--text-column", help="text column of a data file (default: the checkpoint's)")
    p.add_argument("--output", required=True, help="FILE.npy (posterior means) or FILE.parquet (text, mu[, logvar])")
    p.add_argument("--logvar", action="store_true", help="also write log-variances (.npy: FILE.logvar.npy)")


def _add_latent_common(p: argparse.ArgumentParser, json_help: str = "one JSON object per line") -> None:
    _add_checkpoint(p)
    p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="greedy",
                   help="decoding strategy (default: greedy; --seed drives 'sample')")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus mass for --strategy sample (default 0.9)")
    p.add_argument("--beam-size", type=int, default=4, help="beams for --strategy beam (default 4)")
    p.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N",
                   help="forbid repeating any token N-gram in an output (greedy/sample; default 0: off)")
    p.add_argument("--json", action="store_true", help=json_help)


def _add_sentences(p: argparse.ArgumentParser) -> None:
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="sentences (default: --input FILE, else stdin)")
    p.add_argument("--input", help="text file, one sentence per line ('-': stdin)")
    p.add_argument("--output", help="write the lines to FILE (atomically) instead of stdout")


def _add_reconstruct(p: argparse.ArgumentParser) -> None:
    _add_sentences(p)
    _add_latent_common(p, "one JSON object per line: source, output")


def _add_interpolate(p: argparse.ArgumentParser) -> None:
    p.add_argument("sentences", nargs=2, metavar="SENTENCE", help="the two endpoints A and B")
    p.add_argument("--steps", type=int, default=5, help="points on the path, endpoints included (default 5)")
    p.add_argument("--method", choices=("lerp", "slerp"), default="lerp",
                   help="lerp: straight line; slerp: great circle with the norm moving linearly (default lerp)")
    _add_latent_common(p, "one JSON object per line: step, t, output")


def _add_transfer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="LABEL", help="label of the input style")
    p.add_argument("--to", dest="target", required=True, metavar="LABEL", help="label of the output style")
    p.add_argument("--method", choices=("mean-diff", "project", "search", "closest"), default=None,
                   help="mean-diff: z + alpha (target mean - source mean); project: set z's coordinate on the "
                        "style axis to the target mean's; search: try strengths up to alpha on the project "
                        "path, keep the weakest that lands in the target style; closest: decode several "
                        "candidates at strengths up to alpha on the mean-diff path, keep the one in the target "
                        "style that is closest to the source (default: closest)")
    p.add_argument("--alpha", type=float, default=None,
                   help="strength; 0 gives the reconstruction (default: 2 for mean-diff and project; for search "
                        "(4) and closest (3) it is the largest tried)")
    p.add_argument("--candidates", type=int, default=None,
                   help="search, closest: strengths tried per sentence (default 4: alpha/4, alpha/2, 3 alpha/4, alpha)")
    p.add_argument("--samples", type=int, default=None,
                   help="closest: sampled decodes per strength besides the --strategy one (default 20)")
    p.add_argument("--judge", choices=("auto", "char", "latent", "classifier"), default="auto",
                   help="search, closest: how an output is accepted as the target style. char: a character n-gram "
                        "style judge trained on the config's training data (not the scorer); latent: its "
                        "re-encoded code is past the midpoint of the two attribute vectors (needs no data); "
                        "auto: char when the training data or a cached judge is at hand, else latent "
                        "(default: auto); classifier: the scoring classifier itself (optimistic)")


def _add_transfer(p: argparse.ArgumentParser) -> None:
    _add_sentences(p)
    _add_transfer_options(p)
    p.add_argument("--score", action="store_true",
                   help="add the style classifier's verdict, its target probability and the sentence BLEU to the "
                        "source (implies --json)")
    _add_latent_common(p, "one JSON object per line: source, output, alpha (and scores with --score)")


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
    _add_checkpoint(p)
    _add_transfer_options(p)
    p.add_argument("--data", help="labelled file; its rows whose label is --from are the inputs "
                                  "(default: the checkpoint config's test file)")
    p.add_argument("--split", default="train", help="hub split (local files are one split)")
    p.add_argument("--label-column", help="label column (default: the checkpoint's)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--max-words", type=int, default=None,
                   help="drop longer inputs (default: the checkpoint's data.max_words; 0: no limit)")
    p.add_argument("--refs", help="file with reference transfers (e.g. data/bible/test_parallel.jsonl.gz)")
    p.add_argument("--refs-column", help="column of --refs holding the references (e.g. web)")
    p.add_argument("--id-column", help="join inputs and references on this column (default: same order)")
    p.add_argument("--limit", type=int, default=0, help="first N inputs only (0: all)")
    p.add_argument("--sweep", default="0,0.5,1,1.5,2,3", help="strengths to report as well (comma-separated; '' none)")
    p.add_argument("--sweep-methods", default="mean-diff,project,search",
                   help="methods of the sweep (comma-separated)")
    p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="greedy", help="decoding (default greedy)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_plot(p: argparse.ArgumentParser) -> None:
    from textvae.viz import COLLAPSE_KL, COLLAPSE_STEPS

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl")
    p.add_argument("--out", help="folder for the PNGs (default: RUN_DIR/plots)")
    p.add_argument("--collapse-kl", type=float, default=COLLAPSE_KL,
                   help=f"train KL (nats/sentence) under which the posterior counts as collapsed (default {COLLAPSE_KL})")
    p.add_argument("--collapse-steps", type=int, default=COLLAPSE_STEPS,
                   help=f"...for at least this many steps (default {COLLAPSE_STEPS})")


def _add_map(p: argparse.ArgumentParser) -> None:
    _add_checkpoint(p)
    p.add_argument("--data", help="data file to encode (default: the checkpoint config's validation file)")
    p.add_argument("--label-column", help="column to colour by (default: the checkpoint's, when the file has it; "
                                          "'none': no colours)")
    p.add_argument("--text-column", help="text column (default: the checkpoint's)")
    p.add_argument("--projection", choices=("pca", "axis"), default="pca",
                   help="pca: the two directions of largest variance; axis: x along the attribute direction "
                        "(first label -> second), y the largest remaining variance (default pca)")
    p.add_argument("--limit", type=int, default=None,
                   help="encode a random subset of at most N sentences (default 3000; 0: all)")
    p.add_argument("--output", help="PNG file (default: RUN_DIR/plots/map.png)")


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl (and checkpoint/)")
    p.add_argument("--checkpoint", help="model to show (default: RUN_DIR's checkpoint)")
    p.add_argument("--output", help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--evaluation", help="JSON from `textvae evaluate --json` (default: RUN_DIR/evaluation.json if present)")
    p.add_argument("--samples", type=int, default=8, help="prior samples to show (default 8)")
    p.add_argument("--interpolate", nargs=2, metavar="SENTENCE", help="endpoints of the interpolation "
                                                                      "(default: two validation sentences)")
    p.add_argument("--transfers", type=int, default=3, help="example transfers per direction (default 3)")
    p.add_argument("--map-limit", type=int, default=1000, help="validation sentences in the latent map (0: no map)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the demo to the network)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
    "train": (cmd_train, _add_train),
    "sample": (cmd_sample, _add_sample),
    "evaluate": (cmd_evaluate, _add_evaluate),
    "score": (cmd_score, _add_score),
    "encode": (cmd_encode, _add_encode),
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

    parser = argparse.ArgumentParser(prog="textvae", description="Sentence-level variational autoencoders.")
    parser.add_argument("--version", action="version", version=f"textvae {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
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
    try:
        return args.func(args)
    except TextVAEError as e:
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        if rank != "0" and isinstance(e, ConfigError):
            # Under torchrun every rank reads the same config: rank 0 reports it, once. Exiting at
            # once could let torchrun stop rank 0 before it has printed, so give it a moment.
            import time

            time.sleep(3)
            return 2
        where = f" (rank {rank})" if rank != "0" else ""
        print(f"textvae {args.command}{where}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"textvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
