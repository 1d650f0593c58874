"""textvae.tokenizer: trained BPE and unigram tokenizers, special ids, save/load."""

from __future__ import annotations

import json

import pytest

from textvae.config import TokenizerConfig
from textvae.errors import CheckpointError, ConfigError
from textvae.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, build_tokenizer, train_bpe, train_unigram

KINDS = ("bpe", "unigram")


@pytest.fixture(scope="module", params=KINDS)
def tok(request, tiny_texts) -> Tokenizer:
    return build_tokenizer(TokenizerConfig(kind=request.param, vocab_size=400), tiny_texts)


def test_special_ids_are_fixed(tok):
    assert tok.special_ids == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    for idx, token in enumerate((PAD, BOS, EOS, UNK)):
        assert tok.backend.id_to_token(idx) == token


def test_vocab_size_near_target(tok):
    # BPE stops exactly at the target; sentencepiece may stop a little short of it
    assert 300 <= tok.vocab_size <= 400


def test_round_trip_training_sentences(tok, tiny_texts):
    sample = tiny_texts[::7]
    for text in sample:
        ids = tok.encode(text)
        assert ids, text
        assert all(i not in (tok.pad_id, tok.bos_id, tok.eos_id) for i in ids)
        assert tok.unk_id not in ids  # every training character is covered
        assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok, tiny_texts):
    texts = tiny_texts[:10]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_tokenizer_compresses(tok, tiny_texts):
    # subword units: clearly fewer tokens than characters on the training data
    text = tiny_texts[0]
    assert len(tok.encode(text)) < 0.7 * len(text)


def test_decode_stops_at_eos_and_skips_specials(tok):
    ids = tok.encode("the earth")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("and heaven") + [tok.pad_id]) == "the earth"
    assert tok.decode([tok.pad_id, tok.bos_id] + ids) == "the earth"
    assert tok.decode([]) == ""


def test_save_load_same_ids(tok, tmp_path, tiny_texts):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))  # a plain tokenizers JSON file
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.special_ids == tok.special_ids
    for text in tiny_texts[:20] + ["Words never seen: zyxt qwv."]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_save_writes_only_through_atomic_write(tok, tmp_path, monkeypatch):
    import textvae.tokenizer

    calls = []
    monkeypatch.setattr(textvae.tokenizer, "atomic_write", lambda path, data, mkdir=True: calls.append((path, data)))
    tok.save(tmp_path / "tokenizer.json")
    assert calls == [(tmp_path / "tokenizer.json", tok.to_json())]
    assert not list(tmp_path.iterdir())  # the recorder wrote nothing, and nothing else did


def test_training_is_deterministic(tiny_texts):
    for fn, kind in ((train_bpe, "bpe"), (train_unigram, "unigram")):
        cfg = TokenizerConfig(kind=kind, vocab_size=300)
        assert fn(tiny_texts, cfg).to_json() == fn(tiny_texts, cfg).to_json()


def test_lowercase_option(tiny_texts):
    tok = train_bpe(tiny_texts, TokenizerConfig(kind="bpe", vocab_size=300, lowercase=True))
    assert tok.encode("And GOD said") == tok.encode("and god said")
    assert tok.decode(tok.encode("And GOD said")) == "and god said"


def test_bpe_encodes_unseen_characters_without_unk(tiny_texts):
    tok = train_bpe(tiny_texts, TokenizerConfig(kind="bpe", vocab_size=300))
    ids = tok.encode("caf\u00e9 \u2014 \u65e5\u672c")
    assert tok.unk_id not in ids
    assert tok.decode(ids) == "caf\u00e9 \u2014 \u65e5\u672c"


def test_build_tokenizer_needs_text():
    with pytest.raises(ConfigError, match="training text"):
        build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=100), None)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="damaged"):
        Tokenizer.load(bad)


def test_load_rejects_tokenizer_without_specials(tmp_path, tiny_texts):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.train_from_iterator(tiny_texts, trainers.BpeTrainer(vocab_size=300, special_tokens=[PAD],
                                                                show_progress=False))
    path = tmp_path / "tokenizer.json"
    path.write_text(backend.to_str(), encoding="utf-8")
    with pytest.raises(CheckpointError, match="bos"):
        Tokenizer.load(path)


@pytest.mark.parametrize("kind", KINDS)
def test_special_token_text_is_plain_text(kind, tiny_texts):
    tok = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=300), tiny_texts)
    ids = tok.encode("the end </s> and <pad> and <s> again")
    assert not set(ids) & {tok.pad_id, tok.bos_id, tok.eos_id}


def test_pretrained_tokenizer_folder_is_accepted(tmp_path, tiny_texts):
    """A folder saved by transformers (AutoTokenizer) works as tokenizer.kind=pretrained:
    its own special tokens become pad/bos/eos/unk, missing ones are added."""
    from transformers import PreTrainedTokenizerFast

    from textvae.tokenizer import Tokenizer

    base = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), tiny_texts)
    hf = PreTrainedTokenizerFast(tokenizer_object=base.backend, unk_token="<unk>", eos_token="</s>")
    folder = tmp_path / "pretrained"
    hf.save_pretrained(folder)
    tok = build_tokenizer(TokenizerConfig(kind="pretrained", path=str(folder)), None)
    assert tok.eos_id == base.eos_id and tok.unk_id == base.unk_id
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}) == 4
    assert tok.encode(tiny_texts[0]) == base.encode(tiny_texts[0])
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json", tok.specials)
    assert again.special_ids == tok.special_ids


def test_missing_pretrained_tokenizer_says_so(tmp_path):
    from textvae.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot load a pretrained tokenizer"):
        build_tokenizer(TokenizerConfig(kind="pretrained", path=str(tmp_path / "nope")), None)
