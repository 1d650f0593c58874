"""Corpora: local files or hub datasets -> cleaned ``datasets.Dataset`` -> length-bucketed batches.

Flow: :func:`load_split` reads one split through Hugging Face ``datasets``;
:func:`clean` strips and filters it and says how many rows each step dropped;
:func:`tokenize` adds ``ids`` with a cached ``Dataset.map``; :class:`BucketBatcher`
yields batches of similar length; :func:`collate` pads them into a :class:`Batch`.

Every other reader of sentences is here too, so that the command line, the style classifiers,
the transfer evaluation, the latent maps and the web demo clean text the same way:
:func:`read_sentences` / :func:`read_lines` (a text file or stdin, one sentence per line),
:func:`load_texts` (the cleaned text column of a data file), :func:`read_labelled` (texts with
labels and ids) and :func:`check_sentences` (sentences given by a caller).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from textvae.errors import DataError, InputError
from textvae.tokenizer import Tokenizer

log = logging.getLogger("textvae")

# file suffix -> datasets builder name
_FORMATS = {".txt": "text", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _looks_local(source: str) -> bool:
    p = Path(source)
    return p.exists() or _suffix(p) in _FORMATS or source.startswith((".", "/", "~"))


def _root_message(e: BaseException) -> str:
    """The innermost cause's first line: datasets wraps parser errors in generic ones."""
    chain = [e]
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
        chain.append(e)
    messages = [str(x).strip().splitlines()[0] for x in chain if str(x).strip()]
    # prefer a message that says where (a line or row), else the innermost one
    located = [m for m in messages if " line " in m or " row " in m]
    best = located[-1] if located else (messages[-1] if messages else type(chain[-1]).__name__)
    return best[:300]


def _first_bad_json_line(path: Path) -> Optional[str]:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f"line {lineno} is not valid JSON ({e.msg})"
    return None


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs parser failures itself; textvae reports them in one line instead."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_utf8(path: Path) -> None:
    """Raise :class:`DataError` naming the first line that is not valid UTF-8."""
    if _suffix(path) == ".parquet":
        return
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: line {lineno} is not valid UTF-8 (byte {e.start} of the line)") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def local_format(source: str, path: Path) -> tuple[str, dict[str, Any]]:
    """The ``datasets`` builder and its arguments for a local data file, after checking that the
    file exists, is a file, has a known type and is not empty (each failure: one DataError)."""
    if not path.exists():
        raise DataError(f"data file not found: {source}")
    if path.is_dir():
        raise DataError(f"{source} is a folder; give a data file")
    fmt = _FORMATS.get(_suffix(path))
    if fmt is None:
        raise DataError(f"{source}: unknown file type; use one of {', '.join(sorted(_FORMATS))} (optionally .gz)")
    if path.stat().st_size == 0:
        raise DataError(f"data file is empty: {source}")
    kwargs: dict[str, Any] = {"delimiter": "\t"} if _suffix(path) == ".tsv" else {}
    if fmt == "text":
        kwargs["keep_linebreaks"] = False
    return fmt, kwargs


