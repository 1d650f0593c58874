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


@pytest.mark.parametrize("pooling", ["mean", "cls", "attention"])
def test_encoder_padding_invariance(pooling):
    model = make_model(pooling=pooling)  # perturbed: attention queries away from zero
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


def test_attention_pooling_starts_as_the_mean_and_learns_to_weight():
    """model.pooling 'attention': P zero queries give P copies of the masked mean (so the model
    starts as the mean-pooled one); non-zero queries weight positions differently."""
    assert not SentenceVAE(small_model_config(pooling="attention")).pool.queries.any()  # built at zero
    attn = make_model(pooling="attention", pool_queries=3)  # perturbed weights
    assert attn.pool.queries.shape == (3, attn.cfg.d_model)
    assert attn.to_posterior.in_features == 3 * attn.cfg.d_model
    x = tokens(2, 7)
    m = torch.ones_like(x, dtype=torch.bool)
    m[1, 5:] = False
    with torch.no_grad():
        attn.pool.queries.zero_()
        states = attn.encoder(x, m)
        h_mean = (states * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        h_attn = attn.summary(x, m)
        torch.testing.assert_close(h_attn, h_mean.repeat(1, 3), rtol=1e-5, atol=1e-6)
        attn.pool.queries.normal_(0, 5.0)
        h_learned = attn.summary(x, m).view(2, 3, -1)
    for q in range(3):
        assert (h_learned[:, q] - h_mean).abs().max() > 1e-3
    assert (h_learned[:, 0] - h_learned[:, 1]).abs().max() > 1e-3


def test_encoder_dropout_is_the_encoders_own():
    """model.encoder.dropout sets the from-scratch encoder's dropout apart from model.dropout
    (None: model.dropout for both)."""
    from textvae.config import EncoderConfig

    both = SentenceVAE(small_model_config(dropout=0.3))
    apart = SentenceVAE(small_model_config(dropout=0.0, encoder=EncoderConfig(dropout=0.4)))
    rates = lambda part: {m.p for m in part.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates(both.encoder) == {0.3} and rates(both.decoder) == {0.3}
    assert rates(apart.encoder) == {0.4} and rates(apart.decoder) == {0.0}
    x = tokens(4, 9)
    m = torch.ones_like(x, dtype=torch.bool)
    apart.train()
    torch.manual_seed(1)
    mu_1 = apart.encode(x, m)[0]
    assert not torch.equal(mu_1, apart.encode(x, m)[0])  # dropout in the encoder, in training
    z = torch.randn(4, apart.cfg.latent_dim)
    assert torch.equal(apart.decode(x, z)[0], apart.decode(x, z)[0])  # none in the decoder
    apart.eval()
    assert torch.equal(apart.encode(x, m)[0], apart.encode(x, m)[0])


def test_encoder_dropout_range_checked():
    from textvae.config import ConfigError, EncoderConfig

    with pytest.raises(ConfigError, match="model.encoder.dropout"):
        EncoderConfig(dropout=1.0)


def test_attention_pooling_feeds_the_classifier_of_a_conditional_model():
    model = make_model(pooling="attention", pool_queries=2, conditional="label", num_labels=2, label_dim=4)
    assert model.classifier[0].in_features == 2 * model.cfg.d_model
    x = tokens(3, 7)
    m = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, m, x, labels=torch.tensor([0, -1, 1]))
        assert out.logits.shape == (4, 7, 40) and model.classify(x, m).shape == (3, 2)


def test_attention_pooling_needs_a_query():
    from textvae.config import ConfigError

    with pytest.raises(ConfigError, match="pool_queries"):
        small_model_config(pooling="attention", pool_queries=0)


@pytest.mark.parametrize("decoder", ["transformer", "gru"])
def test_output_embedding_is_tied(decoder):
    """The output layer is the token embedding E: logit r = h . E[r], h the decoder's final hidden
    state. Adding delta to row r of a token absent from the input leaves h as it was, so logit r
    moves by exactly h . delta (about |h| = sqrt(D) = 5.7 here) and no other logit moves."""
    from textvae.config import DecoderConfig

    model = make_model(perturb=0.0, decoder=DecoderConfig(type=decoder))
    assert model.decoder._tok_emb is model.tok_emb  # the decoder holds the model's embedding, not a copy
    assert [n for n, p in model.named_parameters() if p.shape == (40, 32)] == ["tok_emb.weight"]
    x = tokens(1, 5)
    r = next(t for t in range(4, 40) if t not in x)
    z = torch.zeros(1, 8)
    hidden = []
    hook = model.decoder.ln.register_forward_hook(lambda module, args, out: hidden.append(out))
    with torch.no_grad():
        before, _ = model.decode(x, z)
        h = hidden[-1][0]  # (T, D): the states the output layer projects
        delta = h[-1] / h[-1].norm()  # h[-1] . delta = |h[-1]|, far from orthogonal
        model.tok_emb.weight[r] += delta
        after, _ = model.decode(x, z)
    hook.remove()
    assert torch.equal(hidden[-1][0], h)  # row r is not an input: the states are the same
    want = h @ delta  # (T,)
    assert want[-1] > 4.0
    torch.testing.assert_close((after - before)[0, :, r], want, rtol=0, atol=1e-4)
    others = torch.arange(40) != r
    assert (after - before)[0][:, others].abs().max() < 1e-5


@pytest.mark.parametrize("decoder", ["transformer", "gru"])
def test_factorised_embedding_is_one_low_rank_table_both_ways(decoder):
    """model.embed_dim E < D (Lan et al. 2020): the embedding in use is the V x D table E P of rank E.
    Input rows are rows of E P, and the logits are h (E P)^T, computed as (h P^T) E^T."""
    from textvae.config import DecoderConfig

    model = make_model(embed_dim=8, decoder=DecoderConfig(type=decoder))
    emb = model.tok_emb
    assert emb.weight.shape == (40, 8) and emb.proj.shape == (8, 32)
    assert [n for n, p in model.named_parameters() if n.startswith("tok_emb")] == ["tok_emb.weight", "tok_emb.proj"]
    table = emb.weight @ emb.proj  # (V, D)
    assert torch.linalg.matrix_rank(table) == 8
    x = tokens(2, 6)
    torch.testing.assert_close(emb(x), table[x])
    h = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(emb.logits(h), h @ table.T)
    hidden = []
    hook = model.decoder.ln.register_forward_hook(lambda module, args, out: hidden.append(out))
    with torch.no_grad():
        logits, _ = model.decode(x, torch.randn(2, 8, generator=torch.Generator().manual_seed(4)))
    hook.remove()
    torch.testing.assert_close(logits, hidden[-1] @ table.T)


def test_factorised_embedding_starts_with_the_spread_of_a_full_one():
    torch.manual_seed(0)
    model = SentenceVAE(small_model_config(vocab_size=4000, d_model=64, embed_dim=16))
    table = model.tok_emb.weight @ model.tok_emb.proj
    assert 0.015 < table.std().item() < 0.025  # the full table starts at std 0.02


def test_embed_dim_zero_or_d_model_is_the_full_table():
    torch.manual_seed(0)
    full = SentenceVAE(small_model_config()).state_dict()
    for embed_dim in (0, 32):
        torch.manual_seed(0)
        same = SentenceVAE(small_model_config(embed_dim=embed_dim)).state_dict()
        assert same.keys() == full.keys() and all(torch.equal(same[k], full[k]) for k in full)


def test_embed_dim_wider_than_the_model_rejected():
    from textvae.errors import ConfigError

    with pytest.raises(ConfigError, match="model.embed_dim"):
        small_model_config(embed_dim=33)


def test_z_injection_parameters():
    assert hasattr(make_model(z_injection="memory").decoder, "z_to_memory")
    assert not hasattr(make_model(z_injection="memory").decoder, "z_to_embedding")
    assert hasattr(make_model(z_injection="embedding").decoder, "z_to_embedding")
    assert not hasattr(make_model(z_injection="embedding").decoder, "z_to_memory")
    both = make_model(z_injection="both").decoder
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
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
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


def test_positional_head_reads_z_and_positions_only():
    enc = tokens(3, 9)
    mask = torch.ones_like(enc, dtype=torch.bool)
    assert make_model()(enc, mask, tokens(3, 7, seed=1)).position_logits is None
    model = make_model(position_weight=1.0)
    out = model(enc, mask, tokens(3, 7, seed=1), sample=False)
    assert out.position_logits.shape == (3, 7, 40)
    # the decoder's inputs do not reach it: other inputs, same logits; another z, other logits
    again = model(enc, mask, tokens(3, 7, seed=2), sample=False)
    torch.testing.assert_close(again.position_logits, out.position_logits)
    other = model.positional_head(out.mu.flip(0), 7)
    assert (other - out.position_logits).abs().amax() > 1e-3
    # positions differ, and a shorter request is a prefix of a longer one
    assert (out.position_logits[:, 0] - out.position_logits[:, 1]).abs().amax() > 1e-3
    torch.testing.assert_close(model.positional_head(out.mu, 4), out.position_logits[:, :4])
    assert not hasattr(make_model(latent_dim=0, position_weight=1.0), "positional_head")


def test_positional_head_leaves_the_default_init_alone():
    """Adding the head draws its weights after every other layer's: the rest is initialised as without it."""
    torch.manual_seed(0)
    plain = SentenceVAE(small_model_config())
    torch.manual_seed(0)
    with_head = SentenceVAE(small_model_config(position_weight=1.0))
    heads = {k for k in with_head.state_dict() if k.startswith("positional_head.")}
    assert heads and "tok_emb.weight" not in heads
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(with_head.state_dict()[k], v, msg=k)


def test_negative_position_weight_rejected():
    from textvae.errors import ConfigError

    with pytest.raises(ConfigError, match="position_weight"):
        small_model_config(position_weight=float("nan"))


def test_negative_bow_weight_rejected():
    from textvae.errors import ConfigError

    with pytest.raises(ConfigError, match="bow_weight"):
        small_model_config(bow_weight=-1.0)


def test_z_slots_are_separate_projections_of_z():
    model = make_model(z_injection="memory", z_slots=3)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = model.init_cache(z)
        flat = model.decoder.z_to_memory(z).view(2, 2, 2, 3, 2, 16)  # (B, layers, k/v, slot, head, Dh)
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


# --------------------------------------------------------------------------- parts and initialisation


def _old_layout(cfg) -> torch.nn.Module:
    """The model's layers as SentenceVAE built them before its parts were classes, under the old
    names, initialised the old way: every Linear and Embedding in this registration order (tok_emb,
    enc_pos, dec_pos, encoder blocks, enc_ln, to_posterior, decoder blocks, dec_ln, z_to_memory,
    z_to_embedding | gru, z_to_bow), then the residual projections, then the logvar bias."""
    import math

    nn = torch.nn
    from textvae.model import Block

    D, L, transformer = cfg.d_model, cfg.latent_dim, cfg.decoder.type == "transformer"
    memory = L > 0 and cfg.z_injection in ("memory", "both")
    embedding = L > 0 and cfg.z_injection in ("embedding", "both")
    m = nn.Module()
    m.tok_emb = nn.Embedding(cfg.vocab_size, D)
    if L:
        m.enc_pos = nn.Embedding(cfg.max_len, D)
    if transformer:
        m.dec_pos = nn.Embedding(cfg.max_len, D)
    if L:
        m.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.enc_layers))
        m.enc_ln = nn.LayerNorm(D)
        m.to_posterior = nn.Linear(D, 2 * L)
    if transformer:
        m.decoder = nn.ModuleList(Block(cfg) for _ in range(cfg.dec_layers))
        m.dec_ln = nn.LayerNorm(D)
        if memory:
            m.z_to_memory = nn.Linear(L, 2 * D * cfg.dec_layers * cfg.z_slots)
        if embedding:
            m.z_to_embedding = nn.Linear(L, D)
    else:
        m.gru = nn.Module()
        if L:
            m.gru.z_to_hidden = nn.Linear(L, cfg.dec_layers * D)
        m.gru.rnn = nn.GRU(D + L, D, num_layers=cfg.dec_layers, batch_first=True,
                           dropout=cfg.dropout if cfg.dec_layers > 1 else 0.0)
        m.gru.ln = nn.LayerNorm(D)
    if L and cfg.bow_weight > 0:
        m.z_to_bow = nn.Linear(L, cfg.vocab_size)
    m.apply(SentenceVAE._init_weights)
    for name, p in m.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(cfg.enc_layers, cfg.dec_layers)))
    if L:
        with torch.no_grad():
            m.to_posterior.bias[L:].fill_(cfg.init_logvar)
    return m


