"""textvae.train: the loop's records, exact resume, determinism, refusal to overwrite."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY_DATA, file_hashes, read_jsonl, tiny_config
from textvae import checkpoint as ckpt
from textvae.errors import CheckpointError, ConfigError
from textvae.schedules import kl_weight, learning_rate, word_dropout_rate
from textvae.train import resolve_device, resolve_precision, train

TIMING = {"tokens_per_s", "elapsed_s"}
LOSSES = ("loss", "rec", "kl", "kl_objective")

RESUME_CASES = {
    # the case the brief asks for: 20 steps, checkpoints every 10, stopped after 10
    "mid-epoch": (["train.max_steps=20", "train.save_every=10", "train.log_every=1"], 10),
    # 400 sentences in batches of 64 make 7 batches an epoch: stop exactly at the epoch's end
    "epoch-end": (["train.max_steps=10", "train.save_every=0", "train.log_every=1", "data.batch_size=64"], 7),
    # gradient accumulation: the data position advances two batches a step and crosses the epoch
    "grad-accum": (["train.max_steps=6", "train.save_every=0", "train.log_every=1", "data.batch_size=64",
                    "train.grad_accum=2"], 3),
    # autoencoder pre-training, then a fresh decoder (Li et al. 2019): stopped exactly at the reset
    "decoder-reset": (["train.max_steps=12", "train.save_every=0", "train.log_every=1", "train.kl.start_step=6",
                       "train.kl.reset_decoder_step=6"], 6),
}


def train_records(run) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]


def assert_same_record(a: dict, b: dict, rel: float = 1e-6) -> None:
    assert set(a) == set(b)
    for key in a:
        if key in TIMING:
            continue
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-9), (a["step"], key)
        else:
            assert a[key] == b[key], (a["step"], key)


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / ckpt.CHECKPOINT_DIR / ckpt.WEIGHTS))


@pytest.fixture(scope="module")
def resume_case(tmp_path_factory):
    """Runs each resume case once per module: returns a function name -> (config, stop step,
    uninterrupted run A, interrupted-and-resumed run B, B's checkpoint and metrics at the stop)."""
    done = {}

    def run(name: str):
        if name not in done:
            overrides, stop = RESUME_CASES[name]
            cfg = tiny_config(overrides)
            root = tmp_path_factory.mktemp(f"resume-{name}")
            a, b = root / "A", root / "B"
            train(cfg, a)
            train(cfg, b, stop_after=stop)
            at_stop = {
                "meta": ckpt.read_meta(b),
                "state": ckpt.load_trainer_state(b),
                "records": read_jsonl(b / "metrics.jsonl"),
            }
            train(cfg, b, resume=True)
            done[name] = (cfg, stop, a, b, at_stop)
        return done[name]

    return run


@pytest.fixture(params=list(RESUME_CASES))
def resumed(request, resume_case):
    return resume_case(request.param)


@pytest.fixture
def main_case(resume_case):
    return resume_case("mid-epoch")


def test_resumed_losses_equal_uninterrupted(resumed):
    cfg, stop, a, b, _ = resumed
    ra, rb = train_records(a), train_records(b)
    steps = list(range(1, cfg.train.max_steps + 1))
    assert [r["step"] for r in ra] == steps
    assert [r["step"] for r in rb] == steps, "each step logged exactly once after resuming"
    assert all(set(LOSSES) <= set(r) for r in ra)
    for x, y in zip(ra[stop:], rb[stop:]):
        assert_same_record(x, y)
    for x, y in zip(ra[:stop], rb[:stop]):
        assert_same_record(x, y)


def test_resumed_final_weights_equal(resumed):
    cfg, _, a, b, _ = resumed
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert ckpt.read_meta(b)["step"] == cfg.train.max_steps and ckpt.read_meta(b)["final"] is True
    state_a, state_b = ckpt.load_trainer_state(a), ckpt.load_trainer_state(b)
    assert (state_a["epoch"], state_a["position"]) == (state_b["epoch"], state_b["position"])


def test_stop_after_leaves_a_resumable_checkpoint(resumed):
    cfg, stop, a, _, at_stop = resumed
    assert at_stop["meta"]["step"] == stop and at_stop["meta"]["final"] is False
    state = at_stop["state"]
    assert state["step"] == stop
    # the data position counts micro-batches: epochs * batches per epoch + position in the epoch
    tok = ckpt.load_pretrained(a).tokenizer
    rows = sum(len(tok.encode(r["text"])) + 2 <= cfg.model.max_len for r in read_jsonl(TINY_DATA / "train.jsonl"))
    per_epoch = math.ceil(rows / cfg.data.batch_size)
    assert state["epoch"] * per_epoch + state["position"] == stop * cfg.train.grad_accum
    assert [r["step"] for r in at_stop["records"] if r["split"] == "train"] == list(range(1, stop + 1))


def test_determinism_same_seed_same_metrics(main_case, tmp_path):
    cfg, _, a, _, _ = main_case
    train(cfg, tmp_path / "C")
    ra, rc = read_jsonl(a / "metrics.jsonl"), read_jsonl(tmp_path / "C" / "metrics.jsonl")
    assert len(ra) == len(rc)
    for x, y in zip(ra, rc):
        assert_same_record(x, y, rel=0)
    wa, wc = weights(a), weights(tmp_path / "C")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_validation_cadence_leaves_the_weights_alone(main_case, tmp_path):
    """Validating more or less often (or never) draws from its own random stream: the trained
    weights are those of the same run validated at another cadence."""
    cfg, _, a, _, _ = main_case
    assert cfg.train.eval_every == cfg.train.max_steps  # run A validated once, at the end
    train(tiny_config(RESUME_CASES["mid-epoch"][0] + ["train.eval_every=3"]), tmp_path / "E")
    assert sum(r["split"] == "valid" for r in read_jsonl(tmp_path / "E" / "metrics.jsonl")) == 7
    wa, we = weights(a), weights(tmp_path / "E")
    assert all(torch.equal(wa[k], we[k]) for k in wa)


def test_other_seed_gives_other_losses(main_case, tmp_path):
    cfg, _, a, _, _ = main_case
    train(tiny_config(["train.max_steps=2", "train.log_every=1", "train.seed=1"]), tmp_path / "D")
    first_a, first_d = train_records(a)[0], train_records(tmp_path / "D")[0]
    assert first_a["loss"] != pytest.approx(first_d["loss"], rel=1e-4)


def test_records_follow_the_schedules(main_case):
    cfg, _, a, _, _ = main_case
    tc = cfg.train
    for r in train_records(a):
        s = r["step"] - 1  # a record for step s+1 was computed with the schedules at step s
        assert r["beta"] == pytest.approx(kl_weight(s, tc.kl, tc.max_steps))
        assert r["lr"] == pytest.approx(learning_rate(s, tc.lr, tc.min_lr, tc.warmup_steps, tc.max_steps))
        assert r["word_dropout"] == pytest.approx(word_dropout_rate(s, tc.word_dropout))
        assert r["loss"] == pytest.approx(r["rec"] + r["beta"] * r["kl_objective"], rel=1e-5)
        assert r["kl_objective"] >= cfg.model.latent_dim * tc.kl.free_bits - 1e-5  # the free-bits floor
        assert r["skipped_steps"] == 0


@pytest.mark.parametrize("groups", [0, 1])
def test_free_bits_groups_reach_the_objective(groups, tmp_path, monkeypatch):
    """train.kl.free_bits_groups is the floor's grouping in the loss that training minimises
    (its arithmetic: tests/test_losses.py), and the loss record follows that floor."""
    import textvae.train as train_mod

    seen = []
    real = train_mod.elbo_loss

    def spy(*args, **kwargs):
        seen.append(args[-1])  # free_bits_groups, the last positional argument
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "elbo_loss", spy)
    cfg = tiny_config(["train.max_steps=2", "train.log_every=1", "train.kl.free_bits=2.6",
                       f"train.kl.free_bits_groups={groups}"])
    train(cfg, tmp_path / "G")
    assert seen and set(seen) == {groups}
    floor = cfg.model.latent_dim * 2.6
    for r in train_records(tmp_path / "G"):
        if groups == 1:  # one group: the sentence's KL, or the floor when it is below it
            assert r["kl_objective"] == pytest.approx(max(r["kl"], floor), rel=1e-5)
        else:
            assert r["kl_objective"] >= max(r["kl"], floor) * (1 - 1e-5)


