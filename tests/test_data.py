"""textvae.data: loading local corpora, cleaning, tokenising, bucketing, collating."""

from __future__ import annotations

import csv
import gzip
import json
import random

import pytest
import torch

from helpers import TINY_DATA
from textvae import data
from textvae.config import TokenizerConfig
from textvae.errors import DataError
from textvae.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tok(tiny_texts):
    return train_bpe(tiny_texts, TokenizerConfig(kind="bpe", vocab_size=400))


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["train.txt", "train.csv", "train.jsonl"])
def test_tiny_files_load_with_the_same_text(name, tiny_texts):
    ds = data.load_split(str(TINY_DATA / name))
    assert len(ds) == 400
    assert "text" in ds.column_names
    assert list(ds["text"]) == tiny_texts


def test_jsonl_and_csv_have_labels():
    for name in ("train.jsonl", "train.csv"):
        ds = data.load_split(str(TINY_DATA / name), label_column="style")
        assert set(ds["style"]) == {"kjv", "web"}


def test_tsv_parquet_and_gzip(tmp_path):
    rows = [("In the beginning.", "a"), ("And it was so.", "b"), ("Amen.", "a")]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    ds = data.load_split(str(tsv), label_column="label")
    assert list(ds["text"]) == [t for t, _ in rows] and list(ds["label"]) == [lab for _, lab in rows]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": [t for t, _ in rows], "label": [lab for _, lab in rows]}), tmp_path / "c.parquet")
    ds = data.load_split(str(tmp_path / "c.parquet"), text_column="sentence", label_column="label")
    assert list(ds["sentence"]) == [t for t, _ in rows]

    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        for t, lab in rows:
            f.write(json.dumps({"text": t, "style": lab}) + "\n")
    ds = data.load_split(str(gz), label_column="style")
    assert list(ds["text"]) == [t for t, _ in rows]


def test_csv_with_quoted_commas(tmp_path):
    f = tmp_path / "q.csv"
    with f.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "style"])
        w.writerow(['He said, "Go."', "x"])
    assert data.load_split(str(f))["text"] == ['He said, "Go."']


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_split(str(tmp_path / "nope.txt"))


def test_empty_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        data.load_split(str(f))


@pytest.mark.parametrize("name", ["bad.txt", "bad.jsonl", "bad.jsonl.gz"])
def test_invalid_utf8_names_the_line(tmp_path, name):
    lines = [b'{"text": "first line"}\n', b'{"text": "second line"}\n', b'{"text": "caf\xe9 \xff"}\n',
             b'{"text": "fourth"}\n']
    if name.endswith(".txt"):
        lines = [b"first line\n", b"second line\n", b"caf\xe9 \xff\n", b"fourth\n"]
    payload = b"".join(lines)
    f = tmp_path / name
    f.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    with pytest.raises(DataError, match=r"line 3\b") as e:
        data.load_split(str(f))
    assert "UTF-8" in str(e.value)


def test_missing_text_column_lists_columns():
    with pytest.raises(DataError, match="'sentence'") as e:
        data.load_split(str(TINY_DATA / "train.jsonl"), text_column="sentence")
    for col in ("id", "book", "style", "text"):
        assert col in str(e.value)


def test_missing_label_column_lists_columns():
    with pytest.raises(DataError, match="'label'") as e:
        data.load_split(str(TINY_DATA / "train.csv"), label_column="label")
    for col in ("id", "style", "text"):
        assert col in str(e.value)


def test_folder_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="folder"):
        data.load_split(str(tmp_path) + "/")
    f = tmp_path / "c.docx"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unknown file type"):
        data.load_split(str(f))


def test_malformed_json(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="broken.jsonl"):
        data.load_split(str(f))


def test_unknown_label_in_valid_lists_known_labels(tmp_path, tok):
    _, names = data.prepare_split(str(TINY_DATA / "train.jsonl"), "train", tok, 64, label_column="style")
    assert names == ["kjv", "web"]
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps({"text": t, "style": s}) + "\n"
                             for t, s in [("And God said.", "kjv"), ("God said.", "modern")]), encoding="utf-8")
    with pytest.raises(DataError, match="'modern'") as e:
        data.prepare_split(str(valid), "train", tok, 64, label_column="style", label_names=names)
    assert "kjv" in str(e.value) and "web" in str(e.value)


