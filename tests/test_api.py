"""The Python API (textvae/api.py) on the tiny trained run and on a perturbed copy of it."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from helpers import TINY_DATA
from textvae import TextVAE
from textvae import checkpoint as ckpt
from textvae.data import collate, prepare_split
from textvae.errors import CheckpointError, InputError

SENTENCES = [
    "And the LORD said unto Moses, Go in unto Pharaoh.",
    "Yahweh said to Moses, Go in to Pharaoh.",
    "Then Ehud went forth through the porch.",
    "He broke down the tower of Penuel.",
]


@pytest.fixture(scope="module")
def vae(trained) -> TextVAE:
    """The tiny run's tokenizer and attribute vectors with noisy weights: after 40 steps the
    tiny model decodes every code to the same string, which would make equality tests vacuous.
    With the noise, different codes decode to different sentences."""
    model = copy.deepcopy(trained.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.4)
    v = TextVAE(model, trained.tokenizer, trained.config, trained.meta, path=None)
    labels = [json.loads(line)["style"] for line in (TINY_DATA / "train.jsonl").read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in (TINY_DATA / "train.jsonl").read_text().splitlines()]
    v.attribute_vectors(texts, labels)
    return v


def test_import_from_the_package():
    import textvae

    assert textvae.TextVAE is TextVAE
    with pytest.raises(AttributeError):
        textvae.NoSuchThing  # noqa: B018


def test_different_sentences_decode_differently(vae):
    """The premise of the equality tests below: they could fail."""
    outs = vae.reconstruct(SENTENCES)
    assert len(set(outs)) == len(SENTENCES)


def test_encode_shapes_and_device(vae):
    mu, logvar = vae.encode(SENTENCES)
    assert mu.shape == logvar.shape == (4, vae.latent_dim)
    assert mu.device == vae.device and mu.dtype == torch.float32
    mu1, _ = vae.encode(SENTENCES[2])  # a single string is one sentence
    assert torch.allclose(mu1[0], mu[2], atol=1e-5)


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_endpoints_are_the_reconstructions(vae, method):
    a, b = SENTENCES[0], SENTENCES[3]
    path = vae.interpolate(a, b, steps=5, method=method)
    rec = vae.reconstruct([a, b])
    assert len(path) == 5
    assert path[0] == rec[0] and path[-1] == rec[1]
    assert len(set(path)) > 2  # the middle is somewhere else


def test_transfer_with_alpha_zero_is_the_reconstruction(vae):
    rec = vae.reconstruct(SENTENCES)
    for method in ("mean-diff", "project", "search", "closest"):
        assert vae.transfer(SENTENCES, "kjv", "web", alpha=0.0, method=method) == rec


def test_transfer_moves_the_outputs(vae):
    rec = vae.reconstruct(SENTENCES)
    moved = vae.transfer(SENTENCES, "kjv", "web", alpha=30.0, method="mean-diff")
    assert moved != rec


def test_search_keeps_the_weakest_accepted_strength(vae):
    calls = []

    def judge(texts):  # accepts everything from the second round on
        calls.append(len(texts))
        return torch.full((len(texts),), len(calls) >= 2)

    out = vae.transfer_detailed(SENTENCES, "kjv", "web", alpha=4.0, method="search", candidates=4, judge=judge,
                                copy_bias=0.0)
    assert out.alphas.tolist() == [2.0] * 4
    assert calls == [4, 4]  # stopped once every sentence was accepted
    z, _ = vae.encode(SENTENCES)
    attrs = vae.attributes
    from textvae import latent

    expected = vae.decode(latent.transfer_project(z, attrs.vector("kjv"), attrs.vector("web"), 2.0))
    assert out.texts == expected


def test_closest_keeps_the_accepted_candidate_nearest_the_source(vae):
    from textvae import latent
    from textvae.style import sentence_bleu

    z, _ = vae.encode(SENTENCES)
    s, t = vae.attributes.vector("kjv"), vae.attributes.vector("web")
    half = vae.decode(latent.transfer_mean_diff(z, s, t, 3.0))
    full = vae.decode(latent.transfer_mean_diff(z, s, t, 6.0))
    everything = lambda texts: torch.ones(len(texts), dtype=torch.bool)  # noqa: E731
    out = vae.transfer_detailed(SENTENCES, "kjv", "web", alpha=6.0, method="closest", candidates=2, samples=0,
                                judge=everything, copy_bias=0.0)
    for src, h, f, o, a in zip(SENTENCES, half, full, out.texts, out.alphas.tolist()):
        want, want_a = (h, 3.0) if sentence_bleu(h, src) >= sentence_bleu(f, src) else (f, 6.0)
        assert (o, a) == (want, want_a)
    # nothing accepted: the full-strength decode; a judge that only takes the full-strength
    # outputs gets exactly those
    nothing = lambda texts: torch.zeros(len(texts), dtype=torch.bool)  # noqa: E731
    out = vae.transfer_detailed(SENTENCES, "kjv", "web", alpha=6.0, method="closest", candidates=2, samples=2,
                                judge=nothing, copy_bias=0.0)
    assert out.texts == full
    only_full = lambda texts: torch.tensor([x in full for x in texts])  # noqa: E731
    assert vae.transfer(SENTENCES, "kjv", "web", alpha=6.0, method="closest", candidates=2, samples=0,
                        judge=only_full, copy_bias=0.0) == full


def test_copy_bias_keeps_the_source_tokens(vae, monkeypatch):
    """copy_bias adds a bonus to each source sentence's own tokens, for that sentence only: a large
    bias makes every method write only tokens of its own source (every decode, including the
    subsets of sentences that 'search' decodes again); 0 changes nothing."""
    from textvae import generate

    from textvae import latent
    from textvae.transfer import DEFAULT_COPY_BIAS

    z, _ = vae.encode(SENTENCES)
    plain = vae.transfer(SENTENCES, "kjv", "web", alpha=4.0, method="mean-diff", copy_bias=0.0)
    assert plain == vae.decode(latent.transfer_mean_diff(z, vae.attributes.vector("kjv"), vae.attributes.vector("web"), 4.0))
    assert vae.transfer(SENTENCES, "kjv", "web", alpha=4.0, method="mean-diff") == \
        vae.transfer(SENTENCES, "kjv", "web", alpha=4.0, method="mean-diff", copy_bias=DEFAULT_COPY_BIAS)
    own = [vae.tokenizer.encode(x) for x in SENTENCES]
    seen, real = [], generate.decode

    def spy(model, z, *args, token_bias=None, token_budget=None, **kw):
        out = real(model, z, *args, token_bias=token_bias, token_budget=token_budget, **kw)
        seen.append((token_bias, token_budget, out.ids))
        return out

    monkeypatch.setattr(generate, "decode", spy)
    everything = lambda texts: torch.ones(len(texts), dtype=torch.bool)  # noqa: E731
    first_round = lambda texts: torch.tensor([True, False, True, False][: len(texts)])  # noqa: E731
    for method in ("mean-diff", "project", "search", "closest"):
        seen.clear()
        out = vae.transfer(SENTENCES, "kjv", "web", alpha=4.0, method=method, copy_bias=50.0, words="any",
                           candidates=2, samples=1, fluency=None, max_unseen=1.0,
                           judge=first_round if method == "search" else everything)
        # search decodes sentences 1 and 3 again (the judge took 0 and 2 in the first round)
        rows_of = [[0, 1, 2, 3], [1, 3]] if method == "search" else [[0, 1, 2, 3]] * len(seen)
        assert len(seen) == len(rows_of) and len(out) == len(SENTENCES)
        for (bias, budget, ids), rows in zip(seen, rows_of):
            assert bias is not None and bias.shape[0] == len(ids) == len(rows)
            for row, uses, toks, i in zip(bias, budget, ids, rows):
                source = Counter(own[i])
                assert set(row.nonzero().flatten().tolist()) == set(source), method  # its own sentence's tokens
                assert {t: int(uses[t]) for t in source} == source and int(uses.sum()) == len(own[i]), method
                # 50 nats win every step while any bonus is left, and each bonus lasts as many uses
                # as the source has of its token: the decode opens with the source's tokens, reordered
                n = len(own[i])
                assert Counter(toks[:n]) == source if len(toks) >= n else Counter(toks) <= source, method
    assert out != plain
    with pytest.raises(InputError, match="--copy-bias must be a number of nats >= 0"):
        vae.transfer(SENTENCES, "kjv", "web", copy_bias=-1.0)


def test_token_nll_matches_step_by_step_decoding(vae):
    """The teacher-forced per-token NLL equals the sum of the decoder's step-by-step log-probabilities."""
    z, _ = vae.encode(SENTENCES)
    got = vae.token_nll(z, SENTENCES)
    for i, text in enumerate(SENTENCES):
        ids = vae.tokenizer.encode(text) + [vae.tokenizer.eos_id]
        prev, cache, total = vae.tokenizer.bos_id, None, 0.0
        with torch.no_grad():
            for pos, target in enumerate(ids):
                logits, cache = vae.model.decode(torch.tensor([[prev]]), z[i : i + 1], cache, start=pos)
                total -= float(logits[0, -1].float().log_softmax(-1)[target])
                prev = target
        assert abs(float(got[i]) - total / len(ids)) < 1e-4
    with pytest.raises(InputError, match="one code per text"):
        vae.token_nll(z[:2], SENTENCES)