def test_validation_record_at_the_end(main_case):
    cfg, _, a, _, _ = main_case
    valid = [r for r in read_jsonl(a / "metrics.jsonl") if r["split"] == "valid"]
    assert valid and valid[-1]["step"] == cfg.train.max_steps
    last = valid[-1]
    assert last["neg_elbo"] == pytest.approx(last["rec"] + last["kl"], rel=1e-6)
    assert 0 <= last["active_units"] <= cfg.model.latent_dim
    tok = ckpt.load_pretrained(a).tokenizer
    texts = [r["text"] for r in read_jsonl(TINY_DATA / "valid.jsonl")]
    fits = sum(len(tok.encode(t)) + 2 <= cfg.model.max_len for t in texts)  # longer ones are dropped
    assert last["sentences"] == fits > 0


# --------------------------------------------------------------------------- the shared run


def test_shared_run_logs_every_five_steps(trained_run):
    records = read_jsonl(trained_run / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(5, 41, 5))
    assert [r["step"] for r in records if r["split"] == "valid"] == [40]


def test_training_lowers_validation_loss(trained):
    """The trained model reconstructs held-out sentences better than its untrained twin."""
    from textvae.data import prepare_split
    from textvae.evaluate import evaluate_elbo
    from textvae.model import SentenceVAE

    tok = trained.tokenizer
    valid, _ = prepare_split(str(TINY_DATA / "valid.jsonl"), "train", tok, trained.config.model.max_len)
    torch.manual_seed(0)
    fresh = SentenceVAE(trained.config.model, pad_id=tok.pad_id).eval()
    after = evaluate_elbo(trained.model, valid, tok)
    before = evaluate_elbo(fresh, valid, tok)
    assert after["rec"] < 0.9 * before["rec"]
    assert after["sentences"] == before["sentences"] == len(valid)


