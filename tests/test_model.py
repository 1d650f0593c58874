"""textvae.model: shapes, causality, use of z, KV cache, encoder padding invariance."""

from __future__ import annotations

import pytest
import torch

from helpers import small_model_config
from textvae.model import SentenceVAE

INJECTIONS = ("memory", "embedding", "both")
BOS, EOS, PAD = 1, 2, 0


def make_model(seed: int = 0, perturb: float = 0.5, **kw) -> SentenceVAE:
    """A small model in eval mode. The default init (std 0.02) makes every logit almost the
    same; ``perturb`` adds noise to all weights so that differences are large and meaningful."""
    torch.manual_seed(seed)
    model = SentenceVAE(small_model_config(**kw))
    if perturb:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * perturb * 0.2)
    return model.eval()


def tokens(B: int, T: int, seed: int = 0, vocab: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, vocab, (B, T), generator=g)
    x[:, 0] = BOS
    return x


def test_forward_shapes():
    model = make_model()
    enc = tokens(3, 9)
    mask = torch.ones_like(enc, dtype=torch.bool)
    out = model(enc, mask, tokens(3, 7, seed=1))
    assert out.logits.shape == (3, 7, 40)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, 8)
    det = model(enc, mask, tokens(3, 7, seed=1), sample=False)
    assert torch.equal(det.z, det.mu)


def test_reparameterize_uses_generator_and_scale():
    mu, logvar = torch.full((2000, 4), 3.0), torch.full((2000, 4), 2 * torch.log(torch.tensor(0.5)).item())
    z1 = SentenceVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    z2 = SentenceVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(z1, z2)
    assert z1.mean().item() == pytest.approx(3.0, abs=0.03)
    assert z1.std().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("z_injection", INJECTIONS)