def _guarded(vae, **kw):
    """closest at alpha 6 over two strengths, every candidate taken by the judge."""
    everything = lambda texts: torch.ones(len(texts), dtype=torch.bool)  # noqa: E731
    return vae.transfer_detailed(SENTENCES, "kjv", "web", alpha=6.0, method="closest", candidates=2, samples=3,
                                 judge=everything, **{"copy_bias": 0.0, **kw})


def test_fluency_guard_never_chooses_a_candidate_less_likely_than_the_input(vae):
    from textvae import latent

    z, _ = vae.encode(SENTENCES)
    s, t = vae.attributes.vector("kjv"), vae.attributes.vector("web")
    full = vae.decode(latent.transfer_mean_diff(z, s, t, 6.0))  # the fallback when nothing passes
    floor = vae.token_nll(z, SENTENCES)
    unguarded = _guarded(vae, fluency=None)
    for margin in (0.0, 0.5):
        out = _guarded(vae, fluency=margin)
        for i, (o, a) in enumerate(zip(out.texts, out.alphas.tolist())):
            if o == full[i] and a == 6.0:
                continue
            code = latent.transfer_mean_diff(z[i : i + 1], s, t, a)
            assert float(vae.token_nll(code, [o])[0]) <= float(floor[i]) + margin + 1e-4
    assert len(unguarded.texts) == len(SENTENCES)
    with pytest.raises(InputError, match="fluency"):
        _guarded(vae, fluency=-1.0)
    with pytest.raises(InputError, match="max-unseen"):
        _guarded(vae, max_unseen=1.5)


