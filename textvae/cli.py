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

from textvae.errors import TextVAEError

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
    loaded = load_pretrained(args.checkpoint, device=_device(args.device))
    texts, finished = sample(loaded.model, loaded.tokenizer, args.n, seed=args.seed, strategy=args.strategy,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             beam_size=args.beam_size, max_len=args.max_len)
    for t in texts:
        print(t)
    if args.stats:
        from textvae.data import read_training_texts

        dc = loaded.config.data
        train_texts = read_training_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
        stats = sample_quality(texts, finished, train_texts)
        print(json.dumps({k: round(v, 4) for k, v in stats.items()}), file=sys.stderr)
    return 0


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--stats", action="store_true",
                   help="print eos rate, novelty against the training data and distinct-n as JSON on stderr")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
    "train": (cmd_train, _add_train),
    "sample": (cmd_sample, _add_sample),
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
        print(f"textvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"textvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
