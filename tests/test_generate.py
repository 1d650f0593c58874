"""textvae.generate: top-k/top-p filtering, greedy/sampling/beam decoding with the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import small_model_config
from textvae import generate
from textvae.model import SentenceVAE

INJECTIONS = ("memory", "embedding", "both")
BOS, EOS = 1, 2
NEG_INF = float("-inf")


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row > NEG_INF).flatten().tolist() for row in logits]


# --------------------------------------------------------------------------- filtering


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0],
                           [0.5, -1.0, 2.0, 9.0, 0.0]])
    out = generate.filter_logits(logits, top_k=2)
    assert kept(out) == [[1, 4], [2, 3]]
    assert torch.equal(out[out > NEG_INF], logits[out > NEG_INF])  # kept logits are unchanged
    assert kept(generate.filter_logits(logits, top_k=0)) == [[0, 1, 2, 3, 4]] * 2
    assert kept(generate.filter_logits(logits, top_k=10)) == [[0, 1, 2, 3, 4]] * 2


def test_top_p_keeps_the_nucleus():
    # probabilities 0.05, 0.5, 0.15, 0.3 (row 0) and 0.3, 0.15, 0.05, 0.5 (row 1)
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3],
                          [0.3, 0.15, 0.05, 0.5]])
    logits = probs.log()
    # 0.7: the largest (0.5) is not enough, 0.5 + 0.3 covers it
    assert kept(generate.filter_logits(logits, top_p=0.7)) == [[1, 3], [0, 3]]
    # 0.9: 0.5 + 0.3 + 0.15 = 0.95 covers it
    assert kept(generate.filter_logits(logits, top_p=0.9)) == [[1, 2, 3], [0, 1, 3]]
    # a tiny nucleus still keeps the most likely token
    assert kept(generate.filter_logits(logits, top_p=0.01)) == [[1], [3]]
    assert kept(generate.filter_logits(logits, top_p=1.0)) == [[0, 1, 2, 3]] * 2


def test_top_k_then_top_p():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    out = generate.filter_logits(probs.log(), top_k=3, top_p=0.6)
    # after top-3 the renormalised probabilities are 4/9, 3/9, 2/9: the first two cover 0.6
    assert kept(out) == [[0, 1]]


# --------------------------------------------------------------------------- hand-made models


def make_model(z_injection: str = "both", seed: int = 0, eos_boost: float = 2.0) -> SentenceVAE:
    """A small random model. Its weights get extra noise so that logits differ clearly, and the
    eos embedding is scaled up so that greedy decoding stops for some codes but not for others."""
    torch.manual_seed(seed)
    model = SentenceVAE(small_model_config(z_injection=z_injection, max_len=20))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        model.tok_emb.weight[EOS] *= eos_boost
    return model.eval()


def forced_model(token: int) -> SentenceVAE:
    """A model whose every next-token distribution puts (nearly) all mass on ``token``."""
    model = make_model()
    with torch.no_grad():
        model.tok_emb.weight[token] = 0.0
        model.tok_emb.weight[token, 0] = 3.0
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.zero_()
        model.decoder.ln.bias[0] = 10.0
    return model


def greedy_by_recomputation(model: SentenceVAE, z: torch.Tensor, limit: int) -> list[list[int]]:
    """Greedy decoding that reruns the whole prefix through the decoder at every step; bos and
    pad, never training targets, are never written."""
    rows = []
    for b in range(z.shape[0]):
        seq = [BOS]
        for _ in range(limit):
            with torch.no_grad():
                logits, _ = model.decode(torch.tensor([seq]), z[b : b + 1])
            last = logits[0, -1].clone()
            last[[BOS, model.pad_id]] = float("-inf")
            nxt = int(last.argmax())
            seq.append(nxt)
            if nxt == EOS:
                break
        out = seq[1:]
        rows.append(out[: out.index(EOS)] if EOS in out else out)
    return rows


@pytest.mark.parametrize("z_injection", INJECTIONS)
def test_greedy_equals_full_recomputation(z_injection):
    # eos_boost 2.5: of these 6 codes, 1 to 3 stop before the limit with every z injection (2.0
    # stopped none with "memory" once the model's parameters were listed in another order)
    model = make_model(z_injection, eos_boost=2.5)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(7))
    out = generate.decode(model, z, BOS, EOS, "greedy", max_len=12)
    assert any(out.finished) and not all(out.finished), "want rows that stop early and rows that run on"
    assert out.ids == greedy_by_recomputation(model, z, 12)


@pytest.mark.parametrize("z_injection", INJECTIONS)
def test_beam_one_equals_greedy_random_models(z_injection):
    model = make_model(z_injection)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(7))
    greedy = generate.decode(model, z, BOS, EOS, "greedy", max_len=15)
    beam = generate.decode(model, z, BOS, EOS, "beam", beam_size=1, max_len=15)
    assert any(greedy.finished)
    assert beam.ids == greedy.ids and beam.finished == greedy.finished


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_random_model_outputs_end_at_eos(strategy):
    model = make_model("memory", eos_boost=2.5)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(7))
    out = generate.decode(model, z, BOS, EOS, strategy, beam_size=3, max_len=12,
                          generator=torch.Generator().manual_seed(0))
    assert any(out.finished) and not all(out.finished)
    for ids, fin in zip(out.ids, out.finished):
        assert EOS not in ids
        assert len(ids) < 12 if fin else len(ids) == 12


def test_forced_eos_finishes_immediately():
    model = forced_model(EOS)
    z = torch.randn(3, 8)
    for strategy in ("greedy", "sample", "beam"):
        out = generate.decode(model, z, BOS, EOS, strategy, beam_size=3, generator=torch.Generator().manual_seed(0))
        assert out.ids == [[], [], []], strategy
        assert out.finished == [True, True, True], strategy


def test_never_eos_runs_to_the_limit():
    model = forced_model(9)
    z = torch.randn(2, 8)
    out = generate.decode(model, z, BOS, EOS, "greedy", max_len=7)
    assert out.ids == [[9] * 7, [9] * 7]
    assert out.finished == [False, False]
    # without max_len the limit is the model's max_len less the bos position
    out = generate.decode(model, z, BOS, EOS, "beam", beam_size=2)
    assert out.ids == [[9] * 19, [9] * 19] and out.finished == [False, False]


def test_token_bias_shifts_each_row_by_its_own_bias():
    """token_bias (B, V) is added to every step's logits, row by row, in every strategy; a
    batch split by decode_texts keeps each row with its own bias."""
    model = forced_model(9)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    V = model.tok_emb.num_embeddings
    bias = torch.zeros(3, V)
    bias[1, 7] = 1e4  # row 1 must write 7s; rows 0 and 2 keep the model's 9s
    bias[2, EOS] = 1e4  # row 2 must stop at once
    for strategy in ("greedy", "sample", "beam"):
        out = generate.decode(model, z, BOS, EOS, strategy, beam_size=2, max_len=5, token_bias=bias,
                              generator=torch.Generator().manual_seed(0))
        assert out.ids == [[9] * 5, [7] * 5, []], strategy
    plain = generate.decode(model, z, BOS, EOS, "greedy", max_len=5)
    assert plain.ids == generate.decode(model, z, BOS, EOS, "greedy", max_len=5, token_bias=torch.zeros(3, V)).ids
    with pytest.raises(ValueError, match="token_bias has 2 rows for 3 codes"):
        generate.decode(model, z, BOS, EOS, "greedy", token_bias=bias[:2])

    class Tok:
        bos_id, eos_id = BOS, EOS

        def decode(self, ids):
            return " ".join(map(str, ids))

    for table in (bias, bias.to_sparse()):  # transfer passes a sparse table, made dense a batch at a time
        texts, _ = generate.decode_texts(model, Tok(), z, batch_size=2, max_len=3, token_bias=table)
        assert texts == ["9 9 9", "7 7 7", ""]


def test_token_budget_spends_a_rows_bias_after_so_many_uses():
    """With token_budget, a token keeps its bias only until the row has written it that many
    times (the copy bias lasts as many uses as the source has): row 1 writes 7 twice and then the
    model's 9s, row 0 (no budget left for anything) the model's 9s, in every strategy and through
    decode_texts' batches."""
    model = forced_model(9)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    V = model.tok_emb.num_embeddings
    bias = torch.zeros(2, V)
    bias[:, 7] = 1e4
    budget = torch.zeros(2, V)
    budget[1, 7] = 2.0
    for strategy in ("greedy", "sample", "beam"):
        out = generate.decode(model, z, BOS, EOS, strategy, beam_size=2, max_len=5, token_bias=bias,
                              token_budget=budget, generator=torch.Generator().manual_seed(0))
        assert out.ids == [[9] * 5, [7, 7, 9, 9, 9]], strategy
        unlimited = generate.decode(model, z, BOS, EOS, strategy, beam_size=2, max_len=5, token_bias=bias,
                                    generator=torch.Generator().manual_seed(0))
        assert unlimited.ids == [[7] * 5, [7] * 5], strategy
    with pytest.raises(ValueError, match="token_budget needs a token_bias of its shape"):
        generate.decode(model, z, BOS, EOS, "greedy", token_budget=budget)

    class Tok:
        bos_id, eos_id = BOS, EOS

        def decode(self, ids):
            return " ".join(map(str, ids))

    texts, _ = generate.decode_texts(model, Tok(), z, batch_size=1, max_len=3, token_bias=bias.to_sparse(),
                                     token_budget=budget.to_sparse())
    assert texts == ["9 9 9", "7 7 9"]


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        generate.decode(make_model(), torch.zeros(1, 8), BOS, EOS, "nucleus")


