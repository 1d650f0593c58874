"""textvae.streaming: training from a datasets stream (data.streaming: true)."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, TINY_DATA, read_jsonl, tiny_config
from textvae import checkpoint as ckpt
from textvae.data import normalise_text
from textvae.errors import DataError
from textvae.streaming import StreamingCorpus, open_stream
from textvae.tokenizer import build_tokenizer
from textvae.train import train

STREAM = ["data.streaming=true", "data.streaming_sample=300", "data.shuffle_buffer=64"]


@pytest.fixture(scope="module")
def stream_tok():
    from textvae.config import TokenizerConfig

    corpus = StreamingCorpus(str(TINY_DATA / "train.jsonl"), text_column="text", label_column="style")
    texts, _ = corpus.sample(300)
    return build_tokenizer(TokenizerConfig(vocab_size=400), texts)


def test_sample_is_the_start_of_the_stream():
    corpus = StreamingCorpus(str(TINY_DATA / "train.jsonl"), text_column="text", label_column="style", min_words=3)
    rows = read_jsonl(TINY_DATA / "train.jsonl")
    expected = [normalise_text(r["text"]) for r in rows if len(normalise_text(r["text"]).split()) >= 3][:50]
    texts, labels = corpus.sample(50)
    assert texts == expected
    assert set(labels) <= {r["style"] for r in rows} and len(labels) == 50


def test_an_epoch_holds_every_sentence_once(stream_tok):
    corpus = StreamingCorpus(str(TINY_DATA / "train.jsonl"), seed=3, shuffle_buffer=50)
    max_tokens = 64
    texts = [normalise_text(r["text"]) for r in read_jsonl(TINY_DATA / "train.jsonl")]
    fits = [tuple(x) for x in stream_tok.encode_batch(texts) if len(x) <= max_tokens - 2]
    it = corpus.batches(stream_tok, max_tokens, batch_size=16, bucket_size=4)
    epoch0, epoch1 = [], []
    for epoch, position, batch in it:
        if epoch == 2:
            break
        (epoch0 if epoch == 0 else epoch1).append((position, batch))
    assert [p for p, _ in epoch0] == list(range(1, len(epoch0) + 1))
    assert all(1 <= len(b) <= 16 for _, b in epoch0)
    seen = Counter(tuple(s) for _, b in epoch0 for s in b)
    assert seen == Counter(fits)
    assert Counter(tuple(s) for _, b in epoch1 for s in b) == seen
    assert [b for _, b in epoch0] != [b for _, b in epoch1]  # reshuffled each epoch
    # length bucketing: a batch spans far fewer lengths than the corpus does
    spread = sum(max(map(len, b)) - min(map(len, b)) for _, b in epoch0) / len(epoch0)
    assert spread < (max(map(len, fits)) - min(map(len, fits))) / 2
    # resuming at a position gives the batches that followed it
    again = corpus.batches(stream_tok, max_tokens, batch_size=16, bucket_size=4, epoch=0, position=5)
    assert [next(again) for _ in range(3)] == [(0, p, b) for p, b in epoch0[5:8]]


def test_streaming_trains_and_resumes_exactly(tmp_path):
    # 400 sentences in batches of 64: 7 batches an epoch; stop at 5, resume past the epoch's end
    cfg = tiny_config(STREAM + ["data.batch_size=64", "train.max_steps=10", "train.log_every=1",
                                "train.save_every=0", "train.eval_every=0"])
    a, b = tmp_path / "A", tmp_path / "B"
    train(cfg, a)
    train(cfg, b, stop_after=5)
    state = ckpt.load_trainer_state(b)
    assert (state["epoch"], state["position"]) == (0, 5)
    train(cfg, b, resume=True)
    ra = [r for r in read_jsonl(a / "metrics.jsonl") if r["split"] == "train"]
    rb = [r for r in read_jsonl(b / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rb] == list(range(1, 11))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert ra[-1]["epoch"] == 1
    wa, wb = load_file(str(a / "checkpoint" / ckpt.WEIGHTS)), load_file(str(b / "checkpoint" / ckpt.WEIGHTS))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    loaded = ckpt.load_pretrained(a)
    assert loaded.label_names == ["kjv", "web"]  # from the sample
    assert loaded.config.data.streaming is True
    assert (a / "checkpoint" / "attributes.json").exists()


def test_streaming_reads_gzip_and_txt(tmp_path):
    rows = read_jsonl(TINY_DATA / "train.jsonl")[:30]
    gz = tmp_path / "train.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    texts, _ = StreamingCorpus(str(gz)).sample(100)
    assert texts == [normalise_text(r["text"]) for r in rows]
    txt = tmp_path / "train.txt"
    txt.write_text("\n".join(r["text"] for r in rows) + "\n", encoding="utf-8")
    assert StreamingCorpus(str(txt)).sample(100)[0] == texts


def test_stream_without_the_text_column(tmp_path, run_cli):
    with pytest.raises(DataError, match=r"no column 'sentence' in the stream; columns are: id, book, style, text"):
        open_stream(str(TINY_DATA / "train.jsonl"), text_column="sentence")
    rc, _, err = run_cli("train", "--config", REPO_ROOT / "configs" / "tiny.yaml", "--out", tmp_path / "run",
                         "--set", f"data.train={TINY_DATA / 'train.jsonl'}", "--set", "data.streaming=true",
                         "--set", "data.text_column=sentence")
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "no column 'sentence'" in err


def test_stream_bad_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        open_stream(str(empty))
    with pytest.raises(DataError, match="not found"):
        open_stream(str(tmp_path / "missing.jsonl"))
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo words\n", encoding="utf-8")
    with pytest.raises(DataError, match="no sentences left"):
        StreamingCorpus(str(short), min_words=3).sample(10)
