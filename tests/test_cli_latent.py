"""The latent-space commands end to end: reconstruct, interpolate, transfer, analogy, attributes,
evaluate-transfer; and their one-line errors for bad input."""

from __future__ import annotations

import io
import json
import sys

import pytest

from helpers import TINY_DATA, assert_user_error, file_hashes
from textvae import checkpoint as ckpt

A = "And the LORD said unto Moses, Go in unto Pharaoh."
B = "Yahweh said to Moses, Go in to Pharaoh."


@pytest.fixture
def stdin(monkeypatch):
    def _feed(text: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))

    return _feed


@pytest.fixture
def bare_run(copy_run):
    """A run folder without attribute vectors (like one trained before they existed)."""
    run = copy_run("bare")
    for name in (ckpt.ATTRIBUTES, ckpt.ATTRIBUTES_INFO):
        (run / "checkpoint" / name).unlink()
    return run


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    """data/tiny/valid.jsonl as a parallel file: one line per verse with both styles."""
    verses: dict[int, dict] = {}
    for line in (TINY_DATA / "valid.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        verses.setdefault(row["id"], {"id": row["id"]})[row["style"]] = row["text"]
    path = tmp_path_factory.mktemp("refs") / "valid_parallel.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in reversed(list(verses.values()))), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- round trips


def test_reconstruct_reads_stdin_and_writes_jsonl(run_cli, trained_run, stdin, caplog):
    stdin(f"{A}\n\n{B}\n")
    rc, out, err = run_cli("reconstruct", "--checkpoint", trained_run, "--json")
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in records] == [A, B]
    assert all(isinstance(r["output"], str) for r in records)
    assert "skipped 1 empty lines" in caplog.text
    rc, plain, _ = run_cli("reconstruct", "--checkpoint", trained_run, A, B)
    assert rc == 0 and plain.splitlines() == [r["output"] for r in records]


def test_interpolate_prints_one_line_per_step(run_cli, trained_run):
    rc, out, err = run_cli("interpolate", "--checkpoint", trained_run, A, B, "--steps", "7", "--method", "slerp", "--json")
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["step"] for r in records] == list(range(7))
    assert records[0]["t"] == 0.0 and records[-1]["t"] == 1.0
    rc, rec, _ = run_cli("reconstruct", "--checkpoint", trained_run, A, B)
    assert [records[0]["output"], records[-1]["output"]] == rec.splitlines()


def test_transfer_from_a_file_to_a_file(run_cli, copy_run, tmp_path):
    run = copy_run()
    src = tmp_path / "in.txt"
    src.write_text(f"{A}\n{A}\n", encoding="utf-8")
    dst = tmp_path / "out" / "transferred.jsonl"
    rc, out, err = run_cli("transfer", "--checkpoint", run, "--from", "kjv", "--to", "web", "--input", src,
                           "--output", dst, "--json", "--score", "--method", "mean-diff", "--alpha", "0.5")
    assert rc == 0, err
    assert out == ""
    records = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2 and records[0] == records[1]
    r = records[0]
    assert r["source"] == A and r["alpha"] == 0.5
    assert 0.0 <= r["target_prob"] <= 1.0 and 0.0 <= r["self_bleu"] <= 100.0
    assert r["in_target_style"] == (r["target_prob"] > 0.5)  # two labels: the argmax
    assert (run / "checkpoint" / "style_classifier.json").is_file()  # --score trained and cached it


def test_transfer_alpha_zero_is_reconstruction(run_cli, trained_run):
    _, rec, _ = run_cli("reconstruct", "--checkpoint", trained_run, A, B)
    for method in ("mean-diff", "project", "search", "closest"):
        rc, out, err = run_cli("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "web",
                               "--alpha", "0", "--method", method, A, B)
        assert rc == 0, err
        assert out == rec