def load_split(source: str, split: str = "train", text_column: str = "text", label_column: Optional[str] = None):
    """Load one split of a corpus as a ``datasets.Dataset``.

    Args:
        source: a local .txt (one sentence per line), .csv, .tsv, .json/.jsonl or .parquet
            file (optionally gzip-compressed), or a Hugging Face hub dataset name.
        split: split name for hub datasets (a local file is its own split).
        text_column: column with the sentences (.txt files have 'text').
        label_column: optional column with labels; checked to exist.
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(os.path.expanduser(source))
    if _looks_local(source):
        fmt, kwargs = local_format(source, path)
        check_utf8(path)
        try:
            with _quiet_datasets():
                ds = datasets.load_dataset(fmt, data_files={"train": str(path)}, split="train", **kwargs)
        except Exception as e:  # datasets wraps parser errors in many exception types
            where = _first_bad_json_line(path) if fmt == "json" and _suffix(path) == ".jsonl" else None
            raise DataError(f"cannot parse {source} as {fmt}: {where or _root_message(e)}") from None
    else:
        try:
            with _quiet_datasets():
                ds = datasets.load_dataset(source, split=split)
        except Exception as e:
            raise DataError(f"cannot load dataset {source!r} split {split!r} (is it a local file or a hub "
                            f"dataset you can reach?): {_root_message(e)}") from None
    for col in (text_column, label_column):
        if col is not None and col not in ds.column_names:
            raise DataError(f"{source}: no column {col!r}; columns are: {', '.join(ds.column_names)}")
    return ds


@dataclass
class CleanReport:
    rows: int
    empty: int
    too_short: int
    too_long: int
    kept: int

    def __str__(self) -> str:
        return (f"{self.rows} rows: dropped {self.empty} empty, {self.too_short} too short, "
                f"{self.too_long} too long; kept {self.kept}")


def normalise_text(text: Optional[str]) -> str:
    """Strip (a byte-order mark too) and collapse every run of whitespace to one space."""
    return " ".join(text.replace("\ufeff", " ").split()) if text else ""


def clean(ds, text_column: str = "text", min_words: int = 1, max_words: int = 0, label_column: Optional[str] = None):
    """Normalise whitespace, drop empty rows, filter by word count. Returns (dataset, CleanReport)."""
    rows = len(ds)
    keep = [text_column] + ([label_column] if label_column else [])
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])

    def _norm(batch):
        out = {"text": [normalise_text(t if isinstance(t, str) else (None if t is None else str(t))) for t in batch[text_column]]}
        if label_column:
            out["label"] = [None if v is None else str(v) for v in batch[label_column]]
        return out

    ds = ds.map(_norm, batched=True, remove_columns=ds.column_names, desc="clean")
    ds = ds.filter(lambda b: [bool(t) for t in b["text"]], batched=True)
    empty = rows - len(ds)
    n = len(ds)
    if min_words > 1:
        ds = ds.filter(lambda b: [len(t.split()) >= min_words for t in b["text"]], batched=True)
    too_short = n - len(ds)
    n = len(ds)
    if max_words:
        ds = ds.filter(lambda b: [len(t.split()) <= max_words for t in b["text"]], batched=True)
    too_long = n - len(ds)
    return ds, CleanReport(rows, empty, too_short, too_long, len(ds))


def tokenize(ds, tok: Tokenizer, max_tokens: int, num_proc: int = 1):
    """Add ``ids`` (without bos/eos) and drop rows longer than ``max_tokens`` (bos/eos counted).

    ``Dataset.map`` caches the result on disk keyed by the data and the tokenizer.
    Returns (dataset, number of rows dropped for length).
    """
    digest = hashlib.sha256(tok.to_json().encode("utf-8")).hexdigest()[:16]
    fingerprint = hashlib.sha256(f"{ds._fingerprint}-{digest}".encode()).hexdigest()[:32]

    def _encode(batch):
        return {"ids": tok.encode_batch(batch["text"])}

    ds = ds.map(_encode, batched=True, num_proc=num_proc if num_proc > 1 else None,
                new_fingerprint=fingerprint, desc="tokenize")
    n = len(ds)
    limit = max_tokens - 2
    ds = ds.filter(lambda b: [len(x) <= limit for x in b["ids"]], batched=True)
    return ds, n - len(ds)


# --------------------------------------------------------------------------- batching


@dataclass
class Batch:
    """Padded tensors for one batch (B sentences, T = longest sentence + 1)."""

    enc_ids: torch.Tensor  # (B, T+1) bos, tokens, eos, pad...
    enc_mask: torch.Tensor  # (B, T+1) True on real tokens
    dec_in: torch.Tensor  # (B, T) bos, tokens, pad...
    targets: torch.Tensor  # (B, T) tokens, eos, pad...
    labels: Optional[torch.Tensor] = None  # (B,) label index, or None
    tokens: int = -1  # target tokens (eos included); -1: count them from enc_mask

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.enc_ids.to(device, non_blocking=True),
            self.enc_mask.to(device, non_blocking=True),
            self.dec_in.to(device, non_blocking=True),
            self.targets.to(device, non_blocking=True),
            None if self.labels is None else self.labels.to(device, non_blocking=True),
            self.tokens,
        )

    @property
    def n_tokens(self) -> int:
        """Target tokens (eos included), the unit of throughput."""
        if self.tokens >= 0:
            return self.tokens
        return int(self.enc_mask.sum()) - self.enc_ids.shape[0]


def collate(seqs: Sequence[Sequence[int]], tok: Tokenizer, labels: Optional[Sequence[int]] = None) -> Batch:
    """Pad token-id lists (no specials) into a :class:`Batch`."""
    B = len(seqs)
    T = max(len(s) for s in seqs) + 1
    enc = torch.full((B, T + 1), tok.pad_id, dtype=torch.long)
    dec_in = torch.full((B, T), tok.pad_id, dtype=torch.long)
    targets = torch.full((B, T), tok.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = torch.as_tensor(list(s), dtype=torch.long)
        n = len(s)
        enc[i, 0] = tok.bos_id
        enc[i, 1 : n + 1] = s
        enc[i, n + 1] = tok.eos_id
        dec_in[i, 0] = tok.bos_id
        dec_in[i, 1 : n + 1] = s
        targets[i, :n] = s
        targets[i, n] = tok.eos_id
    enc_mask = torch.zeros_like(enc, dtype=torch.bool)
    lengths = torch.tensor([len(s) + 2 for s in seqs])
    enc_mask = torch.arange(T + 1)[None, :] < lengths[:, None]
    if getattr(tok, "encoder_tokenizer", None) is not None:
        # A pretrained encoder reads the sentence through its own tokenizer (e.g. WordPiece in,
        # BPE out): the decoder's ids are decoded back to text, so that the encoder sees exactly
        # the sentence the decoder must rebuild (truncation included).
        enc, enc_mask = tok.encoder_tokenizer.batch([tok.decode(s) for s in seqs])
    lab = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)
    return Batch(enc, enc_mask, dec_in, targets, lab, int(lengths.sum()) - B)


class BucketBatcher:
    """Length-bucketed batches in a reproducible order, resumable at any batch.

    Each epoch shuffles the rows with a generator seeded by (seed, epoch), cuts the
    order into pools of ``batch_size * bucket_size`` rows, sorts each pool by length,
    cuts it into batches and shuffles the batches, so a batch holds sentences of
    similar length while the order stays random.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, bucket_size: int = 50, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        if len(lengths) == 0:
            raise DataError("no sentences to batch")
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.bucket_size = bucket_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = torch.argsort(self.lengths, stable=True)
            return [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        pool = self.batch_size * self.bucket_size
        batches: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            for i in range(0, len(chunk), self.batch_size):
                b = chunk[i : i + self.batch_size]
                if self.drop_last and len(b) < self.batch_size:
                    continue
                batches.append(b.tolist())
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in perm]

    def __len__(self) -> int:
        return len(self.epoch_batches(0))

    def iterate(self, epoch: int = 0, position: int = 0) -> Iterator[tuple[int, int, list[int]]]:
        """Yield (epoch, position after this batch, indices) forever, starting at (epoch, position)."""
        while True:
            batches = self.epoch_batches(epoch)
            for i in range(position, len(batches)):
                yield epoch, i + 1, batches[i]
            epoch, position = epoch + 1, 0


