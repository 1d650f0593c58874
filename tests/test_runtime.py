"""CPU threads (textvae/runtime.py): OpenMP's spin is shortened before torch loads; --threads sets the count."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO_ROOT

PROBE = ("import os\nfrom textvae import runtime\nruntime.configure_threads({threads})\nimport torch\n"
         "print(os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())")


def _probe(threads: str = "None", **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(threads=threads)], cwd=REPO_ROOT, env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_the_spin_is_shortened_before_torch_loads():
    from textvae.runtime import SPIN_COUNT

    assert _probe()[0] == SPIN_COUNT


def test_the_environment_wins():
    assert _probe(GOMP_SPINCOUNT="12345")[0] == "12345"
    assert _probe(OMP_WAIT_POLICY="ACTIVE")[0] == "None"  # an explicit policy is not second-guessed


def test_a_thread_count_is_applied():
    assert _probe("1")[1] == "1"


def test_cli_threads_option(run_cli):
    import torch

    before = torch.get_num_threads()
    try:
        rc, _, err = run_cli("--threads", "1", "plot", "no/such/run")  # the count is set before the command runs
        assert rc == 2 and torch.get_num_threads() == 1
        rc, _, err = run_cli("--threads", "-1", "plot", "no/such/run")
        assert rc == 2 and "--threads: must be between 0 and" in err
    finally:
        torch.set_num_threads(before)