def test_transfer_copy_bias_option(run_cli, trained_run):
    base = ("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "web", "--method", "mean-diff", A, B)
    _, default, _ = run_cli(*base)
    rc, out, err = run_cli(*base, "--copy-bias", "4")  # the default
    assert rc == 0 and out == default, err
    rc, out, err = run_cli(*base, "--copy-bias", "0")
    assert rc == 0 and len(out.splitlines()) == 2, err
    rc, out, err = run_cli(*base, "--copy-bias", "-1")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--copy-bias" in err


def test_analogy_from_arguments_and_from_a_file(run_cli, trained_run, tmp_path):
    rc, out, err = run_cli("analogy", "--checkpoint", trained_run, A, A, B)
    assert rc == 0, err
    _, rec, _ = run_cli("reconstruct", "--checkpoint", trained_run, B)
    assert out == rec  # a == b: c's reconstruction
    triples = tmp_path / "triples.tsv"
    triples.write_text(f"{A}\t{B}\t{A}\n{A}\t{A}\t{B}\n", encoding="utf-8")
    rc, out, err = run_cli("analogy", "--checkpoint", trained_run, "--input", triples, "--json")
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2 and records[1]["output"] == rec.strip()


def test_attributes_command_writes_only_its_files(run_cli, bare_run):
    folder = bare_run / "checkpoint"
    before = file_hashes(folder)
    rc, out, err = run_cli("attributes", "--checkpoint", bare_run, "--data", TINY_DATA / "valid.jsonl",
                           "--label-column", "style")
    assert rc == 0, err
    assert "wrote attribute vectors for 2 labels (kjv, web)" in out
    after = file_hashes(folder)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else touched
    assert set(after) - set(before) == {ckpt.ATTRIBUTES, ckpt.ATTRIBUTES_INFO}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    info = json.loads((folder / ckpt.ATTRIBUTES_INFO).read_text())
    # 30 verses per style; like training, sentences longer than the model's 64 tokens are left out
    assert info["counts"][0] == 30 and 25 <= info["counts"][1] <= 30 and info["sentences"] == sum(info["counts"])
    assert info["source"].endswith("valid.jsonl")
    rc, _, err = run_cli("transfer", "--checkpoint", bare_run, "--from", "web", "--to", "kjv", B)
    assert rc == 0, err


def test_evaluate_transfer_with_references(run_cli, copy_run, parallel):
    run = copy_run()
    rc, out, err = run_cli("evaluate-transfer", "--checkpoint", run, "--data", TINY_DATA / "valid.jsonl",
                           "--from", "kjv", "--to", "web", "--refs", parallel, "--refs-column", "web",
                           "--id-column", "id", "--limit", "8", "--sweep", "0,1", "--sweep-methods", "mean-diff",
                           "--candidates", "2", "--samples", "2", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["sentences"] == 8
    copy, ref, main = report["rows"]
    assert copy["self_bleu"] == pytest.approx(100.0) and ref["ref_bleu"] == pytest.approx(100.0)
    assert [r["alpha"] for r in report["sweep"]] == [0.0, 1.0]
    # the join on id pairs each verse with its own WEB rendering (the file is in reverse order)
    verses = [json.loads(line) for line in (TINY_DATA / "valid.jsonl").read_text().splitlines()]
    web = {v["id"]: v["text"] for v in verses if v["style"] == "web"}
    kjv_ids = [v["id"] for v in verses if v["style"] == "kjv"][:8]
    assert [e["reference"] for e in report["examples"]] == [web[i] for i in kjv_ids]
    rc, table, err = run_cli("evaluate-transfer", "--checkpoint", run, "--data", TINY_DATA / "valid.jsonl",
                             "--from", "kjv", "--to", "web", "--limit", "4", "--sweep", "", "--samples", "0")
    assert rc == 0, err
    assert "| copy (output = input) |" in table and "held-out accuracy" in table and "sacrebleu signature" in table


# --------------------------------------------------------------------------- bad input


def test_unknown_label(run_cli, trained_run):
    rc, _, err = run_cli("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "modern", A)
    assert_user_error(rc, err, "transfer", "unknown label 'modern'", "known labels: kjv, web")


def test_fluency_guard_options(run_cli, trained_run):
    common = ("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "web", "--method", "search",
              "--candidates", "2", A)
    outs = []
    for margin in ("off", "0", "2.5"):
        rc, out, err = run_cli(*common, "--fluency", margin)
        assert rc == 0, err
        outs.append(out.strip())
    assert all(outs)
    rc, _, err = run_cli(*common, "--fluency", "-1")
    assert_user_error(rc, err, "transfer", "--fluency", "between 0 and 100")
    rc, _, err = run_cli(*common, "--max-unseen", "1.5")
    assert_user_error(rc, err, "transfer", "--max-unseen", "between 0 and 1")


def test_checkpoint_without_attribute_vectors(run_cli, bare_run):
    rc, _, err = run_cli("transfer", "--checkpoint", bare_run, "--from", "kjv", "--to", "web", A)
    line = assert_user_error(rc, err, "transfer", "no attribute vectors", "textvae attributes --checkpoint")
    assert "--label-column style" in line and "train.jsonl" in line


def test_empty_sentence(run_cli, trained_run):
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, A, "  ")
    assert_user_error(rc, err, "reconstruct", "sentence 2 is empty")


def test_empty_input(run_cli, trained_run, stdin):
    stdin("\n\n")
    rc, _, err = run_cli("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "web")
    assert_user_error(rc, err, "transfer", "no sentences")


@pytest.mark.parametrize("steps", ["1", "0"])
def test_too_few_interpolation_steps(run_cli, trained_run, steps):
    rc, _, err = run_cli("interpolate", "--checkpoint", trained_run, A, B, "--steps", steps)
    assert_user_error(rc, err, "interpolate", "--steps: must be between 2 and")


def test_long_sentence_is_truncated_with_a_warning(run_cli, trained_run, caplog):
    long = " ".join(["and the king went up to the city"] * 20)
    rc, out, err = run_cli("reconstruct", "--checkpoint", trained_run, long, A)
    assert rc == 0, err
    assert len(out.splitlines()) == 2
    assert "1 of 2 sentences were longer than the model's limit (64 tokens" in caplog.text


def test_bad_analogy_input(run_cli, trained_run, tmp_path):
    rc, _, err = run_cli("analogy", "--checkpoint", trained_run, A, B)
    assert_user_error(rc, err, "analogy", "three sentences")
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"{A}\t{B}\n", encoding="utf-8")
    rc, _, err = run_cli("analogy", "--checkpoint", trained_run, "--input", bad)
    assert_user_error(rc, err, "analogy", "line 1", "tab-separated")


def test_attributes_with_a_missing_label_column(run_cli, bare_run):
    rc, _, err = run_cli("attributes", "--checkpoint", bare_run, "--data", TINY_DATA / "train.txt",
                         "--label-column", "style")
    assert_user_error(rc, err, "attributes", "no column 'style'", "columns are: text")


def test_evaluate_transfer_with_misaligned_references(run_cli, copy_run, parallel):
    rc, _, err = run_cli("evaluate-transfer", "--checkpoint", copy_run(), "--data", TINY_DATA / "train.jsonl",
                         "--from", "kjv", "--to", "web", "--refs", parallel, "--refs-column", "web")
    assert_user_error(rc, err, "evaluate-transfer", "200 'kjv' rows", "30 references", "--id-column")


def test_attributes_command_replaces_stale_vectors(run_cli, copy_run):
    run = copy_run()
    info_file = run / "checkpoint" / ckpt.ATTRIBUTES_INFO
    info = json.loads(info_file.read_text())
    info["weights_sha256"] = "0" * 64  # as if computed with other weights
    tensors = (run / "checkpoint" / ckpt.ATTRIBUTES).read_bytes()
    ckpt.write_files(run, {ckpt.ATTRIBUTES: tensors, ckpt.ATTRIBUTES_INFO: json.dumps(info).encode()})
    rc, _, err = run_cli("transfer", "--checkpoint", run, "--from", "kjv", "--to", "web", A)
    assert_user_error(rc, err, "transfer", "other weights", "textvae attributes --checkpoint")
    rc, _, err = run_cli("attributes", "--checkpoint", run, "--data", TINY_DATA / "train.jsonl")
    assert rc == 0, err
    rc, _, err = run_cli("transfer", "--checkpoint", run, "--from", "kjv", "--to", "web", A)
    assert rc == 0, err


def test_no_repeat_ngram_option(run_cli, trained_run):
    rc, out, err = run_cli("reconstruct", "--checkpoint", trained_run, "--no-repeat-ngram", "2", A, B)
    assert rc == 0 and len(out.splitlines()) == 2, err
    rc, out, err = run_cli("sample", "--checkpoint", trained_run, "-n", "3", "--no-repeat-ngram", "3")
    assert rc == 0 and len(out.splitlines()) == 3, err
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, "--no-repeat-ngram", "-1", A)
    assert_user_error(rc, err, "reconstruct", "--no-repeat-ngram")
    rc, _, err = run_cli("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "web",
                         "--strategy", "beam", "--no-repeat-ngram", "3", A)
    assert_user_error(rc, err, "transfer", "not beam")


# --------------------------------------------------------------------------- seen words, fitted prior, LM baseline


def test_words_option_of_the_decoding_commands(run_cli, copy_run):
    from textvae.evaluate import unseen_word_rate, vocabulary

    run = copy_run("words")
    known = vocabulary(json.loads(line)["text"] for line in (TINY_DATA / "train.jsonl").read_text().splitlines())
    for command in (["sample", "-n", "8", "--seed", "4"], ["reconstruct", A, B],
                    ["transfer", "--from", "kjv", "--to", "web", "--method", "mean-diff", A]):
        outs = {}
        for mode in ("seen", "any"):
            rc, out, err = run_cli(command[0], "--checkpoint", run, "--words", mode, *command[1:])
            assert rc == 0, err
            outs[mode] = out.splitlines()
        assert unseen_word_rate(outs["seen"], known) == 0.0, command
    (run / "checkpoint" / ckpt.SEEN_WORDS).unlink()  # 'auto' falls back to reading the training file
    rc, out, _ = run_cli("sample", "--checkpoint", run, "-n", "8", "--seed", "4")
    assert rc == 0 and (run / "checkpoint" / ckpt.SEEN_WORDS).is_file()
    rc, _, err = run_cli("sample", "--checkpoint", run, "--words", "maybe")
    assert rc == 2 and "invalid choice" in err


def test_words_seen_without_training_data_is_a_one_line_error(run_cli, copy_run, caplog):
    run = copy_run("blind")
    (run / "checkpoint" / ckpt.SEEN_WORDS).unlink()
    meta = json.loads((run / "checkpoint" / ckpt.CONFIG).read_text())
    meta["config"]["data"]["train"] = "no/such/train.jsonl"
    (run / "checkpoint" / ckpt.CONFIG).write_text(json.dumps(meta))
    rc, _, err = run_cli("sample", "--checkpoint", run, "-n", "2", "--words", "seen")
    assert_user_error(rc, err, "sample", "--words seen")
    with caplog.at_level("WARNING", logger="textvae"):
        rc, out, err = run_cli("sample", "--checkpoint", run, "-n", "2")  # auto: any tokens, with a warning
    assert rc == 0 and len(out.splitlines()) == 2 and "not at hand" in caplog.text
    (run / "checkpoint" / ckpt.PRIOR).unlink()  # no stored prior and no data to fit one
    rc, _, err = run_cli("sample", "--checkpoint", run, "-n", "2", "--prior", "fitted")
    assert_user_error(rc, err, "sample", "no fitted prior")
    with caplog.at_level("WARNING", logger="textvae"):
        rc, out, err = run_cli("sample", "--checkpoint", run, "-n", "2")  # auto: N(0, I), with a warning
    assert rc == 0 and len(out.splitlines()) == 2 and "sampling z from N(0, I)" in caplog.text


def test_sample_from_the_fitted_prior(run_cli, trained_run):
    rc, fitted, err = run_cli("sample", "--checkpoint", trained_run, "-n", "6", "--prior", "fitted", "--seed", "1")
    assert rc == 0 and len(fitted.splitlines()) == 6, err
    rc, normal, _ = run_cli("sample", "--checkpoint", trained_run, "-n", "6", "--seed", "1", "--prior", "normal")
    assert rc == 0 and fitted != normal
    rc, default, _ = run_cli("sample", "--checkpoint", trained_run, "-n", "6", "--seed", "1")
    assert rc == 0 and default == fitted  # auto: the checkpoint stores the fitted prior


def test_evaluate_against_a_language_model(run_cli, trained_run, tmp_path):
    from helpers import TINY_CONFIG

    lm = tmp_path / "lm"
    rc, _, err = run_cli("-q", "train", "--config", TINY_CONFIG, "--out", lm, "--set", "model.latent_dim=0",
                         "--set", "train.max_steps=10", "--set", f"data.train={TINY_DATA / 'train.jsonl'}",
                         "--set", f"data.valid={TINY_DATA / 'valid.jsonl'}")
    assert rc == 0, err
    rc, out, err = run_cli("evaluate", "--checkpoint", trained_run, "--data", TINY_DATA / "valid.jsonl",
                           "--iw-samples", "2", "--samples", "5", "--lm-checkpoint", lm, "--prior", "fitted", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["latent_efficiency"] == pytest.approx((r["lm_nll"] - r["rec"]) / r["kl"])
    assert r["decoding"] == {"words": "seen in training", "prior": "fitted mixture", "refine_steps": 0}
    rc, out, err = run_cli("evaluate", "--checkpoint", trained_run, "--data", TINY_DATA / "valid.jsonl",
                           "--iw-samples", "2", "--samples", "5", "--lm-checkpoint", lm)
    assert rc == 0 and "latent efficiency" in out and "unseen words" in out
    rc, _, err = run_cli("evaluate", "--checkpoint", trained_run, "--iw-samples", "2", "--samples", "0",
                         "--data", TINY_DATA / "valid.jsonl", "--lm-checkpoint", trained_run)
    assert_user_error(rc, err, "evaluate", "language model")
