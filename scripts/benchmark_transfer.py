"""Style-transfer benchmark on the bundled Bible: KJV -> WEB and WEB -> KJV by latent arithmetic.

For each direction, the inputs are the held-out books' verses in the source style that pass the
checkpoint's own data filters (data.min_words..data.max_words words, or ``--max-words``), the
references are the same verses in the target style (data/bible/*_parallel.jsonl.gz, joined on
the verse id), and the report compares the default transfer with the copy baseline (output =
input), the references themselves, and a sweep of strengths for every method. Everything is
computed by ``textvae.transfer.evaluate_checkpoint``, the function behind ``textvae evaluate-transfer``.

    python scripts/benchmark_transfer.py --checkpoint runs/default                 # test books
    python scripts/benchmark_transfer.py --checkpoint runs/default --limit 100     # a quick run
    python scripts/benchmark_transfer.py --checkpoint runs/default --jobs 2        # both directions at once
    python scripts/benchmark_transfer.py --checkpoint runs/default --split valid \\
        --out docs/transfer_methods_valid.md                                      # choosing a method

Writes the markdown report (with the command that reproduces it) to --out and prints it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = (("kjv", "web"), ("web", "kjv"))
FILES = {"test": ("data/bible/test.jsonl.gz", "data/bible/test_parallel.jsonl.gz"),
         "valid": ("data/bible/valid.jsonl.gz", "data/bible/valid_parallel.jsonl.gz")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint or run folder (with attribute vectors)")
    p.add_argument("--split", choices=tuple(FILES), default="test", help="held-out books (default: test)")
    p.add_argument("--limit", type=int, default=0, help="first N inputs per direction (0: all)")
    p.add_argument("--max-words", type=int, default=None,
                   help="inputs of at most N words (default: the checkpoint's data.max_words; 0: any length)")
    p.add_argument("--method", default=None, help="the transfer to report (default: textvae's default)")
    p.add_argument("--alpha", type=float, default=None, help="its strength (default: the method's default)")
    p.add_argument("--sweep", default="1,2,4,6,8", help="strengths of the sweep (comma-separated)")
    p.add_argument("--methods", default="mean-diff,project,search,closest",
                   help="methods of the sweep (comma-separated; search:classifier or closest:classifier judge "
                        "with the classifier)")
    p.add_argument("--copy-bias", type=float, default=None,
                   help="nats added to the logits of the source's own tokens (default: textvae transfer's)")
    p.add_argument("--examples", type=int, default=5, help="example transfers per direction in the report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the two directions in this many processes, one torch thread each (default 1: in "
                        "turn, with torch's default threads)")
    p.add_argument("--out", help="markdown file (default: docs/benchmark_transfer.md, or "
                                 "docs/transfer_methods_valid.md for --split valid)")
    args = p.parse_args(argv)
    os.chdir(REPO)  # the bundled data paths (and the checkpoint config's) are relative to the repository

    from textvae import TextVAE
    from textvae.errors import TextVAEError
    from textvae.files import atomic_write
    from textvae.style import classifier_for, format_transfer_table, judge_for
    from textvae.transfer import CLOSEST_SAMPLES, DEFAULT_COPY_BIAS, DEFAULT_JUDGE, JUDGE_THRESHOLD, SEARCH_CANDIDATES

    copy_bias = DEFAULT_COPY_BIAS if args.copy_bias is None else args.copy_bias
    out = Path(args.out or ("docs/benchmark_transfer.md" if args.split == "test" else "docs/transfer_methods_valid.md"))
    data, parallel = FILES[args.split]
    try:
        vae = TextVAE.from_pretrained(args.checkpoint, device=args.device)
        dc = vae.config.data
        clf = classifier_for(vae, seed=args.seed)  # trained and cached here, before any worker needs them
        judge = judge_for(vae)
        task = {"checkpoint": args.checkpoint, "device": args.device, "data": data, "parallel": parallel,
                "limit": args.limit, "max_words": args.max_words, "method": args.method, "alpha": args.alpha,
                "seed": args.seed, "copy_bias": copy_bias, "sweep": [float(x) for x in args.sweep.split(",") if x.strip()],
                "methods": [m.strip() for m in args.methods.split(",") if m.strip()]}
        if args.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(args.jobs, len(DIRECTIONS)), mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_one_thread) as pool:
                reports = list(pool.map(_direction, [task] * len(DIRECTIONS), DIRECTIONS))
        else:
            reports = [_direction(task, d) for d in DIRECTIONS]
        for r in reports:
            print(f"{r['source_label']} -> {r['target_label']}: {r['sentences']} sentences in {r['seconds']:.0f} s",
                  file=sys.stderr)
    except TextVAEError as e:
        print(f"benchmark_transfer: error: {e}", file=sys.stderr)
        return 2

    command = "python scripts/benchmark_transfer.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    c = clf.info
    max_words = dc.max_words if args.max_words is None else args.max_words
    lines = [
        f"# Style transfer by latent arithmetic: KJV <-> WEB, {args.split} books",
        "",
        f"Reproduce with `{command}` (checkpoint `{args.checkpoint}`, trained for {vae.meta.get('step')} steps; "
        f"latent_dim {vae.latent_dim}, model.max_len {vae.model.cfg.max_len} tokens).",
        "",
        f"Inputs: the {args.split} books' verses ({data}) in the source style of {dc.min_words} to "
        f"{max_words or 'any number of'} words (the model was trained on verses of {dc.min_words} to "
        f"{dc.max_words or 'any number of'} words); references: the same verses in the target style ({parallel}, "
        "joined on `id`)"
        + (f"; first {args.limit} per direction" if args.limit else "") + ".",
        "",
        f"Style accuracy: share of outputs that textvae's style classifier labels as the target style. "
        f"Classifier: {c.get('model')}, {c.get('buckets')} hashed buckets, trained on {c.get('train_file')} "
        f"({c.get('train_sentences')} sentences), held-out accuracy "
        f"{100 * c.get('heldout_accuracy', float('nan')):.1f}% on {c.get('heldout_file')}. "
        "Self-BLEU: corpus BLEU of the outputs against their inputs (content kept); ref-BLEU: against the "
        "references; GM: geometric mean sqrt(accuracy in % x BLEU). "
        f"`search` decodes up to {SEARCH_CANDIDATES} strengths (alpha/{SEARCH_CANDIDATES} ... alpha) on the "
        "`project` path and keeps the weakest "
        f"whose output its judge accepts; `closest` decodes {SEARCH_CANDIDATES} strengths on the `mean-diff` path, "
        f"each greedily and {CLOSEST_SAMPLES} times by nucleus sampling, and keeps the candidate its judge accepts "
        "with the highest sentence BLEU against the source (none accepted: the greedy output at full strength). "
        "For both, the alpha column shows the largest strength and the mean strength used. "
        f"Judge, unless the method names one: textvae's default `{DEFAULT_JUDGE}`, which is `char` here (the "
        "training file is at hand): a second classifier that is not the scorer: "
        f"{judge.info.get('model')}, seed {judge.info.get('seed')}, trained on the same file, held-out accuracy "
        f"{100 * judge.info.get('heldout_accuracy', float('nan')):.1f}%; it accepts a target probability of at "
        f"least {JUDGE_THRESHOLD:g}. `latent`: the re-encoded output lies past the midpoint of the two attribute "
        "vectors. `classifier`: the scorer itself, so its accuracy is optimistic."
        + f" Every decode adds {copy_bias:g} nats to the logits of the source sentence's own tokens, each for as "
        "many uses as the source has of it (`--copy-bias`; 0: decoded from the code alone).",
        "",
        f"sacrebleu signature: `{reports[0]['signature']}`",
    ]
    for r in reports:
        lines += ["", f"## {r['source_label']} -> {r['target_label']} ({r['sentences']} sentences, "
                      f"{r['truncated']} truncated to the model's length limit; {r['seconds']:.0f} s)", "",
                  format_transfer_table(r["rows"]), "", "Strength sweep:", "", format_transfer_table(r["sweep"]), "",
                  "Best of the sweep by GM(acc, ref-BLEU), per method:", "", _best(r["sweep"]), "",
                  f"Examples ({r['rows'][-1]['method']}, alpha {r['rows'][-1]['alpha']:g}):", ""]
        for e in r["examples"][: args.examples]:
            lines += [f"- source: {e['source']}", f"  - output: {e['output']}", f"  - reference: {e['reference']}"]
    text = "\n".join(lines) + "\n"
    atomic_write(out, text)
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _direction(task: dict, direction: tuple[str, str]) -> dict:
    """One direction's report (a function of its arguments only, so that workers can run it)."""
    from textvae import TextVAE
    from textvae.transfer import DEFAULT_METHOD, Options, evaluate_checkpoint

    os.chdir(REPO)
    source, target = direction
    t0 = time.perf_counter()
    vae = TextVAE.from_pretrained(task["checkpoint"], device=task["device"])
    opts = Options(task["method"] or DEFAULT_METHOD, task["alpha"], seed=task["seed"], copy_bias=task["copy_bias"])
    r = evaluate_checkpoint(vae, source, target, opts, data=task["data"], label_column="style", refs=task["parallel"],
                            refs_column=target, id_column="id", limit=task["limit"], max_words=task["max_words"],
                            sweep=task["sweep"], methods=task["methods"])
    r["seconds"] = time.perf_counter() - t0
    return r


def _best(rows: list[dict]) -> str:
    best: dict[str, dict] = {}
    for r in rows:
        if r["method"] not in best or r["gm_ref"] > best[r["method"]]["gm_ref"]:
            best[r["method"]] = r
    lines = ["| method | alpha | style acc. | ref-BLEU | GM(acc, ref-BLEU) |", "|---|---:|---:|---:|---:|"]
    for m, r in best.items():
        lines.append(f"| {m} | {r['alpha']:g} | {100 * r['accuracy']:.1f}% | {r['ref_bleu']:.1f} | {r['gm_ref']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