INIT_CASES = [dict(z_injection=i) for i in INJECTIONS] + [
    dict(z_injection="memory", z_slots=3), dict(bow_weight=0.5), dict(latent_dim=0), dict(latent_dim=0, bow_weight=0.5),
    dict(pooling="cls", enc_layers=3, dec_layers=1, d_ff=48, dropout=0.1, init_logvar=-3.0),
    dict(decoder="gru"), dict(decoder="gru", bow_weight=0.5, dec_layers=3, dropout=0.1),
    dict(decoder="gru", latent_dim=0),
    dict(decoder="gru", z_injection="memory", enc_layers=2, dec_layers=1)]


@pytest.mark.parametrize("case", INIT_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_a_seed_gives_the_weights_it_gave_before_the_parts_were_classes(case):
    """The documented initialisation order (SentenceVAE._init_parameters) draws the same random
    numbers as the old flat model: same seed, same weights, tensor for tensor under the old names."""
    from textvae.checkpoint import _legacy_names
    from textvae.config import DecoderConfig

    case = dict(case)
    cfg = small_model_config(decoder=DecoderConfig(type=case.pop("decoder", "transformer")), **case)
    torch.manual_seed(7)
    new = SentenceVAE(cfg).state_dict()
    new_rng = torch.get_rng_state()
    torch.manual_seed(7)
    old = _legacy_names(_old_layout(cfg).state_dict())
    assert sorted(old) == sorted(new)
    for name in new:
        assert torch.equal(new[name], old[name]), name
    assert torch.equal(torch.get_rng_state(), new_rng)  # and the same number of draws: what follows is the same too


def test_initialisation_is_deterministic_under_a_seed():
    from textvae.config import DecoderConfig

    for decoder in ("transformer", "gru"):
        cfg = small_model_config(decoder=DecoderConfig(type=decoder), bow_weight=0.5)
        states = []
        for seed in (3, 3, 4):
            torch.manual_seed(seed)
            states.append(SentenceVAE(cfg).state_dict())
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
        drawn = [k for k in states[0] if k.endswith("weight") and "ln" not in k]  # LayerNorm weights are ones
        assert not any(torch.equal(states[0][k], states[2][k]) for k in drawn)


def test_parameter_names():
    from textvae.config import DecoderConfig

    model = make_model(perturb=0.0, bow_weight=0.5)
    names = {n.removesuffix(".weight").removesuffix(".bias") for n, _ in model.named_parameters()}
    assert {"tok_emb", "encoder.pos", "encoder.blocks.0.attn.qkv", "encoder.ln", "to_posterior", "decoder.pos",
            "decoder.blocks.1.mlp.proj", "decoder.ln", "decoder.z_to_memory", "decoder.z_to_embedding",
            "z_to_bow"} <= names
    gru_model = make_model(perturb=0.0, decoder=DecoderConfig(type="gru"))
    gru = [n for n, _ in gru_model.named_parameters() if n.startswith("decoder.")]
    assert gru[0] == "decoder.z_to_hidden.weight" and "decoder.rnn.weight_ih_l0" in gru and "decoder.ln.weight" in gru
    assert make_model(perturb=0.0).pretrained_prefixes() == {} and make_model(perturb=0.0).pretrained_configs() == {}


def test_sentence_vae_composes_parts_without_asking_their_kind(monkeypatch):
    """A new decoder or encoder is a class and one line in DECODERS / ENCODERS: SentenceVAE's
    methods reach a part only through its interface (here toys stand in for the transformer parts)."""
    import ast
    import inspect
    import textwrap

    from textvae import generate, model as model_module
    from textvae.model import Decoder, Encoder

    for method in ("__init__", "encode", "init_cache", "decode", "reorder_cache", "forward"):
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(SentenceVAE, method))))
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not strings & {"transformer", "gru", "pretrained"} and "isinstance" not in calls, method
        assert "type" not in attrs or method == "__init__", method  # cfg.*.type only picks the builder

    class BagEncoder(Encoder):
        """The mean of the token embeddings (reads the shared tok_emb)."""

        uses_token_embedding = True

        def __init__(self, tok_emb):
            super().__init__()
            self._hold_token_embedding(tok_emb)

        @classmethod
        def build(cls, cfg, tok_emb, saved):
            return cls(tok_emb)

        @property
        def out_dim(self):
            return self._tok_emb.embedding_dim

        def forward(self, enc_ids, enc_mask):
            return self._tok_emb(enc_ids)  # (B, S, D)

    class UnigramDecoder(Decoder):
        """Logits from z alone; the cache counts the tokens read."""

        def __init__(self, cfg):
            super().__init__()
            self.out = torch.nn.Linear(cfg.latent_dim, cfg.vocab_size)

        @classmethod
        def build(cls, cfg, tok_emb, saved):
            return cls(cfg)

        def init_cache(self, z):
            return torch.zeros(z.shape[0], dtype=torch.long)

        def forward(self, dec_in, z, cache, start=0, last_only=False):
            B, T = dec_in.shape
            return self.out(z).unsqueeze(1).expand(B, 1 if last_only else T, -1), cache + T

        def reorder_cache(self, cache, rows):
            return cache[rows]

    monkeypatch.setitem(model_module.ENCODERS, "transformer", BagEncoder)
    monkeypatch.setitem(model_module.DECODERS, "transformer", UnigramDecoder)
    torch.manual_seed(0)
    model = SentenceVAE(small_model_config(bow_weight=0.5)).eval()
    assert isinstance(model.encoder, BagEncoder) and isinstance(model.decoder, UnigramDecoder)
    assert [n for n, _ in model.named_parameters()] == ["tok_emb.weight", "to_posterior.weight", "to_posterior.bias",
                                                        "decoder.out.weight", "decoder.out.bias", "z_to_bow.weight",
                                                        "z_to_bow.bias"]
    enc = tokens(3, 6)
    mask = torch.ones_like(enc, dtype=torch.bool)
    with torch.no_grad():
        out = model(enc, mask, tokens(3, 4, seed=1), sample=False)
        mu, _ = model.to_posterior(model.tok_emb(enc).mean(1)).chunk(2, -1)
        torch.testing.assert_close(out.mu, mu)
        torch.testing.assert_close(out.logits, model.decoder.out(mu).unsqueeze(1).expand(3, 4, 40))
        logits, cache = model.decode(tokens(3, 2), mu, model.init_cache(mu), start=0, last_only=True)
    assert logits.shape == (3, 1, 40) and cache.tolist() == [2, 2, 2]
    assert model.reorder_cache(cache + torch.arange(3), torch.tensor([2, 0])).tolist() == [4, 2]
    greedy = generate.decode(model, mu, BOS, EOS, "greedy", max_len=5)
    assert generate.decode(model, mu, BOS, EOS, "beam", beam_size=1, max_len=5).ids == greedy.ids


