"""textvae.checkpoint: save/load round trip, atomic saves, clear errors for damaged folders."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import file_hashes, tiny_config
from textvae import checkpoint as ckpt
from textvae.config import TokenizerConfig
from textvae.data import collate
from textvae.errors import CheckpointError
from textvae.model import SentenceVAE
from textvae.tokenizer import train_bpe
from textvae.train import train


def logits_on(model, tok, texts):
    batch = collate([tok.encode(t) for t in texts], tok)
    with torch.no_grad():
        mu, _ = model.encode(batch.enc_ids, batch.enc_mask)
        logits, _ = model.decode(batch.dec_in, mu)
    return logits


SENTENCES = ["In the beginning God created the heaven and the earth.", "Jesus wept.", "And it was so."]


# --------------------------------------------------------------------------- layout and round trip


def test_run_folder_layout(trained_run):
    ck = trained_run / ckpt.CHECKPOINT_DIR
    caches = {"style_classifier.safetensors", "style_classifier.json", "style_judge.safetensors", "style_judge.json"}
    assert sorted(p.name for p in ck.iterdir() if p.name not in caches) == sorted(  # other tests may cache classifiers
        # + attribute vectors: the tiny data has labels
        [ckpt.CONFIG, ckpt.WEIGHTS, ckpt.TOKENIZER, ckpt.TRAINER_STATE, ckpt.ATTRIBUTES, ckpt.ATTRIBUTES_INFO,
         ckpt.SEEN_WORDS, ckpt.PRIOR, ckpt.PRIOR_INFO])  # + the training words and the fitted prior
    assert (trained_run / "metrics.jsonl").is_file()
    meta = json.loads((ck / ckpt.CONFIG).read_text(encoding="utf-8"))
    assert meta["format"] == "textvae"
    assert meta["step"] == 40 and meta["final"] is True
    assert meta["special_ids"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
    assert meta["label_names"] == ["kjv", "web"]
    assert meta["config"]["model"]["vocab_size"] == meta["vocab_size"] > 0
    # no temporary folders next to the checkpoint
    # (.lock is the run-folder lock's file: the lock itself ends with its process)
    assert [p.name for p in trained_run.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []


def test_resolve_accepts_run_and_checkpoint_folders(trained_run):
    assert ckpt.resolve(trained_run) == trained_run / ckpt.CHECKPOINT_DIR
    assert ckpt.resolve(trained_run / ckpt.CHECKPOINT_DIR) == trained_run / ckpt.CHECKPOINT_DIR
    a = ckpt.load_pretrained(trained_run)
    b = ckpt.load_pretrained(trained_run / ckpt.CHECKPOINT_DIR)
    assert a.path == b.path
    assert not a.model.training
    assert a.label_names == ["kjv", "web"]


def test_save_then_load_gives_identical_logits(trained, tmp_path):
    out = ckpt.save_checkpoint(tmp_path / "copy", trained.model, trained.tokenizer, trained.config,
                               meta={"label_names": trained.label_names})
    loaded = ckpt.load_pretrained(out)
    assert loaded.config == trained.config
    assert loaded.tokenizer.to_json() == trained.tokenizer.to_json()
    assert loaded.label_names == trained.label_names
    sd_a, sd_b = trained.model.state_dict(), loaded.model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(logits_on(trained.model, trained.tokenizer, SENTENCES),
                       logits_on(loaded.model, loaded.tokenizer, SENTENCES))


def test_fresh_model_round_trip(trained, tmp_path):
    torch.manual_seed(123)
    model = SentenceVAE(trained.config.model, pad_id=trained.tokenizer.pad_id).eval()
    ckpt.save_checkpoint(tmp_path / "fresh", model, trained.tokenizer, trained.config)
    loaded = ckpt.load_pretrained(tmp_path / "fresh")
    expected = logits_on(model, trained.tokenizer, SENTENCES)
    assert torch.equal(expected, logits_on(loaded.model, loaded.tokenizer, SENTENCES))
    # and the trained model is really different from a fresh one
    assert not torch.allclose(expected, logits_on(trained.model, trained.tokenizer, SENTENCES))


def test_factorised_embedding_round_trip(trained, tmp_path):
    """model.embed_dim: the narrow table and its projection are saved and the model rebuilt from config.json."""
    from dataclasses import replace

    cfg = replace(trained.config, model=replace(trained.config.model, embed_dim=8))
    torch.manual_seed(5)
    model = SentenceVAE(cfg.model, pad_id=trained.tokenizer.pad_id).eval()
    ckpt.save_checkpoint(tmp_path / "narrow", model, trained.tokenizer, cfg)
    state = load_file(str(tmp_path / "narrow" / ckpt.WEIGHTS))
    assert state["tok_emb.weight"].shape[1] == 8 and state["tok_emb.proj"].shape[0] == 8
    loaded = ckpt.load_pretrained(tmp_path / "narrow")
    assert loaded.config.model.embed_dim == 8
    assert torch.equal(logits_on(model, trained.tokenizer, SENTENCES),
                       logits_on(loaded.model, loaded.tokenizer, SENTENCES))


def test_weights_are_safetensors_without_duplicates(trained_run):
    state = load_file(str(trained_run / ckpt.CHECKPOINT_DIR / ckpt.WEIGHTS))
    assert "tok_emb.weight" in state
    assert all(isinstance(v, torch.Tensor) for v in state.values())


# Today's name prefixes -> the names the code wrote before the model's parts were classes
# (written out here, independently of textvae.checkpoint._legacy_names, which maps them back).
OLD_NAMES = {
    "transformer": [(r"encoder\.pos\.", "enc_pos."), (r"decoder\.pos\.", "dec_pos."),
                    (r"encoder\.blocks\.", "encoder."), (r"decoder\.blocks\.", "decoder."),
                    (r"encoder\.ln\.", "enc_ln."), (r"decoder\.ln\.", "dec_ln."), (r"decoder\.z_to_", "z_to_")],
    "gru": [(r"encoder\.pos\.", "enc_pos."), (r"encoder\.blocks\.", "encoder."), (r"encoder\.ln\.", "enc_ln."),
            (r"decoder\.", "gru.")],
}


def old_names(state: dict, decoder: str) -> dict:
    import re

    out = {}
    for k, v in state.items():
        for pattern, old in OLD_NAMES[decoder]:
            if re.match(pattern, k):
                k = re.sub(pattern, old, k, count=1)
                break
        out[k] = v
    return out


@pytest.mark.parametrize("decoder", ["transformer", "gru"])
def test_weights_saved_under_the_old_parameter_names_still_load(trained, tmp_path, decoder):
    from safetensors.torch import save_file

    from textvae.config import DecoderConfig

    mc = dataclasses.replace(trained.config.model, decoder=DecoderConfig(type=decoder), bow_weight=0.5)
    config = dataclasses.replace(trained.config, model=mc)
    torch.manual_seed(5)
    model = SentenceVAE(mc, pad_id=trained.tokenizer.pad_id).eval()
    path = ckpt.save_checkpoint(tmp_path / "ck", model, trained.tokenizer, config)
    state = load_file(str(path / ckpt.WEIGHTS))
    assert ckpt._legacy_names(state) is state  # today's names are left alone
    old = old_names(state, decoder)
    assert "encoder.0.attn.qkv.weight" in old and "enc_ln.weight" in old and "z_to_bow.weight" in old
    assert ("gru.rnn.weight_hh_l0" in old) == (decoder == "gru") and ("dec_pos.weight" in old) == (decoder != "gru")
    save_file(old, str(path / ckpt.WEIGHTS), metadata={"format": "pt"})  # as the old code saved it
    loaded = ckpt.load_pretrained(path)
    got = loaded.model.state_dict()
    assert sorted(got) == sorted(model.state_dict())
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    want = logits_on(model, trained.tokenizer, SENTENCES)
    assert torch.equal(logits_on(loaded.model, loaded.tokenizer, SENTENCES), want)
    again = ckpt.save_checkpoint(tmp_path / "again", loaded.model, loaded.tokenizer, loaded.config)
    assert sorted(load_file(str(again / ckpt.WEIGHTS))) == sorted(state)  # saved again: today's names


def test_overwrite_replaces_checkpoint(trained, tmp_path):
    path = tmp_path / "ck"
    state = {"step": 2, "epoch": 0, "position": 3, "skipped": 0, "optimizer": {}, "rng": {"cpu": torch.get_rng_state()}}
    ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, meta={"step": 1})
    ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, meta={"step": 2},
                         trainer_state=state)
    assert ckpt.read_meta(path)["step"] == 2
    assert ckpt.load_trainer_state(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# --------------------------------------------------------------------------- atomic save


def test_failed_save_keeps_previous_checkpoint(trained, tmp_path, monkeypatch):
    path = tmp_path / "ck"
    ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, meta={"step": 1})
    before = file_hashes(path)
    expected = logits_on(trained.model, trained.tokenizer, SENTENCES)

    torch.manual_seed(5)
    other = SentenceVAE(trained.config.model, pad_id=trained.tokenizer.pad_id)

    def exploding_save_file(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt, "save_file", exploding_save_file)
    with pytest.raises(CheckpointError, match="simulated.*previous checkpoint is kept"):
        ckpt.save_checkpoint(path, other, trained.tokenizer, trained.config, meta={"step": 2})
    monkeypatch.undo()

    assert file_hashes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "a temporary folder was left behind"
    loaded = ckpt.load_pretrained(path)
    assert loaded.meta["step"] == 1
    assert torch.equal(logits_on(loaded.model, loaded.tokenizer, SENTENCES), expected)


def _state(step: int) -> dict:
    return {"step": step, "epoch": 0, "position": 0, "skipped": 0, "optimizer": {}, "rng": {"cpu": torch.get_rng_state()}}


def test_failed_trainer_state_save_keeps_previous(trained, tmp_path, monkeypatch):
    path = tmp_path / "ck"
    ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, trainer_state=_state(1))
    before = file_hashes(path)

    def exploding_torch_save(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted by the user mid-save

    monkeypatch.setattr(ckpt.torch, "save", exploding_torch_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, trainer_state=_state(2))
    monkeypatch.undo()
    assert file_hashes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert ckpt.load_trainer_state(path)["step"] == 1


# --------------------------------------------------------------------------- damaged folders


@pytest.fixture
def ck(copy_run):
    """A private copy of the shared run's checkpoint folder."""
    return copy_run() / ckpt.CHECKPOINT_DIR


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_pretrained(tmp_path / "nowhere")
    f = tmp_path / "file.txt"
    f.write_text("x", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a folder"):
        ckpt.load_pretrained(f)


def test_missing_weights(ck):
    (ck / ckpt.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: model\.safetensors is missing"):
        ckpt.load_pretrained(ck)


def test_missing_tokenizer(ck):
    (ck / ckpt.TOKENIZER).unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is missing"):
        ckpt.load_pretrained(ck)


def test_missing_config(ck):
    (ck / ckpt.CONFIG).unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        ckpt.load_pretrained(ck)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "tiny"])
