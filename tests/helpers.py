"""Plain helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from textvae.config import Config, ModelConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"
TINY_DATA = REPO_ROOT / "data" / "tiny"


# --------------------------------------------------------------------------- plain helpers


def tiny_config(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """configs/tiny.yaml with absolute data paths (tests do not depend on the working
    directory), no progress bar, then ``overrides``."""
    base = [
        f"data.train={TINY_DATA / 'train.jsonl'}",
        f"data.valid={TINY_DATA / 'valid.jsonl'}",
        "train.progress=false",
    ]
    return load_config(TINY_CONFIG, base + list(overrides))


def small_model_config(**kw) -> ModelConfig:
    """A small model (d_model 32) for unit tests; two decoder layers so that the per-layer
    z memory and key/value cache are exercised beyond the first layer."""
    args = dict(vocab_size=40, d_model=32, n_heads=2, enc_layers=1, dec_layers=2, dropout=0.0,
                latent_dim=8, max_len=24, z_injection="both", pooling="mean")
    args.update(kw)
    return ModelConfig(**args)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def assert_user_error(rc: int, err: str, command: str, *needles: str) -> str:
    """Exit status 2 and one line 'textvae COMMAND: error: ...' as the last line of stderr, no traceback."""
    assert "Traceback" not in err, err
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"textvae {command}: error: "), err
    for needle in needles:
        assert needle in line, (needle, line)
    return line
