"""Training data as a stream, for corpora larger than memory (``data.streaming: true``).

The training split is opened as a ``datasets`` IterableDataset and never loaded whole:
rows are cleaned with the rules of ``textvae/data.py`` (whitespace, word limits), tokenised
a chunk at a time and length-bucketed in pools of ``batch_size * bucket_size`` sentences,
like :class:`textvae.data.BucketBatcher`. Each epoch the stream is shuffled through a buffer
reseeded by (seed, epoch), so the batches of an epoch are a pure function of the seed: a
resumed run skips the batches it has already trained on and continues with the same ones.

The tokenizer, the label names and the final attribute vectors come from a sample: the first
``data.streaming_sample`` cleaned sentences of the (unshuffled) stream.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Optional

import torch

from textvae.data import Corpus, _looks_local, _quiet_datasets, _root_message, local_format, normalise_text
from textvae.errors import DataError
from textvae.tokenizer import Tokenizer

log = logging.getLogger("textvae")

ENCODE_CHUNK = 1024  # sentences tokenised per call


def open_stream(source: str, split: str = "train", text_column: str = "text", label_column: Optional[str] = None):
    """Open one split of a corpus as a ``datasets`` IterableDataset and check its columns.

    Args:
        source: a local file (the forms of :func:`textvae.data.load_split`) or a hub dataset name.
        split: split name for hub datasets.
        text_column, label_column: checked against the first row (a stream's columns are
            only known once it is read).
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(os.path.expanduser(source))
    try:
        with _quiet_datasets():
            if _looks_local(source):
                fmt, kwargs = local_format(source, path)
                ds = datasets.load_dataset(fmt, data_files={"train": str(path)}, split="train", streaming=True, **kwargs)
            else:
                ds = datasets.load_dataset(source, split=split, streaming=True)
            first = next(iter(ds), None)
    except DataError:
        raise
    except Exception as e:  # datasets wraps parser and network errors in many exception types
        raise DataError(f"cannot stream {source!r} (split {split!r}): {_root_message(e)}") from None
    if first is None:
        raise DataError(f"{source}: the stream has no rows")
    for col in (text_column, label_column):
        if col is not None and col not in first:
            raise DataError(f"{source}: no column {col!r} in the stream; columns are: {', '.join(first)}")
    return ds