@dataclass
class Corpus:
    """A tokenised split held in memory: texts, ids, optional label indices."""

    texts: list[str]
    ids: list[list[int]]
    labels: Optional[list[int]] = None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int], tok: Tokenizer) -> Batch:
        lab = None if self.labels is None else [self.labels[i] for i in indices]
        return collate([self.ids[i] for i in indices], tok, lab)


def column(ds, name: str) -> list:
    """A dataset column as a Python list, read in one slice (iterating a ``datasets`` column
    reads it one row at a time)."""
    return ds[name][:]


def prepare_split(source: str, split: str, tok: Tokenizer, max_tokens: int, text_column: str = "text",
                  label_column: Optional[str] = None, min_words: int = 1, max_words: int = 0,
                  label_names: Optional[list[str]] = None, num_proc: int = 1, name: str = "train",
                  allow_unlabelled: bool = False) -> tuple[Corpus, list[str]]:
    """Load, clean and tokenise one split; log what was dropped; return (Corpus, label names).

    With ``allow_unlabelled`` (a conditional model's training data) a row with an empty label is
    kept as unlabelled (label index -1); otherwise it is an error. Label names come from the
    labelled rows, sorted, unless ``label_names`` gives them."""
    ds = load_split(source, split, text_column, label_column)
    ds, report = clean(ds, text_column, min_words, max_words, label_column)
    ds, too_many = tokenize(ds, tok, max_tokens, num_proc)
    log.info("%s (%s): %s; %d longer than %d tokens; %d sentences", name, source, report, too_many, max_tokens, len(ds))
    if len(ds) == 0:
        raise DataError(f"{source}: no sentences left after cleaning ({report}; {too_many} longer than {max_tokens} tokens)")
    labels = None
    if label_column:
        raw = [None if v is None or v.strip() == "" else v for v in column(ds, "label")]
        if not allow_unlabelled and any(v is None for v in raw):
            raise DataError(f"{source}: some rows have an empty {label_column!r} label")
        given = {v for v in raw if v is not None}
        if not given:
            raise DataError(f"{source}: no row has a {label_column!r} label")
        if label_names is None:
            label_names = sorted(given)
        index = {n: i for i, n in enumerate(label_names)}
        unknown = sorted(given - set(index))
        if unknown:
            raise DataError(f"{source}: unknown label {unknown[0]!r}; known labels: {', '.join(label_names)}")
        labels = [-1 if v is None else index[v] for v in raw]
    return Corpus(column(ds, "text"), column(ds, "ids"), labels), (label_names or [])


