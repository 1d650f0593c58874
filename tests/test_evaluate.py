"""Evaluation: IW bound, MI, active units, perplexity conventions, scoring, encoding, LM baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_config
from textvae.data import collate
from textvae.evaluate import (active_units, auroc, distinct_n, elbo_per_sentence, evaluate_model, iw_nll,
                              lm_nll_per_token, mutual_information, posterior_params, prepare_ids, refine_posterior,
                              self_bleu)
from textvae.checkpoint import load_pretrained
from textvae.errors import DataError, InputError
from textvae.losses import gaussian_kl, reconstruction_nll

SENTS = ["And God saw the light, that it was good.", "Jesus wept.", "The LORD is my shepherd; I shall not want."]


def _ids(trained, texts=SENTS):
    return prepare_ids(trained.tokenizer, texts, trained.config.model.max_len)[0]


def test_iw_k1_equals_negative_elbo_in_expectation(trained):
    ids = _ids(trained)
    # mean over many seeds of the K=1 bound vs the negative ELBO (analytic KL) averaged the same way
    k1 = torch.stack([iw_nll(trained.model, ids, trained.tokenizer, k=1, seed=s) for s in range(300)]).mean(0)
    elbo = torch.stack([elbo_per_sentence(trained.model, ids, trained.tokenizer, seed=s)[0] for s in range(300)]).mean(0)
    assert torch.allclose(k1, elbo, rtol=0.01, atol=0.3), (k1, elbo)


def test_iw_bound_tightens_with_k(trained):
    import copy

    ids = _ids(trained)
    # A posterior four times as wide as the trained one: the same p(x) with a looser q(z|x), whose
    # ELBO (K = 1) is far from log p(x), so that more samples have something to recover.
    model = copy.deepcopy(trained.model)
    L = model.cfg.latent_dim
    with torch.no_grad():
        model.to_posterior.bias[L:] += 2 * math.log(4.0)
    # the bound tightens in expectation: average each K over seeds
    means = {k: sum(float(iw_nll(model, ids, trained.tokenizer, k=k, seed=s).mean()) for s in range(8)) / 8
             for k in (1, 10, 100)}
    assert means[1] > means[10] > means[100] - 0.02, means
    assert means[1] - means[100] > 0.05, means


def test_iw_rejects_k_below_one(trained):
    with pytest.raises(ValueError):
        iw_nll(trained.model, _ids(trained), trained.tokenizer, k=0)


def test_iw_is_order_independent_and_chunked_consistently(trained):
    ids = _ids(trained)
    a = iw_nll(trained.model, ids, trained.tokenizer, k=20, seed=3, max_rows=512)
    b = iw_nll(trained.model, ids, trained.tokenizer, k=20, seed=3, max_rows=512)
    assert torch.equal(a, b)
    # splitting the samples into chunks of 1 row per sentence draws the same numbers differently,
    # so only the statistics agree
    c = iw_nll(trained.model, ids, trained.tokenizer, k=20, seed=3, max_rows=len(ids))
    assert torch.allclose(a, c, rtol=0.05)


def test_mi_and_au_are_zero_when_posterior_equals_prior(trained):
    mu = torch.zeros(512, 8)
    logvar = torch.zeros(512, 8)
    assert abs(mutual_information(mu, logvar, batch_size=128)) < 0.15
    assert active_units(mu)[0] == 0


def test_mi_is_large_for_an_informative_posterior():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(512, 8, generator=g) * 3
    logvar = torch.full((512, 8), math.log(0.01))
    mi = mutual_information(mu, logvar, batch_size=128)
    # bounded by log(batch size): the batch mixture cannot tell more than which item it was
    assert 3.0 < mi <= math.log(128) + 0.1
    assert active_units(mu)[0] == 8


def test_model_with_prior_posterior_has_no_mi_or_active_units(trained):
    model = type(trained.model)(trained.config.model, pad_id=trained.tokenizer.pad_id)
    model.load_state_dict(trained.model.state_dict())
    with torch.no_grad():
        model.to_posterior.weight.zero_()
        model.to_posterior.bias.zero_()
    mu, logvar = posterior_params(model, _ids(trained, SENTS * 50), trained.tokenizer)
    assert float(mu.abs().max()) == 0 and float(logvar.abs().max()) == 0
    assert active_units(mu)[0] == 0
    assert abs(mutual_information(mu, logvar)) < 0.2


def test_perplexity_per_word_uses_words_not_tokens(trained):
    r = evaluate_model(trained.model, trained.tokenizer, SENTS, iw_samples=5, n_samples=4)
    words = sum(len(s.split()) for s in SENTS)
    tokens = sum(len(x) + 1 for x in _ids(trained))
    assert r["data"]["words"] == words and r["data"]["tokens"] == tokens
    total = r["iw_nll"] * len(SENTS)
    assert r["ppl_word"] == pytest.approx(math.exp(total / words), rel=1e-9)
    assert r["ppl_token"] == pytest.approx(math.exp(total / tokens), rel=1e-9)
    assert tokens != words and r["ppl_word"] != pytest.approx(r["ppl_token"])


def test_report_terms_are_consistent(trained):
    r = evaluate_model(trained.model, trained.tokenizer, SENTS, iw_samples=5, n_samples=4)
    assert r["neg_elbo"] == pytest.approx(r["rec"] + r["kl"], rel=1e-6)
    ids = _ids(trained)
    b = collate(ids, trained.tokenizer)
    with torch.no_grad():
        mu, logvar = trained.model.encode(b.enc_ids, b.enc_mask)
    assert r["kl"] == pytest.approx(float(gaussian_kl(mu, logvar).sum(1).mean()), rel=1e-5)
    assert 0 <= r["recon_exact"] <= 1 and r["samples"]["n"] == 4


def test_distinct_and_self_bleu():
    assert distinct_n(["a b c", "a b c"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["a b", "c d"], 1) == 1.0
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    assert self_bleu(["the cat sat on the mat", "dogs run fast in parks today"]) < 10


def test_auroc():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1], [1]) == 0.5


def test_scoring_ranks_training_sentence_above_random_tokens(trained, tiny_texts):
    tok = trained.tokenizer
    g = torch.Generator().manual_seed(0)
    sentence = tiny_texts[0]
    n = len(tok.encode(sentence))
    random_ids = torch.randint(4, tok.vocab_size, (n,), generator=g).tolist()
    ids = [tok.encode(sentence), random_ids]
    nll = iw_nll(trained.model, ids, tok, k=20)
    assert nll[0] < nll[1]


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_json(run_cli, trained_run, tmp_path):
    rc, out, err = run_cli("evaluate", "--checkpoint", trained_run, "--split", "valid", "--iw-samples", "3",
                           "--samples", "5", "--json")
    assert rc == 0, err
    r = json.loads(out)
    for key in ("rec", "kl", "neg_elbo", "iw_nll", "ppl_token", "ppl_word", "mi", "active_units", "recon_bleu",
                "recon_exact", "samples", "bleu_signature"):
        assert key in r
    assert r["iw_samples"] == 3 and r["mi_batch_size"] == 128 and r["au_threshold"] == 0.01


def test_cli_evaluate_table_names_conventions(run_cli, trained_run):
    rc, out, err = run_cli("evaluate", "--checkpoint", trained_run, "--split", "valid", "--iw-samples", "2",
                           "--samples", "3")
    assert rc == 0, err
    assert "K = 2" in out and "eos counted" in out and "> 0.01" in out and "batch 128" in out


@pytest.mark.parametrize("args,needle", [
    (["--iw-samples", "0"], "--iw-samples: must be between 1 and"),
    (["--data", "missing.txt"], "not found"),
])
def test_cli_evaluate_bad_input(run_cli, trained_run, args, needle):
    rc, out, err = run_cli("evaluate", "--checkpoint", trained_run, *args)
    assert rc == 2 and needle in err and "Traceback" not in err


def test_cli_score(run_cli, trained_run, tmp_path, tiny_texts, caplog):
    f = tmp_path / "in.txt"
    f.write_text(tiny_texts[0] + "\n\nqzxv jjkw pplt vvrq\n", encoding="utf-8")
    rc, out, err = run_cli("score", "--checkpoint", trained_run, "--input", f, "--iw-samples", "10")
    assert rc == 0, err
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert len(rows) == 2  # the empty line is skipped (with a warning)
    assert "empty" in caplog.text
    assert float(rows[0][1]) < float(rows[1][1])
    rc, out, _ = run_cli("score", "--checkpoint", trained_run, "--input", f, "--method", "elbo", "--json")
    assert rc == 0 and json.loads(out.splitlines()[0])["method"] == "elbo"


def test_score_under_the_fitted_prior(run_cli, copy_run, trained, tiny_texts, tmp_path):
    from textvae.checkpoint import load_prior
    from textvae.evaluate import score_sentences

    texts = tiny_texts[:6]
    prior = load_prior(trained)
    ids, _ = prepare_ids(trained.tokenizer, texts, trained.model.cfg.max_len)
    fitted = score_sentences(trained.model, trained.tokenizer, texts, k=5, prior=prior)
    normal = score_sentences(trained.model, trained.tokenizer, texts, k=5)
    # the same bound as iw_nll with that prior, from the same importance samples
    assert [r["nll"] for r in fitted] == pytest.approx(iw_nll(trained.model, ids, trained.tokenizer, k=5,
                                                              prior=prior).tolist())
    assert [r["prior"] for r in fitted] == ["fitted"] * 6 and normal[0]["prior"] == "normal"
    assert any(abs(a["nll"] - b["nll"]) > 1e-3 for a, b in zip(fitted, normal))
    one = score_sentences(trained.model, trained.tokenizer, texts, "elbo", prior=prior)
    assert [r["nll"] for r in one] == pytest.approx(iw_nll(trained.model, ids, trained.tokenizer, k=1,
                                                           prior=prior).tolist())
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts[:2]) + "\n", encoding="utf-8")
    rc, out, err = run_cli("score", "--checkpoint", copy_run(), "--prior", "fitted", "--iw-samples", "5", "--json",
                           "--input", f)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prior"] for r in rows] == ["fitted", "fitted"]
    assert [r["nll"] for r in rows] == pytest.approx([r["nll"] for r in fitted[:2]])


def test_cli_score_bad_input(run_cli, trained_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    rc, _, err = run_cli("score", "--checkpoint", trained_run, "--input", empty)
    assert rc == 2 and "no sentences" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    rc, _, err = run_cli("score", "--checkpoint", trained_run, "--input", bad)
    assert rc == 2 and "line 3" in err


def test_cli_score_truncates_long_sentences(run_cli, trained_run, tmp_path, caplog):
    f = tmp_path / "long.txt"
    f.write_text(" ".join(["and the"] * 200) + "\nshort one\n", encoding="utf-8")
    rc, out, err = run_cli("score", "--checkpoint", trained_run, "--input", f, "--method", "elbo")
    assert rc == 0 and len(out.strip().splitlines()) == 2
    assert "1 sentences were longer" in caplog.text


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_cli_encode_writes_one_row_per_input(run_cli, trained_run, tmp_path, tiny_texts, suffix):
    f = tmp_path / "in.txt"
    lines = tiny_texts[:7] + [""]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / f"z{suffix}"
    rc, _, err = run_cli("encode", "--checkpoint", trained_run, "--input", f, "--output", out, "--logvar")
    assert rc == 0, err
    L = 8
    if suffix == ".npy":
        mu = np.load(out)
        assert mu.shape == (len(lines), L)
        assert np.load(tmp_path / "z.logvar.npy").shape == (len(lines), L)
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(out)
        assert t.num_rows == len(lines) and t.column_names == ["text", "mu", "logvar"]
        mu = np.array(t.column("mu").to_pylist())
    # row i is the posterior mean of sentence i
    from textvae.checkpoint import load_pretrained

    loaded = load_pretrained(trained_run)
    ref, _ = posterior_params(loaded.model, prepare_ids(loaded.tokenizer, lines[:2], 64)[0], loaded.tokenizer)
    assert np.allclose(mu[:2], ref.numpy(), atol=1e-5)


def test_cli_encode_bad_output(run_cli, trained_run, tmp_path, tiny_texts):
    f = tmp_path / "in.txt"
    f.write_text(tiny_texts[0] + "\n", encoding="utf-8")
    rc, _, err = run_cli("encode", "--checkpoint", trained_run, "--input", f, "--output", tmp_path / "z.csv")
    assert rc == 2 and ".npy or .parquet" in err


# --------------------------------------------------------------------------- the LM baseline


def test_lm_baseline_trains_and_evaluates(tmp_path):
    from textvae.checkpoint import load_pretrained
    from textvae.train import train

    run = tmp_path / "lm"
    train(tiny_config(["model.latent_dim=0", "train.max_steps=10", "train.eval_every=0"]), run)
    loaded = load_pretrained(run)
    assert loaded.model.is_lm and loaded.model.encoder is None
    ids = _ids(loaded)
    a = iw_nll(loaded.model, ids, loaded.tokenizer, k=1)
    b = iw_nll(loaded.model, ids, loaded.tokenizer, k=50, seed=7)
    assert torch.equal(a, b)  # exact NLL, no sampling
    b_ = collate(ids, loaded.tokenizer)
    with torch.no_grad():
        logits, _ = loaded.model.decode(b_.dec_in, torch.zeros(len(ids), 0))
    exact = reconstruction_nll(logits, b_.targets, loaded.tokenizer.pad_id).double()
    assert torch.allclose(a, exact)
    r = evaluate_model(loaded.model, loaded.tokenizer, SENTS, iw_samples=3, n_samples=3)
    assert r["kl"] == 0 and r["active_units"] == 0 and r["mi"] == 0 and r["iw_samples"] == 0


# --------------------------------------------------------------------------- unseen words, latent efficiency


def test_unseen_word_rate_counts_words_not_in_training():
    from textvae.evaluate import unseen_word_rate, vocabulary, words_of

    known = vocabulary(["And God said, Let there be light.", "Jesus wept."])
    assert words_of("Light: and... (God)!") == ["light", "and", "god"]
    assert unseen_word_rate(["And God wept."], known) == 0.0
    assert unseen_word_rate(["And Gdo saidd ,"], known) == pytest.approx(2 / 3)
    assert unseen_word_rate([], known) == 0.0


def test_latent_efficiency_against_a_language_model(trained, tmp_path):
    from helpers import tiny_config
    from textvae.evaluate import evaluate_checkpoint
    from textvae.train import train

    lm = load_pretrained(train(tiny_config(["model.latent_dim=0", "train.max_steps=10"]), tmp_path / "lm"))
    r = evaluate_checkpoint(trained, split="valid", iw_samples=2, samples=4, lm=lm)
    assert r["latent_efficiency"] == pytest.approx((r["lm_nll"] - r["rec"]) / r["kl"])
    assert r["iw_gap"] == pytest.approx(r["iw_nll"] - r["lm_nll"])
    assert 0.0 <= r["recon_unseen_words"] <= 1.0 and 0.0 <= r["samples"]["unseen_words"] <= 1.0
    # the samples' fluency is the LM's exact NLL of exactly those samples, per token with eos
    judge = (lm.model, lm.tokenizer)
    assert r["samples"]["lm_nll_per_token"] == pytest.approx(lm_nll_per_token(judge, r["samples"]["examples"]))
    ids = _ids(lm, r["samples"]["examples"])
    b = collate(ids, lm.tokenizer)
    with torch.no_grad():
        logits, _ = lm.model.decode(b.dec_in, torch.zeros(len(ids), 0))
    exact = reconstruction_nll(logits, b.targets, lm.tokenizer.pad_id).double().sum() / sum(len(x) + 1 for x in ids)
    assert r["samples"]["lm_nll_per_token"] == pytest.approx(float(exact))
    assert r["lm_nll_per_token"] > 0 and lm_nll_per_token(judge, []) is None
    with pytest.raises(InputError, match="language model"):
        evaluate_checkpoint(trained, split="valid", iw_samples=2, samples=0, lm=trained)


def test_long_sentences_are_truncated_or_dropped(trained, trained_run, run_cli, tmp_path):
    from textvae.evaluate import evaluate_checkpoint

    limit = trained.config.model.max_len
    short = ["And God said, Let there be light.", "Jesus wept in the house.", "The earth was without form."]
    long = " ".join(["and the people went up to the city"] * limit)  # far more than max_len tokens
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in short[:2] + [long] + short[2:]))
    kept = evaluate_checkpoint(trained, str(data), iw_samples=2, samples=0, long="drop")
    assert kept["data"]["sentences"] == 3 and kept["data"]["dropped_long"] == 1 and kept["data"]["truncated"] == 0
    cut = evaluate_checkpoint(trained, str(data), iw_samples=2, samples=0)
    assert cut["data"]["sentences"] == 4 and cut["data"]["truncated"] == 1 and cut["data"]["dropped_long"] == 0
    # limit counts the kept sentences: the first two short ones, not the long one
    assert evaluate_checkpoint(trained, str(data), limit=3, iw_samples=2, samples=0,
                               long="drop")["data"]["sentences"] == 3
    only_long = tmp_path / "only_long.jsonl"
    only_long.write_text(json.dumps({"text": long}) + "\n")
    with pytest.raises(DataError, match="longer than the model's limit"):
        evaluate_checkpoint(trained, str(only_long), iw_samples=2, samples=0, long="drop")
    with pytest.raises(InputError, match="valid: truncate, drop"):
        evaluate_checkpoint(trained, str(data), iw_samples=2, samples=0, long="cut")
    rc, out, err = run_cli("evaluate", "--checkpoint", trained_run, "--data", data, "--long", "drop",
                           "--iw-samples", "2", "--samples", "0")
    assert rc == 0, err
    assert "(3 sentences)" in out and "1 longer than the model's length limit dropped" in out


def _refine_objective(trained, ids, mu, logvar):
    b = collate(ids, trained.tokenizer)
    with torch.no_grad():
        logits, _ = trained.model.decode(b.dec_in, mu)
        return reconstruction_nll(logits, b.targets, trained.tokenizer.pad_id) + gaussian_kl(mu, logvar).sum(1)


def test_refinement_lowers_each_sentences_objective(trained):
    """Semi-amortised encoding (Kim et al. 2018): the refined means explain their sentences better.
    From the encoder's own means each keeps its best point; from means moved off them by a unit of
    noise (an encoder that is not at its optimum), the steps recover part of the difference."""
    ids = _ids(trained)
    mu, logvar = posterior_params(trained.model, ids, trained.tokenizer)
    refined = refine_posterior(trained.model, ids, trained.tokenizer, mu, logvar, steps=30, lr=0.01)
    before = _refine_objective(trained, ids, mu, logvar)
    after = _refine_objective(trained, ids, refined, logvar)
    assert (after <= before + 1e-3).all(), (before, after)  # each keeps its best point
    start = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    refined = refine_posterior(trained.model, ids, trained.tokenizer, start, logvar, steps=30, lr=0.01)
    before = _refine_objective(trained, ids, start, logvar)
    after = _refine_objective(trained, ids, refined, logvar)
    assert (after <= before + 1e-3).all(), (before, after)
    assert float((before - after).sum()) > 0.5, (before, after)  # measured: 4.6 nats
    assert all(p.requires_grad for p in trained.model.parameters())
    assert refine_posterior(trained.model, ids, trained.tokenizer, mu, logvar, steps=0) is mu


def test_refinement_of_a_sentence_does_not_depend_on_its_batch(trained):
    ids = _ids(trained)
    mu, logvar = posterior_params(trained.model, ids, trained.tokenizer)
    together = refine_posterior(trained.model, ids, trained.tokenizer, mu, logvar, steps=5)
    alone = refine_posterior(trained.model, ids[1:2], trained.tokenizer, mu[1:2], logvar[1:2], steps=5)
    torch.testing.assert_close(alone[0], together[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("steps,lr", [(-1, 0.05), (1001, 0.05), (3, 0.0), (3, float("nan"))])
def test_refinement_rejects_bad_settings(trained, steps, lr):
    ids = _ids(trained)
    mu, logvar = posterior_params(trained.model, ids, trained.tokenizer)
    with pytest.raises(InputError, match="refinement"):
        refine_posterior(trained.model, ids, trained.tokenizer, mu, logvar, steps=steps, lr=lr)


def _standard_normal_mixture(dim: int, covariance: str):
    from textvae.prior import GaussianMixture

    var = torch.eye(dim)[None] if covariance == "full" else torch.ones(1, dim)
    return GaussianMixture(torch.ones(1), torch.zeros(1, dim), var)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_iw_bound_under_a_mixture_that_is_the_standard_normal_is_the_plain_bound(trained, covariance):
    from textvae.evaluate import iw_nlls

    ids = _ids(trained)
    normal = _standard_normal_mixture(trained.config.model.latent_dim, covariance)
    plain = iw_nll(trained.model, ids, trained.tokenizer, k=7, seed=4)
    both = iw_nlls(trained.model, ids, trained.tokenizer, [None, normal], k=7, seed=4)
    assert torch.equal(both[0], plain)  # the same samples: the plain bound is unchanged
    assert torch.allclose(both[1], plain, atol=1e-3)


def test_kl_to_a_fitted_prior_matches_the_closed_form_for_the_standard_normal(trained):
    from textvae.evaluate import kl_to_prior

    mu, logvar = posterior_params(trained.model, _ids(trained), trained.tokenizer)
    normal = _standard_normal_mixture(trained.config.model.latent_dim, "full")
    mc = kl_to_prior(mu, logvar, normal, samples=4000, seed=0)
    exact = gaussian_kl(mu, logvar).sum(1).double()
    assert torch.allclose(mc, exact, atol=0.25), (mc, exact)


def test_evaluate_reports_the_model_with_its_fitted_prior(trained, tmp_path):
    from textvae import checkpoint as ckpt
    from textvae.evaluate import evaluate_checkpoint
    from textvae.train import train

    lm = load_pretrained(train(tiny_config(["model.latent_dim=0", "train.max_steps=10"]), tmp_path / "lm"))
    prior = ckpt.load_prior(trained, fit=False)
    r = evaluate_checkpoint(trained, split="valid", iw_samples=3, samples=2, lm=lm, prior=prior)
    f = r["fitted_prior"]
    assert f["covariance"] == prior.covariance and f["components"] == prior.weights.numel()
    assert f["latent_efficiency"] == pytest.approx((r["lm_nll"] - r["rec"]) / f["kl"])
    assert f["iw_gap"] == pytest.approx(f["iw_nll"] - r["lm_nll"])
    assert f["neg_elbo"] == pytest.approx(r["rec"] + f["kl"])
    # the figures under N(0, I) do not depend on whether the fitted ones are computed
    plain = evaluate_checkpoint(trained, split="valid", iw_samples=3, samples=2, lm=lm)
    assert "fitted_prior" not in plain
    assert plain["iw_nll"] == r["iw_nll"] and plain["kl"] == r["kl"] and plain["rec"] == r["rec"]
    from textvae.evaluate import format_report

    assert "latent efficiency, fitted" in format_report(r)