@pytest.mark.parametrize("decoder", ["transformer", "gru"])
def test_reset_decoder_keeps_the_encoder_and_the_shared_embedding(decoder):
    from dataclasses import replace

    cfg = small_model_config()
    cfg = replace(cfg, decoder=replace(cfg.decoder, type=decoder))
    torch.manual_seed(0)
    model = SentenceVAE(cfg, pad_id=0)
    with torch.no_grad():  # move every weight away from its initial value
        for p in model.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset = model.reset_decoder()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert reset and changed and all(k.startswith("decoder.") for k in changed), sorted(changed)
    assert not any(k.startswith(("encoder.", "tok_emb", "to_posterior")) for k in changed)
    assert {id(p) for p in reset} <= {id(p) for p in model.decoder.parameters()}
    assert model.tok_emb.weight is not None and torch.equal(before["tok_emb.weight"], after["tok_emb.weight"])


STANDARDIZE_CASES = {
    "gru": dict(decoder={"type": "gru"}),
    "transformer, both injections, heads": dict(bow_weight=1.0, position_weight=1.0),
    "transformer, memory slots": dict(z_injection="memory", z_slots=3),
    "conditional gru with an adversary": dict(decoder={"type": "gru"}, conditional="label", num_labels=2, label_dim=4,
                                              adversary_weight=1.0),
}