# --------------------------------------------------------------------------- refusals


def test_refuses_to_overwrite_a_checkpoint(copy_run):
    run = copy_run()
    before = file_hashes(run)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(tiny_config(["train.max_steps=2"]), run)
    assert file_hashes(run) == before


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny_config(["train.max_steps=2"]), tmp_path / "empty", resume=True)


def test_resume_with_another_model_section(copy_run):
    run = copy_run()
    with pytest.raises(ConfigError, match="differs"):
        train(tiny_config(["train.max_steps=45", "model.latent_dim=4"]), run, resume=True)


def test_device_and_precision_checks():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
        assert resolve_device("auto") == cpu


# --------------------------------------------------------------------------- other settings


def test_unigram_txt_and_other_model_options(tmp_path):
    cfg = tiny_config([
        f"data.train={TINY_DATA / 'train.txt'}", "data.valid=none", "data.label_column=none",
        "tokenizer.kind=unigram", "tokenizer.vocab_size=300", "model.pooling=cls", "model.z_injection=embedding",
        "train.kl.schedule=cyclical", "train.word_dropout.schedule=linear", "train.word_dropout.warmup_steps=2",
        "train.max_steps=3", "train.log_every=1",
    ])
    train(cfg, tmp_path / "run")
    loaded = ckpt.load_pretrained(tmp_path / "run")
    assert json.loads(loaded.tokenizer.to_json())["model"]["type"] == "Unigram"
    assert loaded.config.model.pooling == "cls" and loaded.config.model.z_injection == "embedding"
    assert loaded.label_names == []
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["split"] for r in records] == ["train"] * 3  # no validation data
    assert [r["word_dropout"] for r in records] == pytest.approx([0.0, 0.1, 0.2])


# --------------------------------------------------------------------------- bugs found


def test_resume_after_torn_metrics_line(copy_run):
    run = copy_run()
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 41, "split": "tr')  # the process died mid-write
    train(tiny_config(["train.max_steps=42"]), run, resume=True)
    assert ckpt.read_meta(run)["step"] == 42


# --------------------------------------------------------------------------- setup, step, config of a run