def test_decoder_is_causal(z_injection):
    model = make_model(z_injection=z_injection)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    x = tokens(2, 12)
    with torch.no_grad():
        base, _ = model.decode(x, z)
        for t in (0, 4, 10):
            y = x.clone()
            y[:, t + 1] = 4 + (y[:, t + 1] - 4 + 7) % 36  # a different ordinary token at t+1
            changed, _ = model.decode(y, z)
            torch.testing.assert_close(changed[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
            assert (changed[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3  # the change is visible at t+1


@pytest.mark.parametrize("z_injection", INJECTIONS)
def test_decoder_uses_z(z_injection):
    model = make_model(z_injection=z_injection)
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    x = tokens(2, 6)
    with torch.no_grad():
        a, _ = model.decode(x, z1)
        b, _ = model.decode(x, z2)
        a2, _ = model.decode(x, z1.clone())
    assert torch.equal(a, a2)
    # every position, the first included, depends on z
    assert ((a - b).abs().amax(dim=(0, 2)) > 1e-3).all()


def test_unperturbed_init_also_depends_on_z():
    model = make_model(perturb=0.0)
    x = tokens(1, 5)
    with torch.no_grad():
        a, _ = model.decode(x, torch.zeros(1, 8))
        b, _ = model.decode(x, torch.full((1, 8), 3.0))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("z_injection,z_slots", [*((i, 1) for i in INJECTIONS), ("memory", 3), ("both", 4)])
def test_kv_cache_step_by_step_equals_full(z_injection, z_slots):
    model = make_model(z_injection=z_injection, z_slots=z_slots)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    x = tokens(3, 15, seed=4)
    with torch.no_grad():
        full, full_cache = model.decode(x, z)
        cache = model.init_cache(z)
        steps = []
        for t in range(x.shape[1]):
            logits, cache = model.decode(x[:, t : t + 1], z, cache, start=t)
            steps.append(logits)
        stepped = torch.cat(steps, dim=1)
        # a chunked prefill followed by single steps is the same again
        cache2 = model.init_cache(z)
        head, cache2 = model.decode(x[:, :6], z, cache2, start=0)
        mid, cache2 = model.decode(x[:, 6:10], z, cache2, start=6)
        tail = [model.decode(x[:, t : t + 1], z, cache2, start=t)[0] for t in range(10, 11)]
    assert full.abs().max() > 1.0  # logits far from zero, so that atol=1e-5 is a tight check
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([head, mid] + tail, 1), full[:, :11], rtol=0, atol=1e-5)
    # the cache holds the memory slots (if any) plus every token, per layer
    slot = z_slots if z_injection in ("memory", "both") else 0
    assert len(cache) == 2
    for k, v in cache:
        assert k.shape == v.shape == (3, 2, slot + 15, 16)
    for (k1, v1), (k2, v2) in zip(cache, full_cache):
        torch.testing.assert_close(k1, k2, rtol=0, atol=1e-5)
        torch.testing.assert_close(v1, v2, rtol=0, atol=1e-5)


def test_decode_past_max_len_raises():
    model = make_model()
    with pytest.raises(ValueError, match="max_len"):
        model.decode(tokens(1, 5), torch.zeros(1, 8), start=20)
    with pytest.raises(ValueError, match="max_len"):
        model.encode(tokens(1, 25), torch.ones(1, 25, dtype=torch.bool))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_padding_invariance(pooling):
    model = make_model(pooling=pooling)
    short = [BOS, 7, 8, 9, EOS]
    longer = [BOS, 10, 11, 12, 13, 14, 15, 16, EOS]
    longest = [BOS] + list(range(17, 29)) + [EOS]
    S = len(longest)
    batch = torch.full((3, S), PAD)
    mask = torch.zeros(3, S, dtype=torch.bool)
    for i, s in enumerate((short, longer, longest)):
        batch[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    with torch.no_grad():
        mu_b, logvar_b = model.encode(batch, mask)
        mu_a, logvar_a = model.encode(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.bool))
        # whatever token sits in a padded position, it is ignored
        noisy = batch.clone()
        noisy[~mask] = 33
        mu_n, _ = model.encode(noisy, mask)
    torch.testing.assert_close(mu_b[0], mu_a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar_b[0], logvar_a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mu_n, mu_b, rtol=1e-5, atol=1e-5)
    assert (mu_b[0] - mu_b[1]).abs().max() > 1e-3  # different sentences, different codes


def test_cls_and_mean_pooling_differ():
    mean = make_model(pooling="mean")
    cls = make_model(pooling="cls")
    assert torch.equal(mean.to_posterior.weight, cls.to_posterior.weight)  # same init
    x = tokens(2, 6)
    m = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(mean.encode(x, m)[0], cls.encode(x, m)[0])


def test_output_embedding_is_tied():
    model = make_model(perturb=0.0)
    z = torch.zeros(1, 8)
    with torch.no_grad():
        before, _ = model.decode(tokens(1, 3), z)
        model.tok_emb.weight[5] += 1.0
        after, _ = model.decode(tokens(1, 3), z)
    # changing one embedding row changes that token's logit
    assert not torch.allclose(before[..., 5], after[..., 5])
    assert [n for n, p in model.named_parameters() if p.shape == (40, 32)] == ["tok_emb.weight"]


def test_z_injection_parameters():
    assert hasattr(make_model(z_injection="memory"), "z_to_memory")
    assert not hasattr(make_model(z_injection="memory"), "z_to_embedding")
    assert hasattr(make_model(z_injection="embedding"), "z_to_embedding")
    assert not hasattr(make_model(z_injection="embedding"), "z_to_memory")
    both = make_model(z_injection="both")
    assert hasattr(both, "z_to_memory") and hasattr(both, "z_to_embedding")


def test_vocab_size_required():
    with pytest.raises(ValueError, match="vocab_size"):
        SentenceVAE(small_model_config(vocab_size=0))


def test_gradients_reach_encoder():
    torch.manual_seed(0)
    model = SentenceVAE(small_model_config()).train()
    enc = tokens(2, 6)
    out = model(enc, torch.ones_like(enc, dtype=torch.bool), tokens(2, 5), generator=torch.Generator().manual_seed(0))
    out.logits.logsumexp(-1).sum().backward()
    assert model.encoder[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.to_posterior.weight.grad.abs().sum() > 0


def test_initial_posterior_is_narrow():
    """model.init_logvar sets the logvar head's bias: at -6 a sample stays within ~0.05 of mu."""
    torch.manual_seed(0)
    model = SentenceVAE(small_model_config(init_logvar=-6.0))
    L = model.cfg.latent_dim
    assert torch.all(model.to_posterior.bias[L:] == -6.0)
    ids = torch.randint(4, 40, (8, 7))
    mu, logvar = model.encode(ids, torch.ones_like(ids, dtype=torch.bool))
    z = model.reparameterize(mu, logvar)
    assert (z - mu).std() < 0.1 < 2 * mu.std() + 0.1
    wide = SentenceVAE(small_model_config(init_logvar=0.0))
    assert torch.all(wide.to_posterior.bias[L:] == 0.0)


def _autoencode(init_logvar: float, steps: int = 120) -> tuple[float, float]:
    """Train on random token strings (no structure but what z carries), beta = 0; return the
    reconstruction NLL with each sentence's own posterior mean and with the means shuffled."""
    from textvae.losses import reconstruction_nll

    torch.manual_seed(0)
    model = SentenceVAE(small_model_config(init_logvar=init_logvar, vocab_size=24))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(4, 24, (32, 6), generator=g)
        enc = torch.cat([torch.full((32, 1), 1), x, torch.full((32, 1), 2)], 1)
        dec_in, targets = enc[:, :-1], enc[:, 1:]
        out = model(enc, torch.ones_like(enc, dtype=torch.bool), dec_in)
        loss = reconstruction_nll(out.logits, targets, 0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x = torch.randint(4, 24, (64, 6), generator=g)
        enc = torch.cat([torch.full((64, 1), 1), x, torch.full((64, 1), 2)], 1)
        mu, _ = model.encode(enc, torch.ones_like(enc, dtype=torch.bool))
        own = reconstruction_nll(model.decode(enc[:, :-1], mu)[0], enc[:, 1:], 0).mean().item()
        other = reconstruction_nll(model.decode(enc[:, :-1], mu.roll(1, 0))[0], enc[:, 1:], 0).mean().item()
    return own, other


def test_narrow_initial_posterior_makes_the_decoder_read_z():
    """The point of init_logvar: on strings that only z can explain, the decoder learns to use z."""
    own, other = _autoencode(-6.0)  # measured: 15.5 vs 23.1 nats; with init_logvar 0: 17.1 vs 19.6
    assert own < other - 5.0, (own, other)


def test_bag_of_words_head_only_when_weighted():
    enc = tokens(3, 9)
    mask = torch.ones_like(enc, dtype=torch.bool)
    plain = make_model()
    assert not hasattr(plain, "z_to_bow") and plain(enc, mask, tokens(3, 7, seed=1)).bow_logits is None
    model = make_model(bow_weight=0.5)
    out = model(enc, mask, tokens(3, 7, seed=1), sample=False)
    assert out.bow_logits.shape == (3, 40)
    torch.testing.assert_close(out.bow_logits, model.z_to_bow(out.mu))  # a function of z alone
    assert not hasattr(make_model(latent_dim=0, bow_weight=0.5), "z_to_bow")  # the LM baseline has no z


def test_negative_bow_weight_rejected():
    from textvae.errors import ConfigError

    with pytest.raises(ConfigError, match="bow_weight"):
        small_model_config(bow_weight=-1.0)


def test_z_slots_are_separate_projections_of_z():
    model = make_model(z_injection="memory", z_slots=3)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = model.init_cache(z)
        flat = model.z_to_memory(z).view(2, 2, 2, 3, 2, 16)  # (B, layers, k/v, slot, head, Dh)
    for layer, (k, v) in enumerate(cache):
        assert k.shape == v.shape == (2, 2, 3, 16)  # (B, heads, slots, Dh)
        torch.testing.assert_close(k, flat[:, layer, 0].transpose(1, 2))
        torch.testing.assert_close(v, flat[:, layer, 1].transpose(1, 2))
    assert not torch.allclose(cache[0][0][:, :, 0], cache[0][0][:, :, 1])  # slots differ


def test_z_slots_need_a_transformer_decoder():
    from textvae.config import DecoderConfig
    from textvae.errors import ConfigError

    with pytest.raises(ConfigError, match="z_slots"):
        small_model_config(z_slots=0)
    with pytest.raises(ConfigError, match="z_slots > 1 needs"):
        small_model_config(z_slots=2, decoder=DecoderConfig(type="gru"))
