"""The fitted prior (textvae/prior.py): EM on a Gaussian mixture, its density and its samples."""

from __future__ import annotations

import math

import pytest
import torch

from textvae import checkpoint as ckpt
from textvae.prior import GaussianMixture, fit_mixture


def _two_clusters(n: int = 600) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([4.0, 0.0, 0.0])
    b = torch.randn(n // 2, 3, generator=g) * 0.3 + torch.tensor([-4.0, 1.0, 0.0])
    return torch.cat([a, b])


def test_em_recovers_two_separated_clusters():
    gm = fit_mixture(_two_clusters(), components=2, seed=0, covariance="diag")
    order = gm.means[:, 0].argsort(descending=True)
    means, var, w = gm.means[order], gm.variances[order], gm.weights[order]
    assert gm.covariance == "diag" and var.shape == (2, 3)
    assert torch.allclose(means, torch.tensor([[4.0, 0.0, 0.0], [-4.0, 1.0, 0.0]]), atol=0.1)
    assert torch.allclose(var.sqrt(), torch.tensor([[0.1] * 3, [0.3] * 3]), atol=0.05)
    assert torch.allclose(w, torch.tensor([2 / 3, 1 / 3]), atol=0.01)


def _correlated(n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes from N(m, S) with strongly correlated dimensions, and S."""
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, -0.5], [0.0, -0.5, 2.0]])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 3, generator=g) @ torch.linalg.cholesky(cov).T + torch.tensor([1.0, -2.0, 0.5])
    return z, cov


def test_full_covariance_em_recovers_correlations_a_diagonal_fit_cannot():
    z, cov = _correlated()
    full = fit_mixture(z, components=1, covariance="full")
    assert full.covariance == "full" and full.variances.shape == (1, 3, 3)
    assert torch.allclose(full.means[0], torch.tensor([1.0, -2.0, 0.5]), atol=0.1)
    assert torch.allclose(full.variances[0], cov, atol=0.1)
    held_out, _ = _correlated(2000)
    held_out = held_out.flip(0) + 0.0  # other rows of the same law
    diag = fit_mixture(z, components=1, covariance="diag")
    # The full fit is the better density of the codes: by about the mutual information of the
    # dimensions (here over 0.5 nats per code), far beyond the estimate's noise.
    assert float(full.log_prob(held_out).mean()) > float(diag.log_prob(held_out).mean()) + 0.5


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_log_prob_matches_torch_distributions(covariance):
    gm = fit_mixture(_two_clusters(), components=3, seed=1, covariance=covariance)
    if covariance == "diag":
        components = torch.distributions.Independent(torch.distributions.Normal(gm.means, gm.variances.sqrt()), 1)
    else:
        components = torch.distributions.MultivariateNormal(gm.means, covariance_matrix=gm.variances)
    reference = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=gm.weights), components)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(2)) * 3
    assert torch.allclose(gm.log_prob(z), reference.log_prob(z), atol=1e-3)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_fitting_and_sampling_are_deterministic(covariance):
    z = _two_clusters()
    a, b = fit_mixture(z, 4, seed=3, covariance=covariance), fit_mixture(z, 4, seed=3, covariance=covariance)
    assert torch.equal(a.means, b.means) and torch.equal(a.variances, b.variances)
    s1 = a.sample(20, torch.Generator().manual_seed(5))
    s2 = a.sample(20, torch.Generator().manual_seed(5))
    assert s1.shape == (20, 3) and torch.equal(s1, s2)


def test_samples_follow_the_mixture():
    gm = GaussianMixture(torch.tensor([0.25, 0.75]), torch.tensor([[-10.0], [10.0]]), torch.tensor([[1.0], [4.0]]))
    s = gm.sample(20000, torch.Generator().manual_seed(0))[:, 0]
    right = s[s > 0]
    assert abs(len(right) / len(s) - 0.75) < 0.02
    assert abs(float(right.mean()) - 10.0) < 0.1 and abs(float(right.std()) - 2.0) < 0.1


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_temperature_scales_the_distance_from_the_component_mean(covariance):
    _, cov = _correlated()
    variances = cov[None].repeat(2, 1, 1) if covariance == "full" else cov.diagonal()[None].repeat(2, 1)
    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-5.0, 0.0, 1.0], [5.0, 2.0, 0.0]]), variances)
    hot = gm.sample(200, torch.Generator().manual_seed(3))
    cold = gm.sample(200, torch.Generator().manual_seed(3), temperature=0.25)
    k = (hot[:, 0] > 0).long()  # which component each draw came from (the same with either temperature)
    assert torch.equal(k, (cold[:, 0] > 0).long())
    torch.testing.assert_close(cold - gm.means[k], 0.25 * (hot - gm.means[k]), rtol=1e-4, atol=1e-4)


def test_full_covariance_samples_have_the_covariance():
    _, cov = _correlated()
    gm = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 3), cov[None])
    s = gm.sample(20000, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(s.T), cov, atol=0.06)


def test_too_few_codes_and_unknown_covariances_are_errors():
    with pytest.raises(ValueError, match="at least 5 codes"):
        fit_mixture(torch.zeros(3, 2), components=5)
    with pytest.raises(ValueError, match="unknown covariance"):
        fit_mixture(torch.zeros(8, 2), components=2, covariance="spherical")


def test_a_stored_diagonal_prior_still_loads(copy_run):
    """Checkpoints written before full covariances hold (K, L) variances: they load as diagonal."""
    from textvae import TextVAE

    run = copy_run()
    vae = TextVAE.from_pretrained(run)
    stored = ckpt.load_prior(vae, fit=False)
    assert stored.covariance == "full"
    codes = stored.sample(200, torch.Generator().manual_seed(0))
    diag = fit_mixture(codes, components=2, covariance="diag")
    diag.info = dict(stored.info, covariance="diag")
    ckpt.write_files(vae.path, ckpt.prior_files(diag, vae.model))
    again = ckpt.load_prior(TextVAE.from_pretrained(run), fit=False)
    assert again.covariance == "diag" and torch.equal(again.variances, diag.variances)


def test_training_stores_a_prior_tied_to_the_weights(trained):
    gm = ckpt.load_prior(trained, fit=False)
    assert gm.means.shape == (gm.info["components"], trained.config.model.latent_dim)
    assert math.isclose(float(gm.weights.sum()), 1.0, rel_tol=1e-5)
    assert gm.info["codes"] > 0


def test_a_missing_prior_is_fitted_and_cached(copy_run):
    from textvae import TextVAE

    run = copy_run()
    folder = run / ckpt.CHECKPOINT_DIR
    (folder / ckpt.PRIOR).unlink()
    vae = TextVAE.from_pretrained(run)
    with pytest.raises(Exception, match="no fitted prior"):
        ckpt.load_prior(vae, fit=False)
    texts = vae.sample(3, seed=0, prior="fitted")
    assert len(texts) == 3 and (folder / ckpt.PRIOR).is_file()
    assert vae.sample(3, seed=0, prior="fitted") == TextVAE.from_pretrained(run).sample(3, seed=0, prior="fitted")


def test_the_default_prior_is_the_fitted_one_when_the_checkpoint_has_it(copy_run):
    from textvae import TextVAE
    from textvae.prior import DEFAULT_PRIOR

    vae = TextVAE.from_pretrained(copy_run())
    assert DEFAULT_PRIOR == "auto"
    stored = ckpt.load_prior(vae, fit=False)
    assert torch.equal(vae.resolved_prior().means, stored.means) and vae.resolved_prior("normal") is None
    assert vae.sample(4, seed=3) == vae.sample(4, seed=3, prior="fitted")


def test_auto_prior_falls_back_to_normal_when_none_can_be_had(trained, monkeypatch, caplog):
    from textvae.errors import CheckpointError, InputError

    def unavailable(loaded, fit=True):
        raise CheckpointError("no fitted prior and its training data cannot be read")

    monkeypatch.setattr(ckpt, "load_prior", unavailable)
    assert ckpt.resolve_prior(trained, "auto") is None and "N(0, I)" in caplog.text
    with pytest.raises(CheckpointError, match="cannot be read"):
        ckpt.resolve_prior(trained, "fitted")
    with pytest.raises(InputError, match="unknown prior"):
        ckpt.resolve_prior(trained, "uniform")


def test_a_language_model_has_no_prior(tmp_path):
    from helpers import tiny_config
    from textvae.errors import InputError
    from textvae.train import train

    lm = ckpt.load_pretrained(train(tiny_config(["model.latent_dim=0", "train.max_steps=5"]), tmp_path / "lm"))
    assert ckpt.resolve_prior(lm, "auto") is None and ckpt.resolve_prior(lm, "normal") is None
    with pytest.raises(InputError, match="language model"):
        ckpt.resolve_prior(lm, "fitted")


def test_training_encodes_its_corpus_once_for_the_prior_and_the_attributes(trained):
    """The final checkpoint's prior and attribute vectors come from one encoding of the training
    set: each equals what it computes with its own encoding pass."""
    from textvae.data import prepare_split
    from textvae.prior import fit_to_corpus
    from textvae.transfer import corpus_attributes

    dc, model = trained.config.data, trained.model
    corpus, names = prepare_split(dc.train, "train", trained.tokenizer, trained.config.model.max_len,
                                  text_column=dc.text_column, label_column=dc.label_column, min_words=dc.min_words,
                                  max_words=dc.max_words, label_names=trained.label_names)
    stored = ckpt.load_prior(trained, fit=False)
    alone = fit_to_corpus(model, corpus.ids, trained.tokenizer, seed=trained.config.train.seed)
    assert torch.allclose(stored.means, alone.means, atol=1e-4)
    assert torch.allclose(stored.weights, alone.weights, atol=1e-4)
    attrs = ckpt.load_attributes(trained.path, model)
    again = corpus_attributes(model, corpus, trained.tokenizer, names)
    assert attrs is not None and attrs.labels == again.labels
    assert torch.allclose(attrs.means, again.means, atol=1e-5)


def test_code_rows_is_a_seeded_subset_in_corpus_order():
    from textvae.prior import code_rows

    assert code_rows(5, 0, seed=0) == code_rows(5, 9, seed=0) == [0, 1, 2, 3, 4]
    rows = code_rows(100, 30, seed=1)
    assert len(set(rows)) == 30 and rows == sorted(rows) and rows == code_rows(100, 30, seed=1)
    assert rows != code_rows(100, 30, seed=2)


def test_final_codes_encodes_a_subset_for_the_prior_and_the_attributes(tmp_path):
    """train.final_codes N: the final checkpoint's prior and style vectors come from N training
    sentences (the trained weights are those of a run that encodes all, in the training
    coordinates), and a prior fitted later, when the file is missing, is fitted to the same N codes."""
    from helpers import tiny_config
    from textvae.train import train

    run = train(tiny_config(["train.max_steps=3", "train.final_codes=60", "train.standardize_latents=false"]),
                tmp_path / "cap")
    loaded = ckpt.load_pretrained(run)
    stored = ckpt.load_prior(loaded, fit=False)
    assert stored.info["codes"] == 60
    attrs = ckpt.load_attributes(loaded.path, loaded.model)
    assert int(attrs.counts.sum()) == 60 and attrs.info["sentences_encoded"] == 60
    full = ckpt.load_pretrained(train(tiny_config(["train.max_steps=3", "train.standardize_latents=false"]),
                                      tmp_path / "all"))
    assert ckpt.load_prior(full, fit=False).info["codes"] > 60
    a, b = loaded.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    (loaded.path / ckpt.PRIOR).unlink()
    refit = ckpt.load_prior(ckpt.load_pretrained(run))
    assert refit.info["codes"] == 60 and torch.equal(refit.means, stored.means)


def test_aggregate_moments_of_a_mixture_of_gaussians():
    """Mean and variance of the equal-weight mixture of N(mu_i, exp(logvar_i)), per dimension,
    against the hand computation and against a large sample of the mixture."""
    from textvae.prior import aggregate_moments

    mu = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    logvar = torch.tensor([[0.0, -2.0], [math.log(3.0), -2.0]])
    mean, std = aggregate_moments(mu, logvar)
    torch.testing.assert_close(mean, torch.tensor([1.0, 1.0]))
    # dim 0: Var[mu] = 1, E[var] = (1 + 3) / 2 = 2; dim 1: 0 + exp(-2)
    torch.testing.assert_close(std, torch.tensor([math.sqrt(3.0), math.exp(-1.0)]))
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 2, (200_000,), generator=g)
    z = mu[rows] + (0.5 * logvar[rows]).exp() * torch.randn(200_000, 2, generator=g)
    torch.testing.assert_close(z.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), std, atol=0.02, rtol=0)


def test_training_ends_in_standardised_coordinates(tmp_path):
    """train.standardize_latents (the default): the final checkpoint's codes of the training
    sentences it encoded have mean 0 and variance 1 per dimension in aggregate, its prior is fitted
    to them, and its decoder reconstructs as the same run's in the training coordinates does."""
    from helpers import tiny_config
    from textvae.data import collate, prepare_split
    from textvae.evaluate import posterior_params
    from textvae.prior import aggregate_moments, code_rows
    from textvae.train import train

    cfg = tiny_config(["train.max_steps=6", "train.final_codes=60"])
    std = ckpt.load_pretrained(train(cfg, tmp_path / "std"))
    raw = ckpt.load_pretrained(train(tiny_config(["train.max_steps=6", "train.final_codes=60",
                                                  "train.standardize_latents=false"]), tmp_path / "raw"))
    corpus, _ = prepare_split(cfg.data.train, "train", std.tokenizer, cfg.model.max_len,
                              min_words=cfg.data.min_words, max_words=cfg.data.max_words)
    ids = [corpus.ids[i] for i in code_rows(len(corpus), 60, cfg.train.seed)]
    with torch.no_grad():
        mu, logvar = posterior_params(std.model, ids, std.tokenizer)
        mean, sd = aggregate_moments(mu, logvar)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(sd, torch.ones_like(sd), atol=1e-4, rtol=0)
        mean_raw, sd_raw = aggregate_moments(*posterior_params(raw.model, ids, raw.tokenizer))
        assert (sd_raw - 1).abs().max() > 0.05  # the training coordinates were not standard already
        assert ckpt.load_prior(std, fit=False) is not None
        b = collate(ids[:8], std.tokenizer)
        eps = torch.randn(len(b.enc_ids), cfg.model.latent_dim, generator=torch.Generator().manual_seed(0))
        a_out = std.model(b.enc_ids, b.enc_mask, b.dec_in, eps=eps)
        r_out = raw.model(b.enc_ids, b.enc_mask, b.dec_in, eps=eps)
        torch.testing.assert_close(a_out.logits, r_out.logits, atol=1e-4, rtol=1e-4)


def test_fit_by_label_fits_each_label_to_its_own_codes():
    """One mixture per label on that label's rows alone: unlabelled rows (-1) are left out, and a
    label without rows gets no mixture."""
    from textvae.prior import fit_by_label

    z = _two_clusters()  # 600 rows near (4, 0, 0), then 300 near (-4, 1, 0)
    labels = [0] * 600 + [1] * 290 + [-1] * 10
    by = fit_by_label(z, labels, ["a", "b", "c"], components=2, seed=0)
    assert set(by) == {"a", "b"}
    assert by["a"].info["codes"] == 600 and by["b"].info["codes"] == 290 and by["b"].info["label"] == "b"
    for name, centre in (("a", [4.0, 0.0, 0.0]), ("b", [-4.0, 1.0, 0.0])):
        mean = by[name].weights @ by[name].means
        assert torch.allclose(mean, torch.tensor(centre), atol=0.1)
        draws = by[name].sample(2000, torch.Generator().manual_seed(1))
        assert torch.allclose(draws.mean(0), torch.tensor(centre), atol=0.1)


def test_training_stores_a_prior_per_label_and_sample_label_draws_from_it(trained, trained_run, monkeypatch):
    """A labelled corpus and a model that is not label-conditional: the final checkpoint holds a
    mixture per label, fitted to that label's codes (its mean is the label's mean code, the style
    vector, up to the posterior noise of one draw per sentence), and ``sample(label=...)`` draws z
    from it."""
    import textvae.generate
    from textvae.api import TextVAE

    stored = ckpt.load_prior(trained, fit=False)
    assert sorted(stored.by_label) == sorted(trained.label_names) == ["kjv", "web"]
    assert sum(m.info["codes"] for m in stored.by_label.values()) == stored.info["codes"]
    attrs = ckpt.load_attributes(trained.path, trained.model)
    for name, vec in zip(attrs.labels, attrs.means):
        gm = stored.by_label[name]
        assert torch.allclose(gm.weights @ gm.means, vec, atol=0.5)
    vae = TextVAE.from_pretrained(trained_run)
    seen = []
    real = textvae.generate.sample
    monkeypatch.setattr(textvae.generate, "sample", lambda *a, **k: seen.append(k) or real(*a, **k))
    web = vae.sample(3, seed=2, label="web")
    assert len(web) == 3 and torch.equal(seen[-1]["prior"].means, stored.by_label["web"].means)
    assert seen[-1]["label"] is None
    vae.sample(3, seed=2)
    assert torch.equal(seen[-1]["prior"].means, stored.means)


def test_a_checkpoint_without_per_label_priors_gets_them_fitted_and_cached(copy_run):
    """A checkpoint of older code stores only the corpus-wide mixture: the first ``--label`` fits
    the per-label ones to the same codes as training would, keeps the stored mixture as it is,
    and caches them in the folder."""
    from textvae.api import TextVAE

    run = copy_run()
    loaded = ckpt.load_pretrained(run)
    stored = ckpt.load_prior(loaded, fit=False)
    expected = stored.by_label
    stored.by_label = {}
    ckpt.write_files(run / "checkpoint", ckpt.prior_files(stored, loaded.model))
    assert ckpt.load_prior(ckpt.load_pretrained(run), fit=False).by_label == {}
    vae = TextVAE.from_pretrained(run)
    vae.sample(2, label="kjv")
    again = ckpt.load_prior(ckpt.load_pretrained(run), fit=False)
    assert torch.equal(again.means, stored.means)
    assert sorted(again.by_label) == ["kjv", "web"]
    for name in again.by_label:
        assert torch.allclose(again.by_label[name].means, expected[name].means, atol=1e-4)