def test_setup_and_train_step_reproduce_train(main_case, tmp_path):
    """The loop's pieces used by hand: setup + train_step give train()'s first records exactly."""
    from textvae.train import setup, train_step

    cfg, _, a, _, _ = main_case
    run = setup(cfg, tmp_path / "manual")
    assert (run.step, run.epoch, run.position, run.skipped) == (0, 0, 0, 0)
    assert run.cfg.model.vocab_size == run.tok.vocab_size and run.valid_set is not None
    batches = run.batches(run.epoch, run.position)
    run.model.train()
    for record in train_records(a)[:2]:
        stats = train_step(run, batches)
        assert run.step == record["step"]
        assert {k: stats.sums[k] for k in LOSSES} == {k: record[k] for k in LOSSES}
        assert (stats.beta, stats.lr, stats.grad_norm) == (record["beta"], record["lr"], record["grad_norm"])
    assert run.position == 2 and run.epoch == 0


def test_resumed_config_keeps_the_checkpoint_model_section(trained):
    from dataclasses import replace

    from textvae.train import resumed_config

    cfg = tiny_config(["train.max_steps=80"])  # vocab_size 0, as read from a config file
    resumed = resumed_config(cfg, trained.config, trained.path)
    assert resumed.model == trained.config.model and resumed.train.max_steps == 80
    with pytest.raises(ConfigError, match="model or tokenizer section differs"):
        resumed_config(replace(cfg, model=replace(cfg.model, latent_dim=4)), trained.config, trained.path)
    with pytest.raises(ConfigError, match="model or tokenizer section differs"):
        resumed_config(tiny_config(["tokenizer.vocab_size=300"]), trained.config, trained.path)


def test_run_config_new_and_resumed_runs(copy_run, tmp_path):
    """What ``textvae train`` trains: a config file, or a resumed run's own config; overrides on top."""
    from dataclasses import replace
    from pathlib import Path

    from helpers import TINY_CONFIG
    from textvae.errors import TextVAEError
    from textvae.train import run_config

    with pytest.raises(TextVAEError, match=r"^give --config FILE \(or --resume with --out RUN_DIR\)$"):
        run_config(None, [], None, resume=False)
    with pytest.raises(TextVAEError, match=r"^--resume without --config needs --out RUN_DIR$"):
        run_config(None, [], None, resume=True)
    with pytest.raises(ConfigError, match="config file not found"):
        run_config(str(tmp_path / "nope.yaml"), [], None, resume=False)

    cfg, out = run_config(str(TINY_CONFIG), ["train.max_steps=3"], None, resume=False)
    assert out == Path("runs") / cfg.name and cfg.name == "tiny" and cfg.train.max_steps == 3
    assert run_config(str(TINY_CONFIG), [], str(tmp_path / "r"), resume=False)[1] == tmp_path / "r"

    run = copy_run()
    saved = ckpt.load_pretrained(run).config
    cfg, out = run_config(None, ["train.max_steps=45"], str(run), resume=True)
    assert out == run and cfg.train.max_steps == 45 and cfg.model.vocab_size == 0
    assert cfg.model == replace(saved.model, vocab_size=0) and cfg.data == saved.data
    with pytest.raises(CheckpointError):
        run_config(None, [], str(tmp_path / "missing"), resume=True)


def test_truncate_after_writes_atomically(tmp_path, monkeypatch):
    """On resume the metrics log is cut back through textvae.files.atomic_write (a torn last line dropped)."""
    import textvae.train as train_mod

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "split": "train"}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "spl', encoding="utf-8")
    calls = []
    real = train_mod.atomic_write
    monkeypatch.setattr(train_mod, "atomic_write", lambda p, data: calls.append(p) or real(p, data))
    train_mod.MetricsLog(path).truncate_after(2)
    assert calls == [path]
    assert path.read_text(encoding="utf-8") == lines[0] + "\n" + lines[1] + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_the_vae_step_fits_on_a_screen():
    """The issue's rule for the loop body (the 80-line rule for every function is tests/test_structure.py's)."""
    import inspect

    from textvae.train import train_step

    assert len(inspect.getsource(train_step).splitlines()) <= 45