def test_empty_label_is_an_error(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a b", "style": "x"}) + "\n" + json.dumps({"text": "c d", "style": ""}) + "\n",
                 encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        data.prepare_split(str(f), "train", tok, 64, label_column="style")


def test_nothing_left_after_cleaning(tmp_path, tok):
    f = tmp_path / "blank.txt"
    f.write_text("\n   \n\n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="no sentences left"):
        data.read_training_texts(str(f), "train", "text", 1, 0)
    with pytest.raises(DataError, match="no sentences left"):
        data.prepare_split(str(f), "train", tok, 64)
    # every sentence too long for the model
    with pytest.raises(DataError, match="longer than 4 tokens"):
        data.prepare_split(str(TINY_DATA / "valid.jsonl"), "train", tok, 4)


# --------------------------------------------------------------------------- cleaning


def test_clean_reports_counts(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\n".join([
        "one two three",  # kept
        "",  # empty
        "   \t ",  # empty after stripping
        "solo",  # too short (min 2)
        "  a  b   c   d e f ",  # too long (max 4)
        "  x    y ",  # kept, whitespace collapsed
        "w1 w2 w3 w4 w5 w6 w7",  # too long
        "a b c d",  # kept, exactly max
    ]) + "\n", encoding="utf-8")
    ds = data.load_split(str(f))
    assert len(ds) == 8
    cleaned, report = data.clean(ds, "text", min_words=2, max_words=4)
    assert (report.rows, report.empty, report.too_short, report.too_long, report.kept) == (8, 2, 1, 2, 3)
    assert list(cleaned["text"]) == ["one two three", "x y", "a b c d"]
    assert "dropped 2 empty, 1 too short, 2 too long; kept 3" in str(report)


def test_clean_keeps_labels_and_drops_other_columns():
    ds = data.load_split(str(TINY_DATA / "train.jsonl"), label_column="style")
    cleaned, report = data.clean(ds, "text", label_column="style")
    assert report.kept == 400 and report.empty == report.too_short == report.too_long == 0
    assert cleaned.column_names == ["text", "label"]
    assert list(cleaned["label"]) == list(ds["style"])


def test_tokenize_drops_long_rows(tok):
    ds, _ = data.clean(data.load_split(str(TINY_DATA / "train.jsonl")))
    limit = 24
    expected = sum(len(tok.encode(t)) <= limit - 2 for t in ds["text"])
    out, dropped = data.tokenize(ds, tok, limit)
    assert len(out) == expected and dropped == 400 - expected
    assert 0 < expected < 400
    for row in out.select(range(5)):
        assert row["ids"] == tok.encode(row["text"])