def load_texts(source: str, split: str, text_column: str, min_words: int = 1, max_words: int = 0, limit: int = 0,
               keep_empty: bool = False, report: bool = False) -> list[str]:
    """Cleaned texts of a data file or hub split, by the training pipeline's rules.

    Args:
        min_words, max_words: word-count filters (0: no upper limit).
        limit: keep the first N (0: all).
        keep_empty: keep every row, empty ones as "" (no filters): one output per input row.
        report: log what cleaning dropped.
    """
    ds = load_split(source, split, text_column)
    if keep_empty:
        texts = [normalise_text(t if isinstance(t, str) else "") for t in column(ds, text_column)]
    else:
        ds, dropped = clean(ds, text_column, min_words, max_words)
        if report:
            log.info("%s: %s", source, dropped)
        if len(ds) == 0:
            raise DataError(f"{source}: no sentences left after cleaning ({dropped})")
        texts = column(ds, "text")
    if limit:
        texts = texts[:limit]
    if not texts:
        raise DataError(f"{source}: no sentences left after cleaning")
    return texts


def read_training_texts(source: str, split: str, text_column: str, min_words: int, max_words: int) -> list[str]:
    """Cleaned training sentences, for training a tokenizer."""
    return load_texts(source, split, text_column, min_words, max_words)


def read_labelled(source: str, text_column: str, label_column: str, split: str = "train", min_words: int = 1,
                  max_words: int = 0, id_column: Optional[str] = None, require_labels: bool = False
                  ) -> list[dict[str, Any]]:
    """Rows {text, label, id, row} of a labelled file, cleaned as for training: whitespace
    normalised, empty rows dropped, word-count filters applied. ``row`` is the position in the
    file. Rows without a label are dropped, or with ``require_labels`` an error."""
    ds = load_split(source, split, text_column, label_column)
    if id_column is not None and id_column not in ds.column_names:
        raise DataError(f"{source}: no column {id_column!r}; columns are: {', '.join(ds.column_names)}")
    ids = column(ds, id_column) if id_column else [None] * len(ds)
    rows = []
    for i, (text, label, key) in enumerate(zip(column(ds, text_column), column(ds, label_column), ids)):
        text = normalise_text(text if isinstance(text, str) else None)
        words = len(text.split())
        if not text or words < min_words or (max_words and words > max_words):
            continue
        if label is None or label == "":
            if require_labels:
                raise DataError(f"{source}: some rows have an empty {label_column!r} label")
            continue
        rows.append({"text": text, "label": str(label), "id": key, "row": i})
    return rows