def test_a_from_scratch_encoder_gets_its_own_learning_rate():
    from textvae.model import SentenceVAE
    from textvae.train import build_optimizer

    cfg = tiny_config(["model.vocab_size=40", "model.encoder.lr=0.012", "train.lr=0.003", "model.pooling=attention"])
    model = SentenceVAE(cfg.model)
    opt = build_optimizer(model, cfg)
    scale = {id(p): g.get("lr_scale", 1.0) for g in opt.param_groups for p in g["params"]}
    assert any(name.startswith("pool.") for name, _ in model.named_parameters())
    for name, p in model.named_parameters():
        expected = 4.0 if name.startswith(("encoder.", "pool.", "to_posterior.")) else 1.0
        assert scale[id(p)] == pytest.approx(expected), name


def test_training_log_samples_use_only_training_words(tmp_path, caplog):
    """The prior samples that end training's log are decoded like ``textvae sample``: only words
    seen in training. An untrained model decoding any token sequence glues pieces into non-words."""
    import logging

    from textvae.data import read_training_texts
    from textvae.evaluate import unseen_word_rate, words_of
    from textvae.train import log_prior_samples, setup

    cfg = tiny_config(["train.max_steps=1"])
    run = setup(cfg, tmp_path / "run")
    known = {w for t in read_training_texts(cfg.data.train, "train", "text", cfg.data.min_words, cfg.data.max_words)
             for w in words_of(t)}
    with caplog.at_level(logging.INFO, logger="textvae"):
        log_prior_samples(run, n=20)
    logged = [r.getMessage() for r in caplog.records]
    samples = [m.split("prior sample: ", 1)[1] for m in logged if "prior sample: " in m]
    assert len(samples) == 20 and any(words_of(s) for s in samples)
    assert unseen_word_rate(samples, known) == 0.0


