"""textvae.losses: KL, free bits, reconstruction NLL, ELBO, word dropout."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from textvae.losses import bag_of_words_nll, elbo_loss, free_bits_kl, gaussian_kl, reconstruction_nll, word_dropout

PAD, BOS, EOS, UNK = 0, 1, 2, 3


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g) * 2
    logvar = torch.randn(6, 5, generator=g) * 1.5
    ours = gaussian_kl(mu, logvar)
    assert ours.shape == (6, 5) and ours.dtype == torch.float32
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.sum(-1), ref.sum(-1), rtol=1e-5, atol=1e-5)


def test_gaussian_kl_zero_at_prior_and_float32_from_half():
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))
    out = gaussian_kl(torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((2, 3), 0.5))


def test_free_bits_floor_per_dimension():
    # batch of two; per-dimension batch means are 0.05, 0.5, 2.0, 0.0
    kl = torch.tensor([[0.0, 0.4, 1.0, 0.0],
                       [0.1, 0.6, 3.0, 0.0]])
    floor = 0.3
    # dims below the floor count as the floor, dims above count as themselves
    assert free_bits_kl(kl, floor).item() == pytest.approx(0.3 + 0.5 + 2.0 + 0.3)
    # 0 disables: the plain mean over the batch of the summed KL
    assert free_bits_kl(kl, 0.0).item() == pytest.approx(kl.sum(1).mean().item())
    # a floor below every dimension changes nothing
    assert free_bits_kl(kl + 1.0, 0.5).item() == pytest.approx((kl + 1.0).sum(1).mean().item())


def test_free_bits_gradient_vanishes_below_floor():
    kl = torch.tensor([[0.1, 2.0]], requires_grad=True)
    free_bits_kl(kl, 0.5).backward()
    assert kl.grad.tolist() == [[0.0, 1.0]]


def test_free_bits_groups_floor_each_group_total():
    # per-dimension batch means 0.05, 0.5, 2.0, 0.0 (as above), floor 0.3 per dimension
    kl = torch.tensor([[0.0, 0.4, 1.0, 0.0],
                       [0.1, 0.6, 3.0, 0.0]])
    # one group: the total 2.55 is above 4 * 0.3, so it counts as itself
    assert free_bits_kl(kl, 0.3, groups=1).item() == pytest.approx(2.55)
    # one group whose total is below the floor counts as the floor
    assert free_bits_kl(kl * 0.1, 0.3, groups=1).item() == pytest.approx(1.2)
    # two groups of two: (0.55 -> floor 0.6) + 2.0
    assert free_bits_kl(kl, 0.3, groups=2).item() == pytest.approx(0.6 + 2.0)
    # as many groups as dimensions (or 0) is the per-dimension floor
    assert free_bits_kl(kl, 0.3, groups=4).item() == pytest.approx(free_bits_kl(kl, 0.3).item())
    with pytest.raises(ValueError, match="3 equal groups"):
        free_bits_kl(kl, 0.3, groups=3)


def test_free_bits_one_group_moves_nats_between_dimensions_for_free():
    # below the total floor no dimension is pushed down, however the nats are spread; above it
    # every dimension is pushed down alike (a per-dimension floor pushes only the ones above it)
    kl = torch.tensor([[0.1, 2.0]], requires_grad=True)
    free_bits_kl(kl, 1.5, groups=1).backward()
    assert kl.grad.tolist() == [[0.0, 0.0]]
    kl = torch.tensor([[0.1, 3.0]], requires_grad=True)
    free_bits_kl(kl, 1.5, groups=1).backward()
    assert kl.grad.tolist() == [[1.0, 1.0]]


def test_reconstruction_nll_matches_manual_gather():
    g = torch.Generator().manual_seed(1)
    B, T, V = 3, 5, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    targets = torch.tensor([[5, 6, 7, EOS, PAD],
                            [8, EOS, PAD, PAD, PAD],
                            [4, 5, 6, 7, EOS]])
    ours = reconstruction_nll(logits, targets, PAD)
    logp = logits.log_softmax(-1)
    manual = torch.zeros(B)
    for b in range(B):
        for t in range(T):
            if targets[b, t] != PAD:
                manual[b] -= logp[b, t, targets[b, t]]
    assert ours.shape == (B,)
    torch.testing.assert_close(ours, manual, rtol=1e-5, atol=1e-5)


def test_reconstruction_nll_ignores_pad_positions():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 9, generator=g)
    targets = torch.tensor([[5, EOS, PAD, PAD], [6, 7, 8, EOS]])
    changed = logits.clone()
    changed[0, 2:] = torch.randn(2, 9, generator=g) * 50  # only pad positions of row 0
    torch.testing.assert_close(reconstruction_nll(logits, targets, PAD), reconstruction_nll(changed, targets, PAD))
    # padding a batch with more pad columns changes nothing
    wider = torch.cat([logits, torch.randn(2, 3, 9, generator=g)], dim=1)
    wider_t = torch.cat([targets, torch.full((2, 3), PAD)], dim=1)
    torch.testing.assert_close(reconstruction_nll(wider, wider_t, PAD), reconstruction_nll(logits, targets, PAD))


def test_elbo_loss_parts():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, 13, generator=g)
    targets = torch.randint(4, 13, (4, 6), generator=g)
    targets[:, -1] = PAD
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    out = elbo_loss(logits, targets, mu, logvar, PAD, beta=0.25, free_bits=0.7)
    rec = reconstruction_nll(logits, targets, PAD).mean()
    kl_dim = gaussian_kl(mu, logvar)
    kl = kl_dim.sum(1).mean()
    kl_obj = kl_dim.mean(0).clamp_min(0.7).sum()
    torch.testing.assert_close(out["rec"], rec)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["kl_objective"], kl_obj)
    torch.testing.assert_close(out["loss"], rec + 0.25 * kl_obj)
    torch.testing.assert_close(out["neg_elbo"], rec + kl)


# --------------------------------------------------------------------------- word dropout


def make_dec_in(B: int = 64, T: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 100, (B, T), generator=g)
    lengths = torch.randint(3, T, (B,), generator=g)
    x[:, 0] = BOS
    for i, n in enumerate(lengths.tolist()):
        x[i, n] = EOS  # never in real decoder inputs, but it must survive too
        x[i, n + 1 :] = PAD
    return x


def test_bag_of_words_nll_by_hand():
    g = torch.Generator().manual_seed(1)
    bow = torch.randn(2, 7, generator=g)
    targets = torch.tensor([[4, 5, 4, EOS, PAD], [6, EOS, PAD, PAD, PAD]])
    logp = bow.log_softmax(-1)
    want = torch.stack([-(2 * logp[0, 4] + logp[0, 5]), -logp[1, 6]])  # order-free; pad and eos left out
    torch.testing.assert_close(bag_of_words_nll(bow, targets, (PAD, EOS)), want)
    with_eos = bag_of_words_nll(bow, targets, (PAD,))
    torch.testing.assert_close(with_eos, want - torch.stack([logp[0, EOS], logp[1, EOS]]))


def test_elbo_loss_adds_weighted_bag_of_words():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 7, generator=g)
    targets = torch.tensor([[4, 5, EOS], [6, EOS, PAD]])
    mu, logvar = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    bow = torch.randn(2, 7, generator=g)
    plain = elbo_loss(logits, targets, mu, logvar, PAD, beta=0.5)
    assert "bow" not in plain
    both = elbo_loss(logits, targets, mu, logvar, PAD, beta=0.5, bow_logits=bow, bow_weight=0.3, bow_ignore=(EOS,))
    want_bow = bag_of_words_nll(bow, targets, (PAD, EOS)).mean()
    torch.testing.assert_close(both["bow"], want_bow)
    torch.testing.assert_close(both["loss"], plain["loss"] + 0.3 * want_bow)
    torch.testing.assert_close(both["neg_elbo"], plain["neg_elbo"])  # the bound itself is untouched


def test_elbo_loss_adds_weighted_positional_nll():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, generator=g)
    pos_logits = torch.randn(2, 3, 7, generator=g)
    targets = torch.tensor([[4, 5, EOS], [6, EOS, PAD]])
    mu, logvar = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    plain = elbo_loss(logits, targets, mu, logvar, PAD, beta=0.5)
    assert "position" not in plain
    both = elbo_loss(logits, targets, mu, logvar, PAD, beta=0.5, position_logits=pos_logits, position_weight=0.4)
    lp = pos_logits.log_softmax(-1)
    want = -torch.stack([lp[0, 0, 4] + lp[0, 1, 5] + lp[0, 2, EOS], lp[1, 0, 6] + lp[1, 1, EOS]]).mean()  # pad left out
    torch.testing.assert_close(both["position"], want)
    torch.testing.assert_close(both["loss"], plain["loss"] + 0.4 * want)
    torch.testing.assert_close(both["neg_elbo"], plain["neg_elbo"])


def test_word_dropout_never_touches_specials():
    x = make_dec_in()
    out = word_dropout(x, 0.999, UNK, (PAD, BOS, EOS), torch.Generator().manual_seed(0))
    special = (x == PAD) | (x == BOS) | (x == EOS)
    assert torch.equal(out[special], x[special])
    ordinary = ~special
    assert (out[ordinary] == UNK).float().mean() > 0.99
    assert x[ordinary].ne(UNK).all()  # sanity: the input had no unk


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_word_dropout_rate(rate):
    x = make_dec_in(B=128, T=64, seed=1)
    out = word_dropout(x, rate, UNK, (PAD, BOS, EOS), torch.Generator().manual_seed(5))
    ordinary = (x != PAD) & (x != BOS) & (x != EOS)
    n = int(ordinary.sum())
    frac = (out[ordinary] == UNK).float().mean().item()
    tol = 5 * (rate * (1 - rate) / n) ** 0.5  # five standard deviations
    assert abs(frac - rate) < tol, (frac, rate, tol)
    changed = out != x
    assert torch.equal(out[changed], torch.full_like(out[changed], UNK))


def test_word_dropout_rate_zero_is_identity():
    x = make_dec_in()
    assert word_dropout(x, 0.0, UNK, (PAD, BOS, EOS)) is x
    assert torch.equal(word_dropout(x, 0.0, UNK, (PAD, BOS, EOS)), x)


def test_word_dropout_reproducible_with_generator():
    x = make_dec_in()
    a = word_dropout(x, 0.4, UNK, (PAD, BOS, EOS), torch.Generator().manual_seed(9))
    b = word_dropout(x, 0.4, UNK, (PAD, BOS, EOS), torch.Generator().manual_seed(9))
    c = word_dropout(x, 0.4, UNK, (PAD, BOS, EOS), torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
