"""The speed paths: cached vs recomputed decoding, precision checks, skipped non-finite steps,
torch.compile, and (on a GPU) mixed precision against fp32."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import read_jsonl, small_model_config, tiny_config
from textvae import checkpoint as ckpt
from textvae.errors import ConfigError
from textvae.generate import decode
from textvae.model import SentenceVAE
from textvae.train import resolve_precision, train

BOS, EOS = 1, 2


def model(**kw) -> SentenceVAE:
    torch.manual_seed(0)
    return SentenceVAE(small_model_config(**kw)).eval()


@pytest.mark.parametrize("z_injection", ["both", "memory", "embedding"])
def test_cached_decoding_equals_full_recomputation(z_injection):
    m = model(z_injection=z_injection, max_len=40)
    z = torch.randn(5, m.cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    # eos -1 never comes, so every row runs to the length limit
    cached = decode(m, z, BOS, -1, strategy="greedy", max_len=32)
    full = decode(m, z, BOS, -1, strategy="greedy", max_len=32, use_cache=False)
    assert cached.ids == full.ids and all(len(r) == 32 for r in cached.ids)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s1 = decode(m, z, BOS, EOS, strategy="sample", top_p=0.9, generator=g1)
    s2 = decode(m, z, BOS, EOS, strategy="sample", top_p=0.9, generator=g2, use_cache=False)
    assert s1 == s2


def test_last_only_logits_are_the_last_position():
    m = model()
    z = torch.randn(3, m.cfg.latent_dim)
    ids = torch.randint(4, 40, (3, 9))
    full, _ = m.decode(ids, z)
    last, _ = m.decode(ids, z, last_only=True)
    assert last.shape == (3, 1, 40)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_beam_has_no_uncached_path():
    m = model()
    with pytest.raises(ValueError, match="cache"):
        decode(m, torch.zeros(1, m.cfg.latent_dim), BOS, EOS, strategy="beam", use_cache=False)


def test_bf16_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    cuda = torch.device("cuda")
    with pytest.raises(ConfigError, match="Tesla T4 does not support bf16"):
        resolve_precision("bf16", cuda)
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("fp32", cuda) == "fp32"


def test_fp16_on_cpu_is_refused(run_cli, tmp_path):
    from helpers import REPO_ROOT, TINY_DATA

    rc, _, err = run_cli("train", "--config", REPO_ROOT / "configs" / "tiny.yaml", "--out", tmp_path / "r",
                         "--set", f"data.train={TINY_DATA / 'train.jsonl'}", "--set", "train.precision=fp16",
                         "--set", "train.device=cpu")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "fp16 needs a CUDA GPU" in err


def test_non_finite_gradients_skip_the_step(monkeypatch, tmp_path):
    """A NaN loss at step 3: that step is counted as skipped and never applied (the weights stay finite)."""
    import textvae.train as train_mod

    real = train_mod.elbo_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            terms = {**terms, "loss": terms["loss"] * float("nan")}
        return terms

    monkeypatch.setattr(train_mod, "elbo_loss", poisoned)
    cfg = tiny_config(["train.max_steps=5", "train.log_every=1", "train.eval_every=0", "train.save_every=0"])
    train(cfg, tmp_path / "run")
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1]
    assert math.isnan(records[2]["loss"]) and not math.isfinite(records[2]["grad_norm"])
    assert all(math.isfinite(r["loss"]) for r in records[3:])
    loaded = ckpt.load_pretrained(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    assert ckpt.load_trainer_state(tmp_path / "run")["skipped"] == 1


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """train.compile: true gives the losses of the eager loop (inductor on CPU compiles C++: slow)."""
    base = ["train.max_steps=3", "train.log_every=1", "train.eval_every=0", "train.save_every=0"]
    train(tiny_config(base), tmp_path / "eager")
    train(tiny_config(base + ["train.compile=true"]), tmp_path / "compiled")
    ea = [r["loss"] for r in read_jsonl(tmp_path / "eager" / "metrics.jsonl") if r["split"] == "train"]
    co = [r["loss"] for r in read_jsonl(tmp_path / "compiled" / "metrics.jsonl") if r["split"] == "train"]
    assert co == pytest.approx(ea, rel=1e-3)
    # the checkpoint is saved from the plain module: no _orig_mod. prefixes, loads as usual
    ckpt.load_pretrained(tmp_path / "compiled")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_precision_tracks_fp32_on_gpu(tmp_path):
    """bf16 and fp16 (GradScaler) loss curves follow fp32 within 3% over 300 steps, without NaN."""
    base = ["train.max_steps=300", "train.log_every=10", "train.eval_every=0", "train.save_every=0",
            "train.device=cuda", "model.d_model=128", "model.n_heads=4", "model.enc_layers=2", "model.dec_layers=2"]
    curves = {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        out = tmp_path / precision
        train(tiny_config(base + [f"train.precision={precision}"]), out)
        records = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
        assert all(math.isfinite(r["loss"]) for r in records), precision
        assert records[-1]["skipped_steps"] <= 20, precision  # fp16: some while the loss scale settles
        curves[precision] = [r["loss"] for r in records]
    ref = curves.pop("fp32")
    for precision, curve in curves.items():
        # compare smoothed curves (windows of 5 records = 50 steps)
        for i in range(0, len(ref), 5):
            a, b = sum(ref[i : i + 5]), sum(curve[i : i + 5])
            assert b == pytest.approx(a, rel=0.03), (precision, i)