# --------------------------------------------------------------------------- sentences from a caller


def _read_input(path: Optional[str], what: str) -> tuple[bytes, str]:
    if path is None or path == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise InputError("no input: stdin is closed; give --input FILE")
        if sys.stdin.isatty():
            raise InputError(f"no input: give --input FILE or pipe {what} on stdin")
        return stdin.read(), "stdin"
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input file not found: {path}")
    return p.read_bytes(), path


def _decoded_lines(raw: bytes, name: str) -> list[str]:
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError:
            raise InputError(f"{name}: line {i} is not valid UTF-8") from None
    return out


def read_lines(path: Optional[str]) -> list[str]:
    """Non-empty lines of a UTF-8 file or stdin (``None`` or '-'), as they are (tabs kept)."""
    raw, name = _read_input(path, "lines")
    lines = [line for line in _decoded_lines(raw, name) if line.strip()]
    if not lines:
        raise InputError(f"{name}: no lines")
    return lines


def read_sentences(path: Optional[str], keep_empty: bool = False) -> list[str]:
    """Sentences, one per line, from a UTF-8 text file or stdin (``None`` or '-'), whitespace
    normalised. Empty lines are skipped (with a warning), or kept as "" with ``keep_empty``."""
    raw, name = _read_input(path, "sentences")
    texts = [normalise_text(line) for line in _decoded_lines(raw, name)]
    empty = sum(not t for t in texts)
    if not keep_empty:
        texts = [t for t in texts if t]
        if empty:
            log.warning("skipped %d empty lines", empty)
    elif empty:
        log.warning("%d empty lines are encoded as empty sentences", empty)
    if not texts:
        raise InputError(f"{name}: no sentences")
    return texts


def read_input(path: Optional[str], text_column: str = "text", keep_empty: bool = False) -> list[str]:
    """Sentences given to a command: a text file (one per line) or stdin, or a data file
    (.csv/.tsv/.json/.jsonl/.parquet, optionally .gz), whose ``text_column`` is read and cleaned."""
    if path is None or path == "-" or _suffix(Path(path)) in ("", ".txt"):
        return read_sentences(path, keep_empty=keep_empty)
    if not Path(path).is_file():
        raise InputError(f"input file not found: {path}")
    return load_texts(path, "train", text_column, 0, 0, keep_empty=keep_empty)


def read_tab_separated(path: Optional[str], fields: int) -> list[tuple[str, ...]]:
    """Lines of ``fields`` non-empty tab-separated sentences (a file or stdin), normalised."""
    rows = []
    for i, line in enumerate(read_lines(path), start=1):
        parts = tuple(normalise_text(p) for p in line.split("\t"))
        if len(parts) != fields or not all(parts):
            raise InputError(f"line {i}: expected {fields} non-empty tab-separated sentences")
        rows.append(parts)
    return rows


def check_sentences(sentences: Any) -> list[str]:
    """Sentences given by a caller (one string or a sequence), normalised; a non-string, an
    empty sentence or no sentence at all is an :class:`InputError` that names it."""
    if isinstance(sentences, str):
        sentences = [sentences]
    texts = []
    for i, s in enumerate(sentences, start=1):
        if not isinstance(s, str):
            raise InputError(f"sentence {i} is not a string ({type(s).__name__})")
        t = normalise_text(s)
        if not t:
            raise InputError(f"sentence {i} is empty")
        texts.append(t)
    if not texts:
        raise InputError("no sentences given")
    return texts
