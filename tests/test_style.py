"""The style classifier and the transfer scores (textvae/style.py)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import TINY_DATA
from textvae import TextVAE
from textvae import style, transfer
from textvae.data import read_labelled
from textvae.errors import DataError


@pytest.fixture(scope="module")
def tiny_rows():
    return (read_labelled(str(TINY_DATA / "train.jsonl"), "text", "style"),
            read_labelled(str(TINY_DATA / "valid.jsonl"), "text", "style"))


@pytest.fixture(scope="module")
def clf(tiny_rows):
    train, _ = tiny_rows
    return style.train_classifier([r["text"] for r in train], [r["label"] for r in train], buckets=1 << 14)


def test_ngrams_keep_case_and_punctuation():
    grams = style.ngrams("The LORD said,")
    assert grams[:4] == ["The", "LORD", "said", ","]
    assert "<s>\x1fThe" in grams and ",\x1f</s>" in grams and "LORD\x1fsaid" in grams


def test_features_are_deterministic_and_normalised():
    idx, off, w = style.featurize(["Jesus wept.", "And he said unto them"], 1 << 10)
    again = style.featurize(["Jesus wept.", "And he said unto them"], 1 << 10)
    assert all(torch.equal(a, b) for a, b in zip((idx, off, w), again))
    assert off.tolist()[0] == 0 and int(idx.max()) < 1 << 10
    first = w[: off[1]]
    assert float((first**2).sum()) == pytest.approx(1.0)  # unit L2 norm per sentence


def test_char_ngrams_cover_the_text_with_markers():
    grams = style.char_ngrams("Amen.")
    assert "\x02A" in grams and ".\x03" in grams and "men." in grams
    assert len(grams) == 6 + 5 + 4  # 2-, 3- and 4-grams of the 7 marked characters
    idx, off, w = style.featurize(["Amen."], 1 << 10, "char")
    assert float((w**2).sum()) == pytest.approx(1.0)
    with pytest.raises(Exception, match="unknown classifier features"):
        style.train_classifier(["a b", "c d"], ["x", "y"], features="morse")


def test_char_judge_learns_style_and_differs_from_the_scorer(clf, tiny_rows):
    train, valid = tiny_rows
    judge = style.train_classifier([r["text"] for r in train], [r["label"] for r in train], buckets=1 << 14,
                                   seed=1, features="char")
    assert judge.features == "char" and "character" in judge.info["model"]
    acc = judge.accuracy([r["text"] for r in valid], [r["label"] for r in valid])
    assert acc >= 0.7, acc
    text = ["And he said unto them, Go ye."]
    assert not torch.allclose(judge.predict_proba(text), clf.predict_proba(text))


def test_classifier_beats_chance_clearly_on_tiny(clf, tiny_rows):
    _, valid = tiny_rows
    assert clf.labels == ["kjv", "web"]
    assert clf.info["train_accuracy"] > 0.95
    acc = clf.accuracy([r["text"] for r in valid], [r["label"] for r in valid])
    assert acc >= 0.7, acc  # chance is 0.5 on these 60 balanced sentences
    assert clf.predict(["And he said unto them, Go ye.", "He said to them, You go."]) == ["kjv", "web"]


def test_training_is_deterministic(tiny_rows):
    train, _ = tiny_rows
    args = ([r["text"] for r in train], [r["label"] for r in train])
    a = style.train_classifier(*args, buckets=1 << 12, seed=1)
    b = style.train_classifier(*args, buckets=1 << 12, seed=1)
    c = style.train_classifier(*args, buckets=1 << 12, seed=2)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_one_label_is_not_enough():
    with pytest.raises(DataError, match="at least two labels"):
        style.train_classifier(["a b", "c d"], ["x", "x"])


def test_classifier_is_cached_in_the_checkpoint_and_keyed(copy_run, monkeypatch):
    vae = TextVAE.from_pretrained(copy_run())
    first = style.classifier_for(vae, buckets=1 << 12)
    assert (vae.path / style.CLASSIFIER).is_file() and (vae.path / style.CLASSIFIER_INFO).is_file()
    assert 0.5 < first.info["heldout_accuracy"] <= 1.0 and first.info["heldout_sentences"] == 60

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache is valid")

    monkeypatch.setattr(style, "train_classifier", no_training)
    cached = style.classifier_for(vae, buckets=1 << 12)
    assert torch.equal(cached.weight, first.weight) and cached.labels == first.labels
    with pytest.raises(AssertionError, match="retrained"):
        style.classifier_for(vae, buckets=1 << 12, seed=5)  # another key: the cache is stale


def test_judge_is_cached_apart_from_the_scorer(copy_run):
    vae = TextVAE.from_pretrained(copy_run())
    scorer = style.classifier_for(vae, buckets=1 << 12)
    judge = style.judge_for(vae)
    assert (vae.path / style.JUDGE).is_file() and (vae.path / style.JUDGE_INFO).is_file()
    assert judge.features == "char" and scorer.features == "word"
    assert 0.5 < judge.info["heldout_accuracy"] <= 1.0
    again = style.judge_for(vae)
    assert torch.equal(again.weight, judge.weight) and again.features == "char"
    assert torch.equal(style.classifier_for(vae, buckets=1 << 12).weight, scorer.weight)  # scorer's cache kept


def test_scores_of_the_copy_and_of_a_perfect_system(clf, tiny_rows):
    _, valid = tiny_rows
    kjv = [r["text"] for r in valid if r["label"] == "kjv"]
    web = [r["text"] for r in valid if r["label"] == "web"]  # the same verses, in the same order
    copy = style.score_transfer(kjv, kjv, "web", clf, refs=web)
    assert copy["self_bleu"] == pytest.approx(100.0)
    assert copy["ref_bleu"] < 100.0
    perfect = style.score_transfer(web, kjv, "web", clf, refs=web)
    assert perfect["ref_bleu"] == pytest.approx(100.0)
    assert perfect["accuracy"] > copy["accuracy"]
    assert perfect["gm_ref"] == pytest.approx(math.sqrt(100 * perfect["accuracy"] * 100.0))
    assert style.score_transfer(kjv, kjv, "web", clf)["ref_bleu"] is None


def test_geometric_mean():
    assert style.geometric_mean(0.81, 49.0) == pytest.approx(63.0)
    assert style.geometric_mean(0.0, 50.0) == 0.0


def test_evaluate_transfer_reports_baselines_and_sweep(trained, clf, tiny_rows):
    _, valid = tiny_rows
    vae = TextVAE.from_pretrained(trained.path)
    kjv = [r["text"] for r in valid if r["label"] == "kjv"][:6]
    web = [r["text"] for r in valid if r["label"] == "web"][:6]
    report = transfer.evaluate_transfer(vae, vae.require_attributes(), clf, kjv, "kjv", "web", refs=web,
                                        opts=transfer.Options("mean-diff", 1.0), sweep=[0.0, 2.0],
                                        methods=["mean-diff", "project"])
    systems = [r["system"] for r in report["rows"]]
    assert systems == ["copy (output = input)", "reference", "textvae transfer"]
    assert [(r["method"], r["alpha"]) for r in report["sweep"]] == [
        ("mean-diff", 0.0), ("mean-diff", 2.0), ("project", 0.0), ("project", 2.0)]
    assert report["signature"].startswith("nrefs:1|")
    assert len(report["examples"]) == 6 and report["examples"][0]["source"] == kjv[0]
    table = style.format_transfer_report({**report, "classifier": clf.info})
    assert "| copy (output = input) |" in table and "sacrebleu signature" in table
