"""textvae.distributed and DDP training under torchrun (gloo on CPU, 2 processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, TINY_DATA, read_jsonl, tiny_config
from textvae import checkpoint as ckpt
from textvae import distributed
from textvae.distributed import DistInfo
from textvae.errors import ConfigError
from textvae.train import train

TIMING = {"tokens_per_s", "elapsed_s"}

# Dropout off and free bits off: then 2 ranks reproduce one process up to float rounding (the
# loop draws word dropout and z noise for the global batch; free bits clamp each rank's KL).
DDP_OVERRIDES = [
    f"data.train={TINY_DATA / 'train.jsonl'}", f"data.valid={TINY_DATA / 'valid.jsonl'}",
    "data.batch_size=16", "train.max_steps=6", "train.log_every=1", "train.eval_every=0", "train.save_every=3",
    "train.kl.free_bits=0", "train.progress=false", "train.threads=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out, *extra: str, overrides=DDP_OVERRIDES, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "textvae", "-q", "train", "--config", str(REPO_ROOT / "configs" / "tiny.yaml"),
           "--out", str(out), *extra]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def train_records(run) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]


# --------------------------------------------------------------------------- plain functions


def test_shard_splits_a_global_batch_evenly():
    batch = list(range(7))
    two = [distributed.shard(batch, DistInfo(r, 2)) for r in range(2)]
    assert two == [[0, 2, 4], [1, 3, 5]]  # cut to 6, strided: similar lengths on each rank
    assert distributed.usable(7, DistInfo(0, 2)) == 6
    assert distributed.shard(batch, DistInfo()) == batch
    three = [distributed.shard(list(range(9)), DistInfo(r, 3)) for r in range(3)]
    assert sorted(sum(three, [])) == list(range(9))


def test_loop_helpers_in_one_and_two_processes():
    """The DDP pieces of the training step: batches cut to the world size, rank rows, no_sync, log reduction."""
    batches = iter([(0, 1, [[1]]), (0, 2, [[1], [2], [3]]), (1, 0, [[4], [5]])])
    two = DistInfo(1, 2)
    assert distributed.next_global_batch(batches, two) == (0, 2, [[1], [2]])  # [[1]] is skipped, 3 cut to 2
    assert distributed.next_global_batch(iter([(0, 1, [[1]])]), DistInfo()) == (0, 1, [[1]])
    noise = torch.arange(6.0).reshape(6, 1)
    assert noise[distributed.rank_rows(two)].flatten().tolist() == [1.0, 3.0, 5.0]
    assert torch.equal(noise[distributed.rank_rows(DistInfo())], noise)

    class FakeDDP:
        def no_sync(self):
            return "no_sync"

    assert distributed.no_sync(FakeDDP(), two, sync=False) == "no_sync"
    assert distributed.no_sync(FakeDDP(), two, sync=True) != "no_sync"
    assert distributed.no_sync(FakeDDP(), DistInfo(), sync=False) != "no_sync"
    means = {"loss": 1.5, "rec": 1.0}
    assert distributed.reduce_log(means, [3, 4], DistInfo(), torch.device("cpu")) == (means, [3, 4])


def test_from_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.from_env() == DistInfo(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4"):
        distributed.from_env()


def test_batch_size_must_divide_by_world_size(monkeypatch, tmp_path, run_cli):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"data.batch_size \(15\) must be divisible by the number of processes \(2\)"):
        train(tiny_config(["data.batch_size=15"]), tmp_path / "run")
    rc, out, err = run_cli("train", "--config", REPO_ROOT / "configs" / "tiny.yaml", "--set", "data.batch_size=15",
                           "--set", f"data.train={TINY_DATA / 'train.jsonl'}", "--out", tmp_path / "run2")
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "divisible by the number of processes (2)" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


# --------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    train(tiny_config(DDP_OVERRIDES), out)
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    res = torchrun(out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_two_ranks_match_one_process(single_run, ddp_run):
    """torchrun with 2 gloo ranks and a global batch of 16 (8 per rank) trains like one
    process with batches of 16: the same logged losses step by step, the same weights."""
    ddp, _ = ddp_run
    rs, rd = train_records(single_run), train_records(ddp)
    assert [r["step"] for r in rd] == list(range(1, 7)), "rank 0 alone writes the metrics, once per step"
    assert set(rs[0]) == set(rd[0])
    for a, b in zip(rs, rd):
        for key in a:
            if key in TIMING:
                continue
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
            else:
                assert a[key] == b[key], (a["step"], key)
    assert rd[-1]["loss"] < rd[0]["loss"]  # it trained
    ws, wd = load_file(str(single_run / "checkpoint" / ckpt.WEIGHTS)), load_file(str(ddp / "checkpoint" / ckpt.WEIGHTS))
    assert ws.keys() == wd.keys()
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-4, atol=1e-5)
    state = ckpt.load_trainer_state(ddp)
    assert len(state["rng_ranks"]) == 2 and state["step"] == 6


def test_only_rank_zero_writes_and_logs(ddp_run):
    out, res = ddp_run
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["checkpoint", "metrics.jsonl"]
    assert "(rank 1)" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_ddp_resume_equals_uninterrupted(ddp_run, tmp_path):
    """Stopped after 4 steps and resumed under torchrun: the same weights as the run that was not stopped."""
    full, _ = ddp_run
    out = tmp_path / "run"
    res = torchrun(out, "--stop-after", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert ckpt.read_meta(out)["step"] == 4
    res = torchrun(out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    wa, wb = load_file(str(full / "checkpoint" / ckpt.WEIGHTS)), load_file(str(out / "checkpoint" / ckpt.WEIGHTS))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [r["step"] for r in train_records(out)] == list(range(1, 7))


@pytest.mark.slow
def test_ddp_streaming_matches_one_process(tmp_path):
    """Streaming data under torchrun: every rank reads the stream and keeps its share of each batch."""
    overrides = DDP_OVERRIDES + ["data.streaming=true", "data.streaming_sample=300", "data.shuffle_buffer=64"]
    single = tmp_path / "single"
    train(tiny_config(overrides), single)
    res = torchrun(tmp_path / "ddp", overrides=overrides)
    assert res.returncode == 0, res.stderr[-3000:]
    rs, rd = train_records(single), train_records(tmp_path / "ddp")
    assert [r["step"] for r in rd] == list(range(1, 7))
    assert [r["loss"] for r in rd] == pytest.approx([r["loss"] for r in rs], rel=1e-5)