def test_keep_best_keeps_the_best_validation_weights(tmp_path):
    """train.keep_best: <run>/best holds the weights of the lowest validation -ELBO (re-evaluating
    them gives the logged reconstruction; the KL moved with train.standardize_latents, and without
    it the logged -ELBO too), the final checkpoint's files fitted to those weights, and a
    stopped-and-resumed run ends with the same best checkpoint as an uninterrupted one."""
    from textvae.data import prepare_split
    from textvae.evaluate import evaluate_elbo
    from textvae.train import BEST_DIR

    cfg = tiny_config(["train.max_steps=20", "train.eval_every=4", "train.save_every=4", "train.keep_best=neg_elbo"])
    a, b = tmp_path / "A", tmp_path / "B"
    train(cfg, a)
    valid = [r for r in read_jsonl(a / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [4, 8, 12, 16, 20]
    best = min(valid, key=lambda r: r["neg_elbo"])
    meta = ckpt.read_meta(a / BEST_DIR)
    assert meta["best"] == {"metric": "neg_elbo", "value": pytest.approx(best["neg_elbo"]), "step": best["step"]}
    assert meta["final"] is True

    loaded = ckpt.load_pretrained(a / BEST_DIR)
    corpus, _ = prepare_split(cfg.data.valid, "validation", loaded.tokenizer, cfg.model.max_len,
                              min_words=cfg.data.min_words, max_words=cfg.data.max_words)
    again = evaluate_elbo(loaded.model, corpus, loaded.tokenizer, batch_size=2 * cfg.data.batch_size,
                          seed=cfg.train.seed)
    assert again["rec"] == pytest.approx(best["rec"], rel=1e-4)
    assert again["kl"] != pytest.approx(best["kl"], rel=1e-4)  # standardised coordinates
    assert ckpt.load_prior(loaded, fit=False) is not None  # fitted to the best weights, not the last ones
    assert ckpt.load_seen_words(loaded, "seen") is not None

    train(cfg, b, stop_after=10)
    train(cfg, b, resume=True)
    assert ckpt.read_meta(b / BEST_DIR)["best"] == meta["best"]

    c = tmp_path / "C"  # the same run in the training coordinates: the logged -ELBO itself
    train(tiny_config(["train.max_steps=20", "train.eval_every=4", "train.save_every=4", "train.keep_best=neg_elbo",
                       "train.standardize_latents=false"]), c)
    loaded = ckpt.load_pretrained(c / BEST_DIR)
    again = evaluate_elbo(loaded.model, corpus, loaded.tokenizer, batch_size=2 * cfg.data.batch_size,
                          seed=cfg.train.seed)
    assert again["neg_elbo"] == pytest.approx(best["neg_elbo"], rel=1e-4)
    assert file_hashes(b / BEST_DIR)[ckpt.WEIGHTS] == file_hashes(a / BEST_DIR)[ckpt.WEIGHTS]


def test_keep_best_after_the_last_improvement_fits_the_files_to_the_stored_weights(tmp_path):
    """When the best validation came before the last step, the final files of <run>/best are
    computed from the weights stored there, not from the model in memory."""
    from textvae.train import BEST_DIR, finish_best, setup, train_step, validate

    run = setup(tiny_config(["train.max_steps=5", "train.keep_best=rec"]), tmp_path / "run")
    validate(run)  # step 0: the only validation, so the best
    batches = run.batches(0, 0)
    for _ in range(3):
        train_step(run, batches)
    finish_best(run, None)
    loaded = ckpt.load_pretrained(tmp_path / "run" / BEST_DIR)
    assert loaded.meta["best"]["step"] == 0 and loaded.meta["final"] is True
    assert ckpt.load_prior(loaded, fit=False) is not None
    assert ckpt.weights_digest(loaded.model) != ckpt.weights_digest(run.model)


def test_keep_best_needs_validation_data_and_a_known_metric():
    with pytest.raises(ConfigError, match="data.valid"):
        tiny_config(["train.keep_best=rec", "data.valid="])
    with pytest.raises(ConfigError, match="none, neg_elbo, rec"):
        tiny_config(["train.keep_best=elbo"])


def test_adamw_is_fused_on_a_cpu_and_trains_the_same_weights_as_the_loop():
    from textvae.model import SentenceVAE
    from textvae.train import build_optimizer, can_fuse

    cfg = tiny_config(["model.vocab_size=40"])
    torch.manual_seed(0)
    model = SentenceVAE(cfg.model)
    opt = build_optimizer(model, cfg)
    assert all(g["fused"] for g in opt.param_groups)
    assert not can_fuse([]) and not can_fuse([torch.nn.Parameter(torch.zeros(2), requires_grad=False)])
    # the fused kernel computes AdamW's update: the same weights as the per-tensor loop after a few steps
    loop_model = SentenceVAE(cfg.model)
    loop_model.load_state_dict(model.state_dict())
    named = dict(loop_model.named_parameters())
    index = {id(p): n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k not in ("params", "fused")},
               "params": [named[index[id(p)]] for p in g["params"]]} for g in opt.param_groups]
    loop_opt = torch.optim.AdamW(groups, foreach=False)
    ids = torch.randint(4, 40, (3, 7))
    mask = torch.ones_like(ids, dtype=torch.bool)
    for m, o in ((model, opt), (loop_model, loop_opt)):
        torch.manual_seed(1)
        for _ in range(3):
            out = m(ids, mask, ids, eps=torch.zeros(3, cfg.model.latent_dim))
            out.logits.float().logsumexp(-1).mean().backward()
            o.step()
            o.zero_grad()
    for (name, p), q in zip(model.named_parameters(), loop_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def _narrow_copy(run_dir, logvar: float):
    """The shared tiny run loaded afresh, its posterior made far narrower than the ELBO wants."""
    loaded = ckpt.load_pretrained(run_dir)
    L = loaded.model.cfg.latent_dim
    with torch.no_grad():
        loaded.model.to_posterior.weight[L:] = 0.0
        loaded.model.to_posterior.bias[L:] = logvar
    return loaded


def test_calibrate_variance_widens_a_too_narrow_posterior(trained_run):
    """train.calibrate_variance: from a posterior far narrower than the ELBO's optimum, every
    dimension's log-variance moves up, the plain -ELBO of the same training sentences with the same
    noise falls, and nothing but the log-variance bias changes (the means, hence reconstructions,
    stay); the frozen weights' flags and the train/eval mode come back; the same seed gives the
    same offsets."""
    from textvae.data import prepare_split
    from textvae.train import _probe_elbo, calibrate_variance

    cfg = tiny_config()
    loaded = _narrow_copy(trained_run, -10.0)
    model, tok, L = loaded.model, loaded.tokenizer, loaded.model.cfg.latent_dim
    corpus, _ = prepare_split(cfg.data.train, "train", tok, cfg.model.max_len, min_words=cfg.data.min_words,
                              max_words=cfg.data.max_words)
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    rows, zero = list(range(64)), torch.zeros(L)
    before, kl_before = _probe_elbo(model, corpus, tok, rows, zero, seed=0)
    model.train()
    offset = calibrate_variance(model, corpus, tok, steps=20, seed=0)
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()
    after, kl_after = _probe_elbo(model, corpus, tok, rows, zero, seed=0)
    assert bool((offset > 0).all())
    assert kl_after < kl_before - 0.1 * L and after < before - 0.1 * L  # each dimension pays less
    for k, v in model.state_dict().items():
        if k == "to_posterior.bias":
            assert torch.equal(v[:L], before_weights[k][:L])
            torch.testing.assert_close(v[L:], before_weights[k][L:] + offset)
        else:
            assert torch.equal(v, before_weights[k]), k
    again = _narrow_copy(trained_run, -10.0)
    assert torch.equal(calibrate_variance(again.model, corpus, tok, steps=20, seed=0), offset)


@pytest.mark.parametrize("model", ["plain", "conditional"])
def test_calibrate_variance_reaches_the_final_and_the_best_checkpoints(model, tmp_path):
    """A run with train.calibrate_variance ends with the weights of the same run without it except
    for the posterior's log-variance bias, in the final checkpoint and in <run>/best (a conditional
    model too: calibrated on q(z|x, y))."""
    from textvae.train import BEST_DIR

    base = ["train.max_steps=8", "train.eval_every=4", "train.save_every=0", "train.keep_best=rec",
            "train.standardize_latents=false"] + (["model.conditional=label"] if model == "conditional" else [])
    a, b = tmp_path / "plain", tmp_path / "calibrated"
    train(tiny_config(base), a)
    train(tiny_config(base + ["train.calibrate_variance=5"]), b)
    for sub in (".", BEST_DIR):
        wa, wb = (load_file(str(ckpt.resolve(r / sub) / ckpt.WEIGHTS)) for r in (a, b))
        L = tiny_config().model.latent_dim
        assert set(wa) == set(wb)
        for k in wa:
            if k == "to_posterior.bias":
                assert torch.equal(wa[k][:L], wb[k][:L]) and not torch.equal(wa[k][L:], wb[k][L:])
            else:
                assert torch.equal(wa[k], wb[k]), (sub, k)


def test_decoder_only_steps_hold_the_posterior_and_resume_exactly(tmp_path):
    """train.decoder_only_steps: over the last steps the weights of q(z|x) stay exactly as they
    were when the phase began (but for the log-variance bias that the calibrations move) while the
    decoder trains on; a run stopped right at the phase's start and resumed ends with the
    uninterrupted run's weights."""
    base = ["train.max_steps=10", "train.decoder_only_steps=4", "train.calibrate_variance=5", "train.save_every=0",
            "train.eval_every=0", "train.standardize_latents=false"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_config(base), whole)
    train(tiny_config(base), split, stop_after=6)
    at_start = ckpt.load_pretrained(split)  # step 6: the phase has not begun
    assert at_start.meta["step"] == 6
    train(tiny_config(base), split, resume=True)
    weights_of = lambda run: file_hashes(run / ckpt.CHECKPOINT_DIR)[ckpt.WEIGHTS]  # noqa: E731
    assert weights_of(whole) == weights_of(split)
    end = ckpt.load_pretrained(whole)
    L = end.model.cfg.latent_dim
    names = {id(p): n for n, p in end.model.named_parameters()}
    held = {names[id(p)] for p in end.model.posterior_parameters()}
    assert {"to_posterior.weight", "to_posterior.bias"} <= held and any(n.startswith("encoder.") for n in held)
    a, b = at_start.model.state_dict(), end.model.state_dict()
    for name in held:
        if name == "to_posterior.bias":
            assert torch.equal(a[name][:L], b[name][:L]) and not torch.equal(a[name][L:], b[name][L:])
        else:
            assert torch.equal(a[name], b[name]), name
    moved = [n for n in b if n.startswith("decoder.") and not torch.equal(a[n], b[n])]
    assert moved  # the decoder trained on


def test_training_phases_come_in_order():
    from textvae.train import training_phase

    tc = tiny_config(["train.max_steps=12", "train.calibrate_variance=5", "train.elbo_steps=4",
                      "train.decoder_only_steps=3"]).train
    assert [training_phase(s, tc) for s in range(12)] == ["main"] * 5 + ["elbo"] * 4 + ["decoder"] * 3
    tc = tiny_config(["train.max_steps=12", "train.calibrate_variance=5", "train.elbo_steps=4"]).train
    assert [training_phase(s, tc) for s in range(12)] == ["main"] * 8 + ["elbo"] * 4


def test_elbo_steps_train_everything_on_the_plain_elbo_and_resume_exactly(tmp_path, caplog):
    """train.elbo_steps: after the main steps (against a free-bits floor at beta < 1) the steps
    of the phase record beta 1 and a KL objective without the floor, the phase starts with a
    calibration (the decoder-only steps after it start without one), the encoder trains on in the
    ELBO steps, and a run stopped at the phase's start and resumed ends with the uninterrupted
    run's weights."""
    base = ["train.max_steps=10", "train.elbo_steps=3", "train.decoder_only_steps=2", "train.calibrate_variance=5",
            "train.save_every=0", "train.eval_every=0", "train.standardize_latents=false", "train.log_every=1",
            "train.kl.schedule=constant", "train.kl.beta_max=0.5", "train.kl.free_bits=2.6"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    with caplog.at_level("INFO", logger="textvae"):
        train(tiny_config(base), whole)
    assert caplog.text.count("posterior variance calibrated") == 2  # the ELBO steps' start and the end
    assert "step 5: the next 3 steps train every weight on the plain ELBO" in caplog.text
    assert "step 8: the last 2 steps train the decoder alone against the posterior of the ELBO steps" in caplog.text
    records = train_records(whole)
    assert [r["step"] for r in records] == list(range(1, 11))
    floor = tiny_config(base).model.latent_dim * 2.6
    for r in records[:5]:
        assert r["beta"] == 0.5 and r["kl_objective"] >= floor * (1 - 1e-6)
    for r in records[5:8]:
        assert r["beta"] == 1.0 and r["kl_objective"] == pytest.approx(r["kl"], rel=1e-6) and r["kl"] < floor
        assert r["loss"] == pytest.approx(r["rec"] + r["kl"], rel=1e-5)
    train(tiny_config(base), split, stop_after=5)
    at_start = ckpt.load_pretrained(split)
    train(tiny_config(base), split, resume=True)
    weights_of = lambda run: file_hashes(run / ckpt.CHECKPOINT_DIR)[ckpt.WEIGHTS]  # noqa: E731
    assert weights_of(whole) == weights_of(split)
    a, b = at_start.model.state_dict(), ckpt.load_pretrained(whole).model.state_dict()
    assert any(n.startswith("encoder.") and not torch.equal(a[n], b[n]) for n in a)


def test_posterior_parameters_of_a_conditional_model():
    """A conditional model's q(z|x, y) and q(y|x) weights are among the held ones; the decoder's are not."""
    from textvae.model import SentenceVAE

    cfg = tiny_config(["model.conditional=label"]).model
    from dataclasses import replace
    model = SentenceVAE(replace(cfg, vocab_size=50, num_labels=2))
    names = {id(p): n for n, p in model.named_parameters()}
    held = {names[id(p)] for p in model.posterior_parameters()}
    assert {"label_emb.weight", "label_to_posterior.weight"} <= held
    assert any(n.startswith("classifier.") for n in held)
    assert not any(n.startswith("decoder.") for n in held)


def test_keep_best_rec_with_decoder_only_steps_warns(tmp_path, caplog):
    """The validation rec jumps at the calibration that starts the decoder-only steps: keeping the
    best rec then keeps a step before them, and setup says so."""
    from textvae.train import setup

    with caplog.at_level("WARNING", logger="textvae"):
        setup(tiny_config(["train.max_steps=10", "train.decoder_only_steps=4", "train.calibrate_variance=5",
                           "train.keep_best=rec"]), tmp_path / "rec")
    assert "keep_best 'rec' with train.decoder_only_steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="textvae"):
        setup(tiny_config(["train.max_steps=10", "train.decoder_only_steps=4", "train.calibrate_variance=5",
                           "train.keep_best=neg_elbo"]), tmp_path / "elbo")
    assert "keep_best" not in caplog.text
