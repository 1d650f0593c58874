"""textvae.config: YAML files, dotted overrides, type coercion, validation."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import REPO_ROOT, TINY_CONFIG
from textvae.config import (Config, DataConfig, KLConfig, ModelConfig, TokenizerConfig, TrainConfig,
                            WordDropoutConfig, apply_overrides, from_dict, load_config)
from textvae.errors import ConfigError

CONFIG_FILES = sorted(p for ext in ("*.yaml", "*.yml", "*.json") for p in (REPO_ROOT / "configs").glob(ext))


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def assert_lists_keys(message: str, cls) -> None:
    for name in field_names(cls):
        assert name in message, f"valid key {name!r} missing from: {message}"


# --------------------------------------------------------------------------- files


def test_configs_folder_is_not_empty():
    assert TINY_CONFIG in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.d_model % cfg.model.n_heads == 0


def test_tiny_config_values():
    cfg = load_config(TINY_CONFIG)
    assert cfg.name == "tiny"
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.enc_layers, cfg.model.dec_layers) == (32, 2, 1, 1)
    assert cfg.data.label_column == "style"
    assert cfg.train.kl.free_bits == pytest.approx(0.1)
    assert cfg.train.lr == pytest.approx(3e-3)
    assert cfg.train.word_dropout.rate == pytest.approx(0.2)
    # keys absent from the file keep their defaults
    assert cfg.train.kl.cycles == KLConfig().cycles
    assert cfg.data.valid_split == DataConfig().valid_split


def test_no_file_gives_defaults():
    assert load_config(None) == Config()


def test_round_trip_through_dict():
    cfg = load_config(TINY_CONFIG, ["train.kl.schedule=cyclical", "model.pooling=cls"])
    assert from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_lists_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nmodle:\n  d_model: 32\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="modle") as e:
        load_config(f)
    assert_lists_keys(str(e.value), Config)


def test_unknown_nested_key_lists_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  kl:\n    beta_maxx: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train\.kl\.beta_maxx") as e:
        load_config(f)
    assert_lists_keys(str(e.value), KLConfig)


@pytest.mark.parametrize("override, cls", [
    ("train.kl.nope=1", KLConfig),
    ("train.nope=1", TrainConfig),
    ("model.widht=3", ModelConfig),
    ("nope=1", Config),
])
def test_unknown_override_key_lists_valid_keys(override, cls):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        load_config(TINY_CONFIG, [override])
    assert override.split("=")[0] in str(e.value)
    assert_lists_keys(str(e.value), cls)


@pytest.mark.parametrize("override, needle", [
    ("train.kl=1", "section"),  # a section, not a key
    ("train.max_steps.x=1", "not a section"),
    ("train.max_steps", "key.subkey=value"),  # no '='
])
def test_malformed_overrides(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(TINY_CONFIG, [override])


# --------------------------------------------------------------------------- coercion


def test_override_coercion():
    cfg = load_config(TINY_CONFIG, [
        "train.max_steps=5",  # int from "5"
        "train.lr=1e-3",  # float from "1e-3" (YAML 1.1 reads this as a string)
        "train.min_lr=0",  # float from an int
        "train.progress=false",  # bool from "false"
        "data.valid=none",  # Optional[str] from "none"
        "data.label_column=null",
        "train.eval_every=1e2",  # integral float string -> int
        "name=123",  # str from something YAML reads as a number
    ])
    assert cfg.train.max_steps == 5 and type(cfg.train.max_steps) is int
    assert cfg.train.lr == 1e-3 and type(cfg.train.lr) is float
    assert cfg.train.min_lr == 0.0 and type(cfg.train.min_lr) is float
    assert cfg.train.progress is False
    assert cfg.data.valid is None
    assert cfg.data.label_column is None
    assert cfg.train.eval_every == 100 and type(cfg.train.eval_every) is int
    assert cfg.name == "123"


@pytest.mark.parametrize("raw, expected", [("true", True), ("False", False), ("yes", True), ("off", False)])
def test_bool_words(raw, expected):
    assert load_config(None, [f"train.progress={raw}"]).train.progress is expected


def test_yaml_file_values_are_coerced(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-3\n  max_steps: '12'\n  progress: 'no'\ndata:\n  valid: none\n", encoding="utf-8")
    cfg = load_config(f)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.max_steps == 12
    assert cfg.train.progress is False
    assert cfg.data.valid is None


def test_later_override_wins():
    cfg = load_config(TINY_CONFIG, ["train.max_steps=5", "train.max_steps=7"])
    assert cfg.train.max_steps == 7


def test_apply_overrides_builds_missing_sections():
    data = apply_overrides({}, ["train.kl.warmup_steps=5000"])
    assert data == {"train": {"kl": {"warmup_steps": 5000}}}
    assert from_dict(data).train.kl.warmup_steps == 5000


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("override, needle", [
    ("model.d_model=33", "n_heads"),
    ("tokenizer.kind=foo", "tokenizer.kind"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.max_steps=2.5", "integer"),
    ("train.max_steps=0", "max_steps"),
    ("train.lr=fast", "number"),
    ("train.progress=maybe", "true or false"),
    ("train.kl.schedule=exponential", "train.kl.schedule"),
    ("train.kl.ratio=0", "ratio"),
    ("train.word_dropout.rate=1.0", "rate"),
    ("model.pooling=max", "model.pooling"),
    ("model.z_injection=cross", "z_injection"),
    ("model.dropout=-0.1", "dropout"),
    ("train.min_lr=1", "min_lr"),
    ("train.device=tpu", "train.device"),
    ("data.max_words=0.5", "integer"),
    ("name=none", "cannot be empty"),
    ("tokenizer.kind=pretrained", "tokenizer.path"),
    ("train.kl.free_bits_groups=-1", "free_bits_groups"),
    ("train.calibrate_variance=-1", "calibrate_variance"),
    ("train.decoder_only_steps=-1", "decoder_only_steps"),
    ("train.decoder_only_steps=40", "fewer than train.max_steps"),
    ("train.decoder_only_steps=10", "set train.calibrate_variance > 0"),
    ("train.elbo_steps=-1", "elbo_steps"),
    ("train.elbo_steps=40", "fewer than train.max_steps"),
    ("train.elbo_steps=10", "set train.calibrate_variance > 0"),
    ("train.kl.free_bits_groups=3", "must divide model.latent_dim"),
])
def test_bad_values_raise_config_error(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(TINY_CONFIG, [override])


def test_the_last_phases_must_leave_main_steps():
    """train.elbo_steps and train.decoder_only_steps together must be fewer than train.max_steps."""
    over = ["train.max_steps=10", "train.calibrate_variance=5", "train.decoder_only_steps=4"]
    load_config(TINY_CONFIG, over + ["train.elbo_steps=5"])
    with pytest.raises(ConfigError, match=r"decoder_only_steps \+ train.elbo_steps \(4 \+ 6\)"):
        load_config(TINY_CONFIG, over + ["train.elbo_steps=6"])


def test_bad_value_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d_model: 30\n  n_heads: 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="d_model"):
        load_config(f)


@pytest.mark.parametrize("text, needle", [
    ("model: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("model: 3\n", "mapping"),
])
def test_malformed_files(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle):
        load_config(f)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(f)


def test_dataclasses_validate_directly():
    with pytest.raises(ConfigError):
        ModelConfig(d_model=10, n_heads=3)
    with pytest.raises(ConfigError):
        TokenizerConfig(kind="bpe", vocab_size=8)
    with pytest.raises(ConfigError):
        WordDropoutConfig(schedule="cosine")
    with pytest.raises(ConfigError):
        DataConfig(min_words=5, max_words=3)


# --------------------------------------------------------------------------- bugs found


def test_bool_from_zero_and_one():
    assert load_config(None, ["train.progress=0"]).train.progress is False
    assert load_config(None, ["train.progress=1"]).train.progress is True


@pytest.mark.parametrize("override", ["train.lr=nan", "train.kl.beta_max=inf", "train.kl.free_bits=nan"])
def test_non_finite_floats_are_rejected(override):
    with pytest.raises(ConfigError):
        load_config(TINY_CONFIG, [override])