@pytest.mark.parametrize("case", list(STANDARDIZE_CASES))
def test_standardize_latents_is_an_exact_change_of_coordinates(case):
    """Every layer that reads z reads shift + scale * z', and the posterior gives z' = (z - shift) / scale:
    for the same noise the decoder, the heads and the adversary give what they gave before."""
    from textvae.config import DecoderConfig

    kw = dict(STANDARDIZE_CASES[case])
    if "decoder" in kw:
        kw["decoder"] = DecoderConfig(**kw["decoder"])
    model = make_model(**kw)
    x, m = tokens(4, 9), torch.ones(4, 9, dtype=torch.bool)
    labels = torch.tensor([0, 1, -1, 1]) if model.conditional else None
    eps = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    shift, scale = torch.randn(8, generator=g) * 0.5, torch.rand(8, generator=g) * 2 + 0.2
    with torch.no_grad():
        a = model(x, m, x, eps=eps, labels=labels)
        model.standardize_latents(shift, scale)
        b = model(x, m, x, eps=eps, labels=labels)
    torch.testing.assert_close(b.mu, (a.mu - shift) / scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.logvar, a.logvar - 2 * scale.log(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    for name in ("bow_logits", "position_logits", "adversary_logits", "class_logits"):
        if getattr(a, name) is not None:
            torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-4, rtol=1e-4)
    # a code of the new space decodes as its image in the old one did (generation's path)
    with torch.no_grad():
        z_new = torch.randn(2, 8, generator=g)
        model2 = make_model(**kw)
        code_old, code_new = shift + scale * z_new, z_new
        if model.conditional:
            y = torch.tensor([0, 1])
            code_old, code_new = model2.code(code_old, y), model.code(code_new, y)
        torch.testing.assert_close(model.decode(x[:2], code_new)[0], model2.decode(x[:2], code_old)[0], atol=1e-4, rtol=1e-4)


def test_standardize_latents_checks_its_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="positive scale of 8"):
        model.standardize_latents(torch.zeros(8), torch.zeros(8))
    with pytest.raises(ValueError, match="positive scale of 8"):
        model.standardize_latents(torch.zeros(7), torch.ones(7))
    lm = make_model(latent_dim=0)
    with pytest.raises(ValueError, match="no latent space"):
        lm.standardize_latents(torch.zeros(0), torch.ones(0))


def test_frozen_restores_the_mode_and_the_gradient_flags_even_after_an_error():
    """SentenceVAE.frozen: eval mode and no gradients inside; afterwards each weight's own flag (one
    was frozen before) and train mode come back, also when the block raises."""
    model = SentenceVAE(small_model_config())
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"):
        with model.frozen():
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("inside")
    assert model.training and not first.requires_grad
    assert all(p.requires_grad for p in model.parameters() if p is not first)
