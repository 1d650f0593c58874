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