class _StubCodec:
    """A codec whose decodes and likelihoods are chosen by hand: the code's first coordinate
    names the strength; the strength-1 candidate copies the source with a made-up word appended
    (the closest to the source by BLEU, and the least likely), the strength-2 one is plain."""

    config = meta = path = None
    conditional = False

    def __init__(self):
        self.judges = {}

    def encode_texts(self, texts, warn=True, refine=True):
        return torch.zeros(len(texts), 2), torch.zeros(len(texts), 2)

    def decode(self, z, strategy="greedy", seed=0, **kw):
        return [f"{self.sources[i]} zzxq" if round(float(c[0])) == 1 else "a plain line" for i, c in enumerate(z)]

    def token_nll(self, z, texts, labels=None):
        return torch.tensor([6.0 if "zzxq" in t else 2.0 for t in texts], dtype=torch.float64)

    def known_words(self, mode="auto"):
        return {"a", "plain", "line", "the", "lord", "spake", "and", "it", "was", "so"}


def test_fluency_guard_passes_over_the_unlikely_candidate_nearest_the_source():
    from textvae import latent
    from textvae.transfer import Options, transfer

    codec = _StubCodec()
    codec.sources = ["the lord spake", "and it was so"]
    attrs = latent.Attributes(["a", "b"], torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    everything = lambda texts: torch.ones(len(texts), dtype=torch.bool)  # noqa: E731
    kw = dict(method="closest", alpha=2.0, candidates=2, samples=0, judge=everything, copy_bias=0.0)
    # the input scores 2.0 nats per token; the copy-plus-made-up-word candidate 6.0
    assert transfer(codec, attrs, codec.sources, "a", "b", Options(**kw, fluency=None)).texts == \
        [f"{x} zzxq" for x in codec.sources]
    for opts in (Options(**kw, fluency=3.9), Options(**kw, fluency=None, max_unseen=0.0)):
        words = "any" if opts.fluency is None else "auto"
        out = transfer(codec, attrs, codec.sources, "a", "b", opts, words=words)
        assert out.texts == ["a plain line"] * 2 and out.alphas.tolist() == [2.0, 2.0]
    # a margin wide enough lets it through; so does a share of unseen words as large as its own
    assert transfer(codec, attrs, codec.sources, "a", "b", Options(**kw, fluency=4.1)).texts[0].endswith("zzxq")
    loose = Options(**kw, fluency=None, max_unseen=0.25)
    assert transfer(codec, attrs, codec.sources, "a", "b", loose, words="any").texts[0].endswith("zzxq")
    # search: the weakest accepted strength, unless the guard refuses it
    search = dict(kw, method="search")
    assert transfer(codec, attrs, codec.sources, "a", "b", Options(**search, fluency=None)).alphas.tolist() == [1.0, 1.0]
    assert transfer(codec, attrs, codec.sources, "a", "b", Options(**search)).alphas.tolist() == [2.0, 2.0]


def test_fluency_guard_rejects_unseen_words_when_any_token_sequence_may_be_decoded(vae):
    from textvae.evaluate import vocabulary, words_of

    known = vae.known_words()
    texts = [json.loads(line)["text"] for line in (TINY_DATA / "train.jsonl").read_text().splitlines()]
    assert known and "the" in known and known <= vocabulary(texts)
    free = _guarded(vae, fluency=None, max_unseen=1.0, words="any")
    assert any(w not in known for o in free.texts for w in words_of(o))  # the premise: made-up words occur
    from textvae import latent

    z, _ = vae.encode(SENTENCES)
    full = vae.decode(latent.transfer_mean_diff(z, vae.attributes.vector("kjv"), vae.attributes.vector("web"), 6.0),
                      words="any")
    out = _guarded(vae, fluency=None, max_unseen=0.0, words="any")
    for o, f in zip(out.texts, full):
        assert o == f or all(w in known for w in words_of(o))


def test_char_judge_accepts_by_the_style_judge(vae):
    from textvae.transfer import JUDGE_THRESHOLD
    from textvae.style import judge_for

    judge = judge_for(vae)  # the tiny run's config points at the tiny training file
    assert judge.features == "char"
    out = vae.transfer(SENTENCES, "kjv", "web", method="closest", candidates=2, samples=2, judge="char", copy_bias=0.0)
    z, _ = vae.encode(SENTENCES)
    from textvae import latent

    full = vae.decode(latent.transfer_mean_diff(z, vae.attributes.vector("kjv"), vae.attributes.vector("web"), 3.0))
    probs = judge.prob(out, "web").tolist()
    for o, f, p in zip(out, full, probs):
        assert p >= JUDGE_THRESHOLD or o == f  # accepted, or the fallback when nothing was


def test_auto_judge_falls_back_to_the_latent_midpoint_without_data(vae, caplog):
    import dataclasses

    config = dataclasses.replace(vae.config, data=dataclasses.replace(vae.config.data, train="no/such/train.jsonl"))
    blind = TextVAE(vae.model, vae.tokenizer, config, vae.meta, path=None)
    blind.attributes = vae.attributes
    kw = dict(method="closest", candidates=2, samples=1)
    with caplog.at_level("WARNING", logger="textvae"):
        auto = blind.transfer(SENTENCES, "kjv", "web", judge="auto", **kw)
    assert "latent midpoint" in caplog.text
    assert auto == blind.transfer(SENTENCES, "kjv", "web", judge="latent", **kw)
    from textvae.errors import DataError

    with pytest.raises(DataError):
        blind.transfer(SENTENCES, "kjv", "web", judge="char", **kw)
    with pytest.raises(InputError, match="auto, char, latent, classifier"):
        blind.transfer(SENTENCES, "kjv", "web", judge="oracle", **kw)


def test_closest_is_reproducible_and_rejects_negative_samples(vae):
    # a few sampled decodes at two strengths exercise the seeding as the default's 20 at four would
    a = vae.transfer(SENTENCES, "kjv", "web", method="closest", seed=3, candidates=2, samples=3)
    assert a == vae.transfer(SENTENCES, "kjv", "web", method="closest", seed=3, candidates=2, samples=3)
    with pytest.raises(InputError, match="samples"):
        vae.transfer(SENTENCES, "kjv", "web", method="closest", samples=-1)


def test_analogy_with_a_equal_b_is_the_reconstruction_of_c(vae):
    assert vae.analogy(SENTENCES[0], SENTENCES[0], SENTENCES[2]) == vae.reconstruct([SENTENCES[2]])
    batch = vae.analogy(SENTENCES[:2], SENTENCES[:2], SENTENCES[2:])
    assert batch == vae.reconstruct(SENTENCES[2:])


def test_sampling_is_seeded(vae):
    assert vae.sample(4, seed=3) == vae.sample(4, seed=3)
    assert vae.sample(4, seed=3) != vae.sample(4, seed=4)
    z = torch.zeros(3, vae.latent_dim)
    assert vae.decode(z, strategy="sample", seed=1) == vae.decode(z, strategy="sample", seed=1)


def test_attribute_vectors_match_a_hand_computation(vae):
    texts, labels = SENTENCES, ["kjv", "web", "kjv", "web"]
    other = TextVAE(vae.model, vae.tokenizer, vae.config)
    attrs = other.attribute_vectors(texts, labels)
    by_hand = {}
    for text, label in zip(texts, labels):
        b = collate([vae.tokenizer.encode(text)], vae.tokenizer)
        with torch.no_grad():
            mu, _ = vae.model.encode(b.enc_ids, b.enc_mask)
        by_hand.setdefault(label, []).append(mu[0])
    assert attrs.labels == ["kjv", "web"] and attrs.counts.tolist() == [2, 2]
    for k, label in enumerate(attrs.labels):
        assert torch.allclose(attrs.means[k], torch.stack(by_hand[label]).mean(0), atol=1e-5)
    assert other.attributes is attrs


def test_attributes_stored_at_the_end_of_training(trained_run, trained):
    """Training with a label column stores the vectors of its final weights; they reload."""
    assert (trained_run / "checkpoint" / ckpt.ATTRIBUTES).is_file()
    loaded = TextVAE.from_pretrained(trained_run)
    attrs = loaded.attributes
    assert attrs is not None and attrs.labels == ["kjv", "web"]
    assert attrs.counts.tolist() == [200, 200]
    assert attrs.info["source"].endswith("train.jsonl") and attrs.info["label_column"] == "style"
    # the same computation, by hand, on the training corpus
    cfg = trained.config
    corpus, names = prepare_split(cfg.data.train, "train", trained.tokenizer, cfg.model.max_len,
                                  label_column="style")
    mu = torch.stack([trained.model.encode(*(lambda b: (b.enc_ids, b.enc_mask))(collate([x], trained.tokenizer)))[0][0]
                      for x in corpus.ids]).detach()
    labels = torch.tensor(corpus.labels)
    for k in range(2):
        assert torch.allclose(attrs.means[k], mu[labels == k].mean(0), atol=1e-5)


def test_save_and_load_keep_everything(vae, tmp_path):
    out = vae.save_pretrained(tmp_path / "export")
    back = TextVAE.from_pretrained(out)
    assert back.attributes.labels == vae.attributes.labels
    assert torch.allclose(back.attributes.means, vae.attributes.means)
    assert back.reconstruct(SENTENCES) == vae.reconstruct(SENTENCES)
    assert back.meta["label_names"] == vae.meta["label_names"]


def test_attributes_of_other_weights_are_refused(vae, trained_run, tmp_path):
    out = vae.save_pretrained(tmp_path / "export")
    stale = TextVAE.from_pretrained(trained_run)
    ckpt.write_files(out, ckpt.attribute_files(stale.attributes))  # the unperturbed model's vectors
    with pytest.raises(CheckpointError, match="other weights.*textvae attributes --checkpoint"):
        TextVAE.from_pretrained(out)


def test_damaged_attribute_files_are_reported(vae, tmp_path):
    out = vae.save_pretrained(tmp_path / "export")
    (out / ckpt.ATTRIBUTES).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged.*textvae attributes"):
        TextVAE.from_pretrained(out)


# --------------------------------------------------------------------------- bad input


def test_empty_sentences_are_errors(vae):
    with pytest.raises(InputError, match="sentence 2 is empty"):
        vae.encode(["Jesus wept.", "   "])
    with pytest.raises(InputError, match="no sentences"):
        vae.reconstruct([])


def test_unknown_labels_list_the_known_ones(vae):
    with pytest.raises(InputError, match="unknown label 'modern'; known labels: kjv, web"):
        vae.transfer(SENTENCES, "kjv", "modern")
    with pytest.raises(InputError, match="same"):
        vae.transfer(SENTENCES, "kjv", "kjv")


def test_missing_attribute_vectors_say_how_to_compute_them(trained):
    bare = TextVAE(trained.model, trained.tokenizer, trained.config, trained.meta, path=trained.path)
    with pytest.raises(CheckpointError, match=r"`textvae attributes --checkpoint .* --data .*train.jsonl --label-column style`"):
        bare.transfer(SENTENCES, "kjv", "web")


def test_too_few_steps_and_unknown_methods(vae):
    with pytest.raises(InputError, match="at least 2"):
        vae.interpolate(SENTENCES[0], SENTENCES[1], steps=1)
    with pytest.raises(InputError, match="lerp, slerp"):
        vae.interpolate(SENTENCES[0], SENTENCES[1], method="bezier")
    with pytest.raises(InputError, match="mean-diff, project, search"):
        vae.transfer(SENTENCES, "kjv", "web", method="magic")


def test_long_sentences_are_truncated_and_counted(vae, caplog):
    long = " ".join(["and the king went up to the city"] * 20)
    with caplog.at_level("WARNING", logger="textvae"):
        mu, _ = vae.encode([long, SENTENCES[0]])
    assert vae.truncated == 1
    assert "1 of 2 sentences were longer than the model's limit" in caplog.text
    assert torch.isfinite(mu).all()


def test_a_resumed_run_stores_fresh_attribute_vectors(copy_run):
    from helpers import tiny_config
    from textvae.train import train

    run = copy_run()
    before = json.loads((run / "checkpoint" / ckpt.ATTRIBUTES_INFO).read_text())
    train(tiny_config(["train.max_steps=44", "train.log_every=5", "train.eval_every=0", "train.save_every=0"]),
          run, resume=True)
    after = TextVAE.from_pretrained(run)  # checks the vectors belong to the new weights
    assert after.attributes is not None and after.attributes.info["step"] == 44
    assert after.attributes.info["weights_sha256"] != before["weights_sha256"]