# --------------------------------------------------------------------------- the trained tiny model


@pytest.fixture(scope="module")
def prior_z(trained):
    return torch.randn(12, trained.model.cfg.latent_dim, generator=torch.Generator().manual_seed(11))


def test_trained_greedy_equals_recomputation(trained, prior_z):
    tok = trained.tokenizer
    out = generate.decode(trained.model, prior_z, tok.bos_id, tok.eos_id, "greedy", max_len=30)
    assert out.ids == greedy_by_recomputation(trained.model, prior_z, 30)


def test_trained_beam_one_equals_greedy(trained, prior_z):
    tok = trained.tokenizer
    greedy = generate.decode(trained.model, prior_z, tok.bos_id, tok.eos_id, "greedy", max_len=30)
    beam = generate.decode(trained.model, prior_z, tok.bos_id, tok.eos_id, "beam", beam_size=1, max_len=30)
    assert beam.ids == greedy.ids and beam.finished == greedy.finished


def test_tiny_temperature_and_top_k_one_are_greedy():
    # A random model whose logits differ clearly (an undertrained one can tie its two best tokens
    # to 1e-5, where a temperature of 1e-6 is still a coin toss); the margins are checked: at
    # 1e-3 or more, a second-best token has a chance of e^-1000 at most.
    model = make_model("both", eos_boost=2.5)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    greedy = generate.decode(model, z, BOS, EOS, "greedy", max_len=12)
    for b, (ids, fin) in enumerate(zip(greedy.ids, greedy.finished)):
        with torch.no_grad():
            logits, _ = model.decode(torch.tensor([[BOS] + ids]), z[b : b + 1])
        top2 = logits[0, : len(ids) + int(fin)].topk(2, -1).values  # the steps decoded (eos included)
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3
    cold = generate.decode(model, z, BOS, EOS, "sample", temperature=1e-6, max_len=12,
                           generator=torch.Generator().manual_seed(0))
    top1 = generate.decode(model, z, BOS, EOS, "sample", top_k=1, max_len=12,
                           generator=torch.Generator().manual_seed(0))
    assert cold.ids == greedy.ids
    assert top1.ids == greedy.ids


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_outputs_end_at_eos(trained, prior_z, strategy):
    tok = trained.tokenizer
    limit = 40
    out = generate.decode(trained.model, prior_z, tok.bos_id, tok.eos_id, strategy, beam_size=3, max_len=limit,
                          top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert len(out.ids) == len(out.finished) == prior_z.shape[0]
    for ids, fin in zip(out.ids, out.finished):
        assert tok.eos_id not in ids and tok.bos_id not in ids
        if fin:
            assert len(ids) < limit
        else:
            assert len(ids) == limit
    if strategy == "sample":
        assert any(out.finished), "a trained model should end some samples with eos"


def test_sampling_is_reproducible(trained):
    model, tok = trained.model, trained.tokenizer
    a = generate.sample(model, tok, 8, seed=3, strategy="sample", top_p=0.9)
    b = generate.sample(model, tok, 8, seed=3, strategy="sample", top_p=0.9)
    c = generate.sample(model, tok, 8, seed=4, strategy="sample", top_p=0.9)
    assert a == b
    assert a[0] != c[0]
    assert len(a[0]) == len(a[1]) == 8
    # batching does not change the codes drawn for greedy decoding
    g1 = generate.sample(model, tok, 5, seed=2, strategy="greedy", max_len=20)
    g2 = generate.sample(model, tok, 5, seed=2, strategy="greedy", max_len=20, batch_size=2)
    assert len(g2[0]) == 5
    # sentence i's code is drawn from its own stream, seeded seed + i (scaled by the z temperature)
    z = torch.stack([torch.randn(model.cfg.latent_dim, generator=torch.Generator().manual_seed(2 + i))
                     for i in range(5)]) * generate.DEFAULT_Z_TEMPERATURE
    direct = generate.decode(model, z, tok.bos_id, tok.eos_id, "greedy", max_len=20)
    assert g1[0] == [tok.decode(ids) for ids in direct.ids]


def test_a_sample_does_not_depend_on_its_batch(trained):
    """The first of -n 20 is -n 1's sentence, and sentence i of a batch is sentence 0 of seed + i."""
    model, tok = trained.model, trained.tokenizer
    one = generate.sample(model, tok, 1, seed=3, strategy="sample", top_p=0.9)[0]
    many = generate.sample(model, tok, 20, seed=3, strategy="sample", top_p=0.9)[0]
    small_batches = generate.sample(model, tok, 20, seed=3, strategy="sample", top_p=0.9, batch_size=3)[0]
    shifted = generate.sample(model, tok, 1, seed=7, strategy="sample", top_p=0.9)[0]
    assert many[0] == one[0]
    assert many == small_batches
    assert many[4] == shifted[0]
    assert len(set(many)) > 1


def test_z_temperature_scales_the_prior_noise(trained, monkeypatch):
    """sample's z_temperature (default DEFAULT_Z_TEMPERATURE): N(0, I) codes are tau * the codes of
    temperature 1 (same seeds), a mixture's are tau times as far from their component's mean; 0 or
    less is an option error."""
    from textvae.errors import OptionError
    from textvae.prior import GaussianMixture

    model, tok = trained.model, trained.tokenizer
    seen = []
    real = generate.decode_texts

    def recording(m, t, z, *args, **kwargs):
        seen.append(z.clone())
        return real(m, t, z, *args, **kwargs)

    monkeypatch.setattr(generate, "decode_texts", recording)
    generate.sample(model, tok, 6, seed=2, strategy="greedy", z_temperature=1.0)
    generate.sample(model, tok, 6, seed=2, strategy="greedy", z_temperature=0.5)
    generate.sample(model, tok, 6, seed=2, strategy="greedy")  # the default temperature
    torch.testing.assert_close(seen[1], 0.5 * seen[0])
    torch.testing.assert_close(seen[2], generate.DEFAULT_Z_TEMPERATURE * seen[0])
    L = model.cfg.latent_dim
    gm = GaussianMixture(torch.tensor([1.0]), torch.full((1, L), 3.0), torch.ones(1, L))
    generate.sample(model, tok, 6, seed=2, strategy="greedy", prior=gm, z_temperature=1.0)
    generate.sample(model, tok, 6, seed=2, strategy="greedy", prior=gm, z_temperature=0.5)
    torch.testing.assert_close(seen[4] - 3.0, 0.5 * (seen[3] - 3.0))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(OptionError, match="z temperature"):
            generate.sample(model, tok, 2, z_temperature=bad)


def test_row_seeds_pick_only_tokens_with_mass():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]])
    rows = generate.RowSeeds.from_seed(0, 2)
    for _ in range(200):
        picked = rows.pick(probs)
        assert picked[0].item() in (1, 3) and picked[1].item() == 2
    # each row's stream is its own: row 1 alone draws what it drew beside row 0
    a = generate.RowSeeds([11]).pick(torch.full((1, 10), 0.1))
    b = generate.RowSeeds([5, 11]).pick(torch.full((2, 10), 0.1))
    assert a[0] == b[1]


