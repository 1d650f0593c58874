"""The semi-supervised, label-conditional VAE (model.conditional 'label'; Kingma et al. 2014, M2):
its objective against references, the model's rows and codes, partly labelled data, and the
commands (classify, sample --label, transfer --method relabel) with their one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import TINY_DATA, assert_user_error, small_model_config, tiny_config
from textvae.config import ConfigError, load_config
from textvae.data import Corpus
from textvae.errors import DataError
from textvae.losses import elbo_loss, gaussian_kl, reconstruction_nll, semi_supervised_loss
from textvae.model import SentenceVAE
from textvae.train import keep_label_fraction, train

S = "And he said unto them, Go ye into the city."


def _terms(K=3, B=4, E=None, T=5, V=11, L=6, labels=(1, -1, 0, -1), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    counts = torch.where(labels >= 0, 1, K)
    rows = torch.repeat_interleave(torch.arange(B), counts)
    row_labels = torch.cat([torch.tensor([y]) if y >= 0 else torch.arange(K) for y in labels.tolist()])
    E = rows.shape[0]
    return dict(logits=torch.randn(E, T, V, generator=g), targets=torch.randint(1, V, (B, T), generator=g),
                mu=torch.randn(E, L, generator=g), logvar=0.3 * torch.randn(E, L, generator=g),
                class_logits=torch.randn(B, K, generator=g), labels=labels, rows=rows, row_labels=row_labels)


# --------------------------------------------------------------------------- the objective


def test_with_every_row_labelled_the_objective_is_the_elbo_plus_alpha_cross_entropy():
    t = _terms(K=2, labels=(1, 0, 0, 1))
    out = semi_supervised_loss(**t, pad_id=0, beta=0.5, free_bits=0.4, classifier_weight=3.0)
    ref = elbo_loss(t["logits"], t["targets"], t["mu"], t["logvar"], pad_id=0, beta=0.5, free_bits=0.4)
    ce = torch.nn.functional.cross_entropy(t["class_logits"], t["labels"])
    for k in ("rec", "kl", "kl_objective"):
        assert out[k].item() == pytest.approx(ref[k].item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(ref["loss"].item() + 3.0 * ce.item(), rel=1e-6)
    assert out["classifier"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out["neg_elbo"].item() == pytest.approx(ref["neg_elbo"].item() + math.log(2), rel=1e-6)


def test_an_unlabelled_row_is_the_expectation_over_q_y_minus_its_entropy():
    K = 3
    t = _terms(K=K)
    out = semi_supervised_loss(**t, pad_id=0, beta=0.7, free_bits=0.0, classifier_weight=2.0)
    q = t["class_logits"].softmax(-1)
    rec = reconstruction_nll(t["logits"], t["targets"][t["rows"]], 0)
    kl = gaussian_kl(t["mu"], t["logvar"]).sum(1)
    total, r = 0.0, 0
    for i, y in enumerate(t["labels"].tolist()):  # the reference, one sentence at a time
        if y >= 0:
            total += rec[r] + 0.7 * kl[r] - 2.0 * torch.log(q[i, y])
            r += 1
        else:
            total += sum(q[i, k] * (rec[r + k] + 0.7 * kl[r + k]) for k in range(K))
            total += (q[i] * q[i].log()).sum()  # minus the entropy
            r += K
    assert out["loss"].item() == pytest.approx(float(total) / 4, rel=1e-5)


def test_the_unlabelled_term_trains_the_classifier_towards_the_label_that_explains_the_sentence():
    t = _terms(K=2, labels=(-1, -1, -1, -1))
    t["class_logits"] = torch.zeros(4, 2, requires_grad=True)
    # label 0's decoded rows put all their mass on the targets: a far better reconstruction
    good = torch.full_like(t["logits"], -20.0).scatter(2, t["targets"][t["rows"]].unsqueeze(-1), 20.0)
    t["logits"] = torch.where((t["row_labels"] == 0)[:, None, None], good, t["logits"])
    semi_supervised_loss(**t, pad_id=0)["loss"].backward()
    grad = t["class_logits"].grad
    assert (grad[:, 0] < 0).all() and (grad[:, 1] > 0).all()  # a descent step raises q(y=0|x)


# --------------------------------------------------------------------------- the model


@pytest.fixture(params=["transformer", "gru"])
def model(request):
    from textvae.config import DecoderConfig

    torch.manual_seed(0)
    m = SentenceVAE(small_model_config(conditional="label", num_labels=3, label_dim=4,
                                       decoder=DecoderConfig(type=request.param)), pad_id=0)
    return m.eval()


def _batch(B=3, S=7, V=40):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, V, (B, S), generator=g)
    return ids, torch.ones(B, S, dtype=torch.bool), ids


def test_forward_decodes_a_labelled_row_once_and_an_unlabelled_row_once_per_label(model):
    enc, mask, dec = _batch()
    out = model(enc, mask, dec, labels=torch.tensor([2, -1, 0]), sample=False)
    assert out.rows.tolist() == [0, 1, 1, 1, 2]
    assert out.row_labels.tolist() == [2, 0, 1, 2, 0]
    assert out.logits.shape[0] == 5 and out.class_logits.shape == (3, 3)
    mu2, _ = model.encode(enc[1:2], mask[1:2], torch.tensor([2]))
    assert torch.allclose(out.mu[3], mu2[0], atol=1e-5)  # row 3: sentence 1 under label 2


def test_the_decoder_and_the_posterior_read_the_label(model):
    with torch.no_grad():
        model.label_emb.weight.normal_()
        model.label_to_posterior.weight.normal_()
    enc, mask, dec = _batch(B=1)
    z = torch.zeros(1, model.cfg.latent_dim)
    a, _ = model.decode(dec, model.code(z, torch.tensor([0])))
    b, _ = model.decode(dec, model.code(z, torch.tensor([1])))
    assert not torch.allclose(a, b)
    m0, _ = model.encode(enc, mask, torch.tensor([0]))
    m1, _ = model.encode(enc, mask, torch.tensor([1]))
    assert not torch.allclose(m0, m1)
    with pytest.raises(ValueError, match="model.code"):
        model.decode(dec, z)  # a bare z: the label is missing


def test_an_unconditional_model_is_unchanged_by_the_option():
    torch.manual_seed(0)
    a = SentenceVAE(small_model_config(), pad_id=0)
    torch.manual_seed(0)
    b = SentenceVAE(small_model_config(conditional="none", label_dim=7, classifier_weight=3.0), pad_id=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --------------------------------------------------------------------------- data and config


def test_label_fraction_keeps_a_seeded_share_of_the_labels():
    corpus = Corpus([f"s{i}" for i in range(200)], [[5]] * 200, [i % 2 if i % 10 else -1 for i in range(200)])
    kept = keep_label_fraction(corpus, 0.25, seed=3, source="x")
    assert sum(y >= 0 for y in kept.labels) == round(0.25 * 180)
    assert all(y == -1 or y == corpus.labels[i] for i, y in enumerate(kept.labels))
    assert kept.labels == keep_label_fraction(corpus, 0.25, seed=3, source="x").labels
    assert kept.labels != keep_label_fraction(corpus, 0.25, seed=4, source="x").labels
    with pytest.raises(DataError, match="no labelled training rows left"):
        keep_label_fraction(corpus, 0.001, seed=3, source="x")


def test_the_config_refuses_a_conditional_model_it_cannot_train():
    with pytest.raises(ConfigError, match="needs data.label_column"):
        tiny_config(["model.conditional=label", "data.label_column=null"])
    with pytest.raises(ConfigError, match="model.conditional must be one of none, label"):
        tiny_config(["model.conditional=labels"])
    with pytest.raises(ConfigError, match="label_fraction"):
        tiny_config(["data.label_fraction=0"])
    assert load_config(None, ["model.conditional=none"]).model.conditional == "none"


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def partly_labelled(tmp_path_factory):
    """data/tiny/train.jsonl with every third row's label blanked: a semi-supervised corpus."""
    rows = [json.loads(x) for x in (TINY_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r["style"] = ""
    path = tmp_path_factory.mktemp("semi") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, partly_labelled):
    out = tmp_path_factory.mktemp("cond") / "run"
    train(tiny_config([f"data.train={partly_labelled}", "model.conditional=label", "data.label_fraction=0.5",
                       "train.max_steps=30", "train.eval_every=0", "train.save_every=0"]), out)
    return out


def test_training_logs_the_classifier_and_validates_its_accuracy(conditional_run):
    records = [json.loads(x) for x in (conditional_run / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"][-1]
    assert {"classifier", "entropy"} <= set(train_rec[-1])
    assert 0.0 <= valid["accuracy"] <= 1.0
    meta = json.loads((conditional_run / "checkpoint" / "config.json").read_text())
    assert meta["config"]["model"]["num_labels"] == 2 and meta["label_names"] == ["kjv", "web"]


def test_classify_gives_a_label_and_probabilities(run_cli, conditional_run):
    rc, out, err = run_cli("classify", "--checkpoint", conditional_run, "--json", S, "He said to them, go.")
    assert rc == 0, err
    records = [json.loads(x) for x in out.splitlines()]
    assert [r["text"] for r in records] == [S, "He said to them, go."]
    for r in records:
        assert r["label"] in ("kjv", "web") and sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["prob"] == pytest.approx(max(r["probs"].values()), abs=1e-6)
    rc, plain, _ = run_cli("classify", "--checkpoint", conditional_run, S)
    label, prob, text = plain.rstrip("\n").split("\t")
    assert (label, text) == (records[0]["label"], S) and float(prob) == pytest.approx(records[0]["prob"], abs=1e-4)


def test_sample_with_a_label_and_every_latent_command_run_on_a_conditional_model(run_cli, conditional_run, tmp_path):
    for label in ("kjv", "web"):
        rc, out, err = run_cli("sample", "--checkpoint", conditional_run, "-n", "3", "--label", label, "--seed", "2")
        assert rc == 0 and len(out.splitlines()) == 3, err
    rc, first, _ = run_cli("sample", "--checkpoint", conditional_run, "-n", "1", "--label", "web", "--seed", "2")
    assert first.splitlines() == out.splitlines()[:1]
    for argv in (["reconstruct", S], ["interpolate", S, "He said to them, go.", "--steps", "3"],
                 ["analogy", S, "He said to them, go.", S], ["transfer", "--from", "kjv", "--to", "web", S],
                 ["transfer", "--from", "kjv", "--to", "web", "--method", "relabel", "--alpha", "1", S],
                 ["reconstruct", "--refine-steps", "2", S]):
        rc, out, err = run_cli(argv[0], "--checkpoint", conditional_run, *argv[1:])
        assert rc == 0 and out.strip(), (argv, err)
    (tmp_path / "in.txt").write_text(S + "\n")
    rc, out, err = run_cli("score", "--checkpoint", conditional_run, "--input", tmp_path / "in.txt",
                           "--iw-samples", "3")
    assert rc == 0 and float(out.split("\t")[0]) > 0, err
    rc, out, err = run_cli("evaluate", "--checkpoint", conditional_run, "--split", "valid", "--limit", "8",
                           "--iw-samples", "2", "--samples", "4", "--json")
    assert rc == 0 and json.loads(out)["iw_nll"] > 0, err


def test_the_latent_map_of_unlabelled_data_is_coloured_by_the_predicted_label(conditional_run, tmp_path):
    from textvae import TextVAE
    from textvae.viz import write_map

    vae = TextVAE.from_pretrained(conditional_run)
    texts = [x for x in (TINY_DATA / "train.txt").read_text(encoding="utf-8").splitlines() if x.strip()][:40]
    src = tmp_path / "plain.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    png, m = write_map(vae, data=str(src), output=tmp_path / "map.png", limit=0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert m.labels == [r["label"] for r in vae.classify(texts)]


def test_evaluate_transfer_scores_relabelling(run_cli, conditional_run):
    rc, out, err = run_cli("evaluate-transfer", "--checkpoint", conditional_run, "--data", TINY_DATA / "valid.jsonl",
                           "--from", "kjv", "--to", "web", "--limit", "4", "--method", "relabel", "--sweep", "",
                           "--json")
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert [r["method"] for r in rows][-1] == "relabel" and 0.0 <= rows[-1]["accuracy"] <= 1.0
    assert rows[-1]["seconds_per_sentence"] > 0 and 0.0 <= rows[-1]["unseen_words"] <= 1.0
    assert rows[0]["system"].startswith("copy") and rows[0]["unseen_words"] is not None


def test_relabel_transfer_of_a_sentence_does_not_depend_on_its_batch(run_cli, conditional_run):
    others = [f"And the {i} went up unto the mountain." for i in range(63)]
    common = ["transfer", "--checkpoint", conditional_run, "--from", "kjv", "--to", "web", "--method", "relabel",
              "--strategy", "sample", "--seed", "5"]
    rc, alone, err = run_cli(*common, S)
    assert rc == 0, err
    rc, batch, err = run_cli(*common, *others[:31], S, *others[31:])
    assert rc == 0, err
    assert batch.splitlines()[31] == alone.splitlines()[0]


def test_label_mistakes_are_one_line_errors(run_cli, conditional_run, trained_run):
    rc, _, err = run_cli("sample", "--checkpoint", conditional_run, "--label", "shakespeare")
    assert_user_error(rc, err, "sample", "unknown label 'shakespeare'", "kjv, web")
    rc, _, err = run_cli("transfer", "--checkpoint", conditional_run, "--from", "kjv", "--to", "nope",
                         "--method", "relabel", S)
    assert_user_error(rc, err, "transfer", "unknown label 'nope'")
    rc, _, err = run_cli("sample", "--checkpoint", trained_run, "--label", "kjv", "--prior", "normal")
    assert_user_error(rc, err, "sample", "--label samples from the prior fitted to that label's training codes")
    rc, _, err = run_cli("sample", "--checkpoint", trained_run, "--label", "shakespeare")
    assert_user_error(rc, err, "sample", "unknown label 'shakespeare'", "kjv, web")
    rc, _, err = run_cli("transfer", "--checkpoint", trained_run, "--from", "kjv", "--to", "web", "--method", "relabel", S)
    assert_user_error(rc, err, "transfer", "relabel needs a label-conditional model")
    rc, _, err = run_cli("classify", "--checkpoint", trained_run, S)
    assert_user_error(rc, err, "classify", "needs a label-conditional model")


def test_training_on_a_corpus_without_labels_is_refused(run_cli, tmp_path, partly_labelled):
    rows = [json.loads(x) for x in partly_labelled.read_text(encoding="utf-8").splitlines()]
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({**r, "style": ""}) + "\n" for r in rows), encoding="utf-8")
    common = ["train", "--config", str(TINY_DATA.parents[1] / "configs" / "tiny.yaml"), "--set", "model.conditional=label",
              "--set", "train.max_steps=2"]
    rc, _, err = run_cli(*common, "--set", f"data.train={bare}", "--set", f"data.valid={TINY_DATA / 'valid.jsonl'}",
                         "--out", tmp_path / "r1")
    assert_user_error(rc, err, "train", "no row has a 'style' label")
    assert not (tmp_path / "r1").exists()
    rc, _, err = run_cli(*common, "--set", f"data.train={partly_labelled}", "--set", "data.label_fraction=0.001",
                         "--set", f"data.valid={TINY_DATA / 'valid.jsonl'}", "--out", tmp_path / "r2")
    assert_user_error(rc, err, "train", "no labelled training rows left")


def test_the_demo_samples_by_label_and_transfers_by_relabelling(conditional_run, trained_run):
    from textvae.api import TextVAE
    from textvae.serve import Demo, DemoError

    demo = Demo(TextVAE.from_pretrained(conditional_run))
    assert demo.info()["conditional"] is True
    out = demo.sample({"n": 2, "label": "web", "seed": 1})
    assert out["label"] == "web" and len(out["sentences"]) == 2
    with pytest.raises(DemoError, match="label"):
        demo.sample({"n": 2, "label": "nope"})
    moved = demo.transfer({"text": S, "source": "kjv", "target": "web", "method": "relabel"})
    assert moved["method"] == "relabel" and isinstance(moved["output"], str)
    plain = Demo(TextVAE.from_pretrained(trained_run))  # labelled data, not conditional: the label's prior
    assert plain.sample({"n": 2, "label": "web", "seed": 1})["label"] == "web"
    with pytest.raises(DemoError, match="label"):
        plain.sample({"n": 1, "label": "nope"})
    with pytest.raises(DemoError):
        plain.transfer({"text": S, "source": "kjv", "target": "web", "method": "relabel"})


def test_the_adversary_term_is_its_cross_entropy_and_its_gradient_is_reversed_into_the_encoder():
    from textvae.model import _GradReverse

    t = _terms(K=2, labels=(1, -1, 0, -1))
    adv = torch.randn(t["rows"].shape[0], 2)
    base = semi_supervised_loss(**t, pad_id=0)
    out = semi_supervised_loss(**t, pad_id=0, adversary_logits=adv, adversary_weight=2.0)
    q = t["class_logits"].softmax(-1)
    guess = torch.where(t["labels"] >= 0, t["labels"], q.argmax(-1))[t["rows"]]
    w = torch.where(t["labels"][t["rows"]] >= 0, torch.ones(()), q[t["rows"], t["row_labels"]])
    ref = (w * torch.nn.functional.cross_entropy(adv, guess, reduction="none")).sum() / 4
    assert out["adversary"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 2.0 * ref.item(), rel=1e-6)
    x = torch.randn(3, 4, requires_grad=True)
    head = torch.nn.Linear(4, 2)
    head(x).sum().backward()
    straight = x.grad.clone()
    x.grad = None
    head(_GradReverse.apply(x)).sum().backward()
    assert torch.allclose(x.grad, -straight)


def test_a_conditional_model_with_an_adversary_trains(tmp_path, partly_labelled):
    out = tmp_path / "adv"
    train(tiny_config([f"data.train={partly_labelled}", "model.conditional=label", "model.adversary_weight=1.0",
                       "train.max_steps=6", "train.eval_every=0", "train.save_every=0"]), out)
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x][-1]
    assert last["adversary"] > 0 and math.isfinite(last["loss"])