def test_prepare_split_corpus(tok):
    corpus, names = data.prepare_split(str(TINY_DATA / "train.jsonl"), "train", tok, 64, label_column="style")
    assert len(corpus) == len(corpus.texts) == len(corpus.labels)
    assert corpus.ids[0] == tok.encode(corpus.texts[0])
    raw = [json.loads(line) for line in (TINY_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    by_text = {}
    for r in raw:
        by_text.setdefault(r["text"], set()).add(names.index(r["style"]))
    assert all(lab in by_text[t] for t, lab in zip(corpus.texts, corpus.labels))


# --------------------------------------------------------------------------- collate


def test_collate_layout(tok):
    seqs = [[10, 11, 12], [20], [30, 31, 32, 33, 34]]
    b = data.collate(seqs, tok, labels=[1, 0, 1])
    T = 5 + 1
    assert b.enc_ids.shape == (3, T + 1) and b.dec_in.shape == (3, T) and b.targets.shape == (3, T)
    assert b.enc_ids[1].tolist() == [tok.bos_id, 20, tok.eos_id] + [tok.pad_id] * 4
    assert b.enc_ids[2].tolist() == [tok.bos_id, 30, 31, 32, 33, 34, tok.eos_id]
    assert b.enc_mask[1].tolist() == [True] * 3 + [False] * 4
    assert b.enc_mask.sum(1).tolist() == [5, 3, 7]
    assert b.dec_in[0].tolist() == [tok.bos_id, 10, 11, 12, tok.pad_id, tok.pad_id]
    assert b.targets[0].tolist() == [10, 11, 12, tok.eos_id, tok.pad_id, tok.pad_id]
    for i, s in enumerate(seqs):
        n = len(s)
        # the decoder input is the target shifted right by one, starting with bos
        assert b.dec_in[i, 1 : n + 1].tolist() == b.targets[i, :n].tolist() == s
        assert b.targets[i, n] == tok.eos_id
        assert (b.dec_in[i] == tok.eos_id).sum() == 0
    assert b.labels.tolist() == [1, 0, 1]
    assert b.n_tokens == sum(len(s) + 1 for s in seqs)
    assert data.collate(seqs, tok).labels is None


# --------------------------------------------------------------------------- batching


def random_lengths(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


def test_batcher_covers_every_index_once():
    lengths = random_lengths(1003)
    batcher = data.BucketBatcher(lengths, batch_size=16, bucket_size=5, seed=1)
    for epoch in (0, 1):
        batches = batcher.epoch_batches(epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert all(1 <= len(b) <= 16 for b in batches)
    assert batcher.epoch_batches(0) != batcher.epoch_batches(1)  # reshuffled every epoch
    assert len(batcher) == len(batcher.epoch_batches(0))


def test_batcher_drop_last_and_no_shuffle():
    lengths = random_lengths(100)
    batches = data.BucketBatcher(lengths, batch_size=16, bucket_size=2, drop_last=True).epoch_batches(0)
    assert all(len(b) == 16 for b in batches)
    ordered = data.BucketBatcher(lengths, batch_size=16, shuffle=False).epoch_batches(3)
    flat = [i for b in ordered for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_batcher_is_reproducible_for_a_seed():
    lengths = random_lengths()
    a = data.BucketBatcher(lengths, 16, 5, seed=7).epoch_batches(2)
    b = data.BucketBatcher(lengths, 16, 5, seed=7).epoch_batches(2)
    c = data.BucketBatcher(lengths, 16, 5, seed=8).epoch_batches(2)
    assert a == b
    assert a != c


def test_batcher_resumes_at_a_position():
    batcher = data.BucketBatcher(random_lengths(200), batch_size=16, bucket_size=3, seed=3)
    per_epoch = len(batcher)  # 13 batches
    it = batcher.iterate()
    full = [next(it) for _ in range(3 * per_epoch)]
    # positions count batches within the epoch and the epoch rolls over
    assert full[0][:2] == (0, 1) and full[per_epoch - 1][:2] == (0, per_epoch) and full[per_epoch][:2] == (1, 1)
    for k in (0, 5, per_epoch - 1, per_epoch, per_epoch + 4):
        epoch, position, _ = full[k]
        resumed = batcher.iterate(epoch, position)
        assert [next(resumed) for _ in range(per_epoch)] == full[k + 1 : k + 1 + per_epoch]


def padded_fraction(batches, lengths) -> float:
    pad = total = 0
    for b in batches:
        longest = max(lengths[i] for i in b)
        total += longest * len(b)
        pad += sum(longest - lengths[i] for i in b)
    return pad / total


def test_bucketing_reduces_padding(tok):
    corpus, _ = data.prepare_split(str(TINY_DATA / "train.jsonl"), "train", tok, 64)
    for lengths in (random_lengths(2000), [len(x) + 2 for x in corpus.ids]):
        bucketed = data.BucketBatcher(lengths, 16, bucket_size=50, seed=0).epoch_batches(0)
        random_batches = data.BucketBatcher(lengths, 16, bucket_size=1, seed=0).epoch_batches(0)
        fb, fr = padded_fraction(bucketed, lengths), padded_fraction(random_batches, lengths)
        assert fb < 0.5 * fr, (fb, fr)


def test_batcher_rejects_empty():
    with pytest.raises(DataError):
        data.BucketBatcher([], 4)


def test_corpus_batch(tok):
    corpus = data.Corpus(["a", "b c"], [[5], [6, 7]], [0, 1])
    b = corpus.batch([1, 0], tok)
    assert b.enc_ids[0, :4].tolist() == [tok.bos_id, 6, 7, tok.eos_id]
    assert b.labels.tolist() == [1, 0]
    assert isinstance(b.to(torch.device("cpu")).enc_ids, torch.Tensor)


# --------------------------------------------------------------------------- bugs found


@pytest.mark.parametrize("name, content", [
    ("broken.jsonl", '{"text": "a b"}\n{"text": \n'),
    ("broken.csv", 'text,style\n"a b,x\n'),
])
def test_parse_error_names_the_problem(tmp_path, name, content):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        data.load_split(str(f))
    reason = str(e.value).split(name, 1)[1].lower()  # the part after the file name
    assert "row" in reason or "line" in reason, str(e.value)


def test_txt_byte_order_mark_is_dropped(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfIn the beginning.\nAmen.\n")
    cleaned, _ = data.clean(data.load_split(str(f)))
    assert list(cleaned["text"]) == ["In the beginning.", "Amen."]