def test_decode_with_same_generator_seed(trained, prior_z):
    tok = trained.tokenizer
    runs = [generate.decode(trained.model, prior_z, tok.bos_id, tok.eos_id, "sample", top_p=0.95, max_len=30,
                            generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert runs[0].ids == runs[1].ids
    assert runs[0].ids != runs[2].ids


def test_beam_finds_a_likely_sequence(trained, prior_z):
    """Beam search (size 4) scores its pick at least as well as greedy under its own criterion:
    the length-normalised log-probability of the tokens, eos included when finished."""
    model, tok = trained.model, trained.tokenizer

    def norm_score(z, ids, finished):
        seq = [tok.bos_id] + ids + ([tok.eos_id] if finished else [])
        with torch.no_grad():
            logits, _ = model.decode(torch.tensor([seq[:-1]]), z[None])
        logp = logits[0].log_softmax(-1)
        total = sum(float(logp[i, t]) for i, t in enumerate(seq[1:]))
        return total / max(1, len(seq) - 1)

    z = prior_z[:6]
    greedy = generate.decode(model, z, tok.bos_id, tok.eos_id, "greedy", max_len=30)
    beam = generate.decode(model, z, tok.bos_id, tok.eos_id, "beam", beam_size=4, max_len=30)
    better = 0
    for i in range(z.shape[0]):
        b = norm_score(z[i], beam.ids[i], beam.finished[i])
        g = norm_score(z[i], greedy.ids[i], greedy.finished[i])
        assert math.isfinite(b)
        better += b >= g - 1e-4
    assert better >= z.shape[0] - 1


# --------------------------------------------------------------------------- repeated n-grams


def test_ban_repeated_ngrams_masks_the_completing_tokens():
    out = torch.tensor([[5, 6, 7, 5, 6], [1, 1, 1, 1, 1], [5, 6, EOS, 5, 6]])
    logits = generate.ban_repeated_ngrams(torch.zeros(3, 10), out, 3, EOS)
    assert kept(logits) == [[t for t in range(10) if t != 7], [t for t in range(10) if t != 1], list(range(10))]
    assert kept(generate.ban_repeated_ngrams(torch.zeros(1, 10), out[:1], 1, EOS)) == [[0, 1, 2, 3, 4, 8, 9]]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_output_has_no_repeated_ngram(n):
    model = forced_model(9)  # without the ban: 9 9 9 9 ...
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    plain = generate.decode(model, z, BOS, EOS, "greedy", max_len=10)
    assert plain.ids[0] == [9] * 10
    out = generate.decode(model, z, BOS, EOS, "greedy", max_len=10, no_repeat_ngram=n)
    for row in out.ids:
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        assert len(grams) == len(set(grams)), row
        assert row[: n] == [9] * n  # the ban changes nothing before an n-gram could repeat
    sampled = generate.decode(model, z, BOS, EOS, "sample", max_len=10, no_repeat_ngram=n,
                              generator=torch.Generator().manual_seed(0))
    for row in sampled.ids:
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        assert len(grams) == len(set(grams)), row


def test_no_repeat_ngram_zero_is_plain_decoding_and_beam_refuses_it():
    model = make_model()
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(7))
    assert generate.decode(model, z, BOS, EOS, "greedy", max_len=12, no_repeat_ngram=0).ids == \
        generate.decode(model, z, BOS, EOS, "greedy", max_len=12).ids
    with pytest.raises(ValueError):
        generate.decode(model, z, BOS, EOS, "beam", no_repeat_ngram=3)
    with pytest.raises(ValueError):
        generate.decode(model, z, BOS, EOS, "greedy", no_repeat_ngram=-1)


# --------------------------------------------------------------------------- decoding only seen words


def _word_runs(texts):
    return {w for t in texts for w in t.split()}


def test_seen_words_decodes_only_training_words(trained):
    """A noisy copy of the tiny model makes up words; restricted to the training words, it cannot."""
    import copy
    import json

    from helpers import TINY_DATA

    tok = trained.tokenizer
    corpus = [json.loads(line)["text"] for line in (TINY_DATA / "train.jsonl").read_text().splitlines()]
    words = generate.SeenWords.from_corpus(tok, tok.encode_batch(corpus))
    model = copy.deepcopy(trained.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    z = torch.randn(16, model.cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    known = _word_runs(corpus)
    for strategy in ("greedy", "sample", "beam"):
        free, _ = generate.decode_texts(model, tok, z, strategy=strategy, generator=torch.Generator().manual_seed(2))
        kept, _ = generate.decode_texts(model, tok, z, strategy=strategy, generator=torch.Generator().manual_seed(2),
                                        words=words)
        assert _word_runs(free) - known  # the premise: without the restriction it makes words up
        assert not _word_runs(kept) - known, (strategy, sorted(_word_runs(kept) - known)[:20], kept[:3])
        assert any(t.strip() for t in kept)


def test_seen_words_trie_follows_word_boundaries(trained):
    tok = trained.tokenizer
    words = generate.SeenWords.from_corpus(tok, tok.encode_batch(["And God said.", "Let there be light"]))
    got = {tok.decode(list(w)).strip() for w in words.words}
    assert got == {"And", "God", "said.", "Let", "there", "be", "light"}  # whitespace words, punctuation kept
    said = tok.encode(" said.")
    state = words.start(1)
    for t in said[:-1]:
        state = words.advance(state, [t])
    allowed = words.allowed(state, torch.device("cpu"))[0]
    assert allowed[said[-1]] and not allowed[tok.eos_id]  # "said" alone was never a word here
    state = words.advance(state, [said[-1]])
    allowed = words.allowed(state, torch.device("cpu"))[0]
    assert allowed[tok.eos_id] and allowed[tok.encode(" God")[0]]  # a complete word may end or be followed


def test_a_row_left_with_no_token_may_still_end(trained):
    tok = trained.tokenizer
    words = generate.SeenWords.from_corpus(tok, tok.encode_batch(["And God said."]))
    logits = torch.full((1, tok.vocab_size), float("-inf"))
    out = words.restrict(logits, words.start(1))
    assert out[0, tok.eos_id] == 0.0