class StreamingCorpus:
    """A training split read as a stream: cleaned rows, a sample, and length-bucketed batches."""

    def __init__(self, source: str, split: str = "train", text_column: str = "text",
                 label_column: Optional[str] = None, min_words: int = 1, max_words: int = 0,
                 seed: int = 0, shuffle_buffer: int = 10000):
        self.source = source
        self.text_column = text_column
        self.label_column = label_column
        self.min_words = min_words
        self.max_words = max_words
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.ds = open_stream(source, split, text_column, label_column)

    def rows(self, epoch: Optional[int] = None) -> Iterator[tuple[str, Optional[str]]]:
        """Cleaned (text, label) pairs; in stream order, or shuffled for ``epoch``."""
        ds = self.ds
        if epoch is not None:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(epoch)  # the buffer's seed becomes seed + epoch
        it = iter(ds)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except Exception as e:  # a malformed row deep in a large file
                raise DataError(f"cannot read {self.source}: {_root_message(e)}") from None
            raw = row.get(self.text_column)
            text = normalise_text(raw if isinstance(raw, str) else (None if raw is None else str(raw)))
            if not text:
                continue
            words = len(text.split())
            if words < self.min_words or (self.max_words and words > self.max_words):
                continue
            label = None
            if self.label_column:
                value = row.get(self.label_column)
                label = None if value is None else str(value)
            yield text, label

    def sample(self, n: int) -> tuple[list[str], list[Optional[str]]]:
        """The first ``n`` cleaned sentences of the stream and their labels."""
        texts: list[str] = []
        labels: list[Optional[str]] = []
        for text, label in self.rows():
            texts.append(text)
            labels.append(label)
            if len(texts) >= n:
                break
        if not texts:
            raise DataError(f"{self.source}: no sentences left after cleaning (words {self.min_words}..{self.max_words or 'any'})")
        return texts, labels

    def sample_corpus(self, n: int, tok: Tokenizer, max_tokens: int) -> tuple[Corpus, list[str]]:
        """The sample as an in-memory :class:`Corpus` with label indices, and the label names."""
        texts, labels = self.sample(n)
        ids = tok.encode_batch(texts)
        keep = [i for i, x in enumerate(ids) if len(x) <= max_tokens - 2]
        if not keep:
            raise DataError(f"{self.source}: every sampled sentence is longer than {max_tokens} tokens")
        names: list[str] = []
        index = None
        if self.label_column:
            kept_labels = [labels[i] for i in keep]
            if any(v is None or v == "" for v in kept_labels):
                raise DataError(f"{self.source}: some rows have an empty {self.label_column!r} label")
            names = sorted(set(kept_labels))  # type: ignore[arg-type]
            lookup = {name: i for i, name in enumerate(names)}
            index = [lookup[v] for v in kept_labels]  # type: ignore[index]
        return Corpus([texts[i] for i in keep], [ids[i] for i in keep], index), names

    def batches(self, tok: Tokenizer, max_tokens: int, batch_size: int, bucket_size: int = 50,
                epoch: int = 0, position: int = 0) -> Iterator[tuple[int, int, list[list[int]]]]:
        """Yield (epoch, batches done in this epoch, token-id lists of one batch) forever,
        starting at (epoch, position) as :meth:`textvae.data.BucketBatcher.iterate` does.

        Each pool of ``batch_size * bucket_size`` sentences is sorted by length, cut into
        batches and the batches shuffled by a generator seeded by (seed, epoch, pool).
        Resuming at ``position`` re-reads the epoch's stream and skips that many batches.
        """
        while True:
            done = 0
            too_long = 0
            for pool_no, pool in enumerate(self._pools(tok, max_tokens, batch_size * bucket_size, epoch)):
                too_long += pool[1]
                seqs = sorted(pool[0], key=len)
                cut = [seqs[i : i + batch_size] for i in range(0, len(seqs), batch_size)]
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + pool_no)
                for j in torch.randperm(len(cut), generator=g).tolist():
                    done += 1
                    if done > position:
                        yield epoch, done, cut[j]
            if done == 0:
                raise DataError(f"{self.source}: no sentences of at most {max_tokens} tokens in the stream")
            if position == 0 or done > position:
                log.info("stream epoch %d: %d batches; %d sentences longer than %d tokens dropped",
                         epoch, done, too_long, max_tokens)
            epoch, position = epoch + 1, 0

    def _pools(self, tok: Tokenizer, max_tokens: int, pool_size: int, epoch: int
               ) -> Iterator[tuple[list[list[int]], int]]:
        """Pools of tokenised sentences (and how many were dropped for length while filling each)."""
        limit = max_tokens - 2
        pool: list[list[int]] = []
        dropped = 0
        chunk: list[str] = []

        def encode(texts: list[str]) -> Iterator[list[int]]:
            nonlocal dropped
            for ids in tok.encode_batch(texts):
                if len(ids) <= limit:
                    yield ids
                else:
                    dropped += 1

        def drain(texts: list[str]) -> Iterator[tuple[list[list[int]], int]]:
            nonlocal pool, dropped
            for ids in encode(texts):
                pool.append(ids)
                if len(pool) == pool_size:
                    yield pool, dropped
                    pool, dropped = [], 0

        for text, _ in self.rows(epoch):
            chunk.append(text)
            if len(chunk) == ENCODE_CHUNK:
                yield from drain(chunk)
                chunk = []
        yield from drain(chunk)
        if pool:
            yield pool, dropped