def test_damaged_weights(ck, damage):
    f = ck / ckpt.WEIGHTS
    raw = f.read_bytes()
    f.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x13\x37" * 5000, "empty": b"",
                   "tiny": b"\x01\x02\x03"}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged"):
        ckpt.load_pretrained(ck)


def test_weights_from_another_model(ck, trained):
    other = SentenceVAE(dataclasses.replace(trained.config.model, latent_dim=4))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(ck / ckpt.WEIGHTS))
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.load_pretrained(ck)


def test_weights_with_missing_tensor(ck):
    from safetensors.torch import save_file

    state = load_file(str(ck / ckpt.WEIGHTS))
    del state["to_posterior.weight"]
    save_file(state, str(ck / ckpt.WEIGHTS))
    with pytest.raises(CheckpointError, match="to_posterior.weight"):
        ckpt.load_pretrained(ck)


@pytest.mark.parametrize("content", [b"{ this is not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'{"step": 3}'])
def test_damaged_config(ck, content):
    (ck / ckpt.CONFIG).write_bytes(content)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        ckpt.load_pretrained(ck)


def test_config_with_bad_values(ck):
    meta = json.loads((ck / ckpt.CONFIG).read_text(encoding="utf-8"))
    meta["config"]["model"]["pooling"] = "max"
    (ck / ckpt.CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="model.pooling"):
        ckpt.load_pretrained(ck)


def test_a_removed_option_at_its_harmless_value_loads_and_another_value_is_refused(ck, trained):
    """config.json of older code may hold an option this code no longer has (model.decoder.z_skip):
    off, the model is the one this code builds; on, it cannot be rebuilt. An unknown key that was
    never an option is still an error."""
    meta = json.loads((ck / ckpt.CONFIG).read_text(encoding="utf-8"))
    meta["config"]["model"]["decoder"]["z_skip"] = False
    (ck / ckpt.CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    loaded = ckpt.load_pretrained(ck)
    assert loaded.config == trained.config
    meta["config"]["model"]["decoder"]["z_skip"] = True
    (ck / ckpt.CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"z_skip=True, an option this version of textvae no longer has"):
        ckpt.load_pretrained(ck)
    meta["config"]["model"]["decoder"] = {**trained.config.to_dict()["model"]["decoder"], "zz_top": 1}
    (ck / ckpt.CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="unknown config key model.decoder.zz_top"):
        ckpt.load_pretrained(ck)


def test_tokenizer_with_other_vocabulary_size(ck, tiny_texts):
    other = train_bpe(tiny_texts, TokenizerConfig(kind="bpe", vocab_size=300))
    other.save(ck / ckpt.TOKENIZER)
    with pytest.raises(CheckpointError, match="does not belong") as e:
        ckpt.load_pretrained(ck)
    assert "300" in str(e.value)


def test_garbage_tokenizer(ck):
    (ck / ckpt.TOKENIZER).write_text("not a tokenizer", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is damaged"):
        ckpt.load_pretrained(ck)


def test_special_ids_mismatch(ck):
    meta = json.loads((ck / ckpt.CONFIG).read_text(encoding="utf-8"))
    meta["special_ids"]["eos"] = 7
    (ck / ckpt.CONFIG).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="special ids"):
        ckpt.load_pretrained(ck)


# --------------------------------------------------------------------------- resume state


def test_trainer_state_round_trip(trained_run):
    state = ckpt.load_trainer_state(trained_run)
    assert state["step"] == 40
    assert {"optimizer", "rng", "epoch", "position", "skipped"} <= set(state)


@pytest.mark.parametrize("content", [b"garbage bytes", b""])
def test_garbage_trainer_state_on_resume(copy_run, content):
    run = copy_run()
    (run / ckpt.CHECKPOINT_DIR / ckpt.TRAINER_STATE).write_bytes(content)
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt is damaged"):
        ckpt.load_trainer_state(run)
    before = file_hashes(run)
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt is damaged"):
        train(tiny_config(["train.max_steps=45"]), run, resume=True)
    assert file_hashes(run) == before


def test_missing_trainer_state_on_resume(copy_run):
    run = copy_run()
    (run / ckpt.CHECKPOINT_DIR / ckpt.TRAINER_STATE).unlink()
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt is missing"):
        train(tiny_config(["train.max_steps=45"]), run, resume=True)


def test_trainer_state_is_not_unpickled(copy_run):
    run = copy_run()

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(run),))

    torch.save({"step": Evil()}, run / ckpt.CHECKPOINT_DIR / ckpt.TRAINER_STATE)
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_trainer_state(run)
    assert run.exists()


def test_trainer_state_with_missing_keys(copy_run):
    run = copy_run()
    torch.save({"step": 40}, run / ckpt.CHECKPOINT_DIR / ckpt.TRAINER_STATE)
    with pytest.raises(CheckpointError):
        train(tiny_config(["train.max_steps=45"]), run, resume=True)


def test_failure_between_the_renames_keeps_previous(trained, tmp_path, monkeypatch):
    path = tmp_path / "ck"
    ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, meta={"step": 1})
    before = file_hashes(path)
    real_replace = ckpt.os.replace

    def failing_replace(src, dst):
        if Path(dst) == path and Path(src).name.startswith(".ck.tmp-"):
            raise KeyboardInterrupt  # interrupted between moving the old folder away and the new one in
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, trained.model, trained.tokenizer, trained.config, meta={"step": 2})
    monkeypatch.undo()
    assert path.is_dir() and file_hashes(path) == before
    assert ckpt.load_pretrained(path).meta["step"] == 1


def test_training_words_rebuilt_from_the_training_file_match_the_stored_ones(copy_run):
    run = copy_run("words")
    stored = ckpt.load_seen_words(ckpt.load_pretrained(run), "seen")
    (run / ckpt.CHECKPOINT_DIR / ckpt.SEEN_WORDS).unlink()
    rebuilt = ckpt.load_seen_words(ckpt.load_pretrained(run), "seen")  # from data.train, with its filters
    assert rebuilt.words == stored.words and len(stored.words) > 100
    assert (run / ckpt.CHECKPOINT_DIR / ckpt.SEEN_WORDS).is_file()  # and cached
