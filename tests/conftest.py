"""Shared fixtures for the textvae test suite.

Everything runs offline on the CPU. The environment is set up at import time, before any
test module imports ``datasets`` (which reads its cache location once, on import).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
_HF_CACHE = tempfile.mkdtemp(prefix="textvae-tests-hf-")
os.environ["HF_DATASETS_CACHE"] = _HF_CACHE

# One thread: the test models are tiny, so a second thread buys little, and when another
# process keeps a core busy two spinning OpenMP threads slow torch down many times over
# (seen here: the suite took 10 minutes instead of 50 s). TEXTVAE_TEST_THREADS overrides it.
THREADS = int(os.environ.get("TEXTVAE_TEST_THREADS", "1"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)

from textvae.config import Config  # noqa: E402

from helpers import REPO_ROOT, TINY_DATA, tiny_config  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HF_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def make_config():
    """Factory: ``make_config(["train.max_steps=5", ...])`` -> the tiny Config with overrides."""
    return tiny_config


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return [line.strip() for line in (TINY_DATA / "train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained on data/tiny (40 steps), shared by several test modules.

    Read-only: a test that damages or extends it works on a copy (see ``copy_run``)."""
    from textvae.train import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    train(tiny_config(["train.max_steps=40", "train.log_every=5", "train.eval_every=0", "train.save_every=0"]), out)
    return out


@pytest.fixture(scope="session")
def trained(trained_run):
    """The shared run loaded with load_pretrained (model in eval mode; do not modify it)."""
    from textvae.checkpoint import load_pretrained

    return load_pretrained(trained_run)


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """A private copy of the shared run folder."""

    def _copy(name: str = "run") -> Path:
        dst = tmp_path / name
        shutil.copytree(trained_run, dst)
        return dst

    return _copy


@pytest.fixture
def run_cli(capsys):
    """Run ``textvae.cli.main(argv)`` in-process. Returns (exit code, stdout, stderr).

    An exception that escapes main() is what a user would see as a traceback: it is turned
    into exit code 1 and the formatted traceback on stderr, so tests can assert on it."""
    from textvae import cli

    def _run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        err_extra = ""
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors and --version
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - an uncaught error is a traceback for the user
            rc, err_extra = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return rc, out, err + err_extra

    return _run
