"""Faults and hostile input (textvae/files.py, checkpoint.py's publish protocol, the run lock,
cli.py's stream handling and bounded numbers): every mistake is one line and a non-zero exit,
nothing already written is lost, and a kill at any filesystem step of training leaves a
checkpoint that loads and resumes to the uninterrupted run's weights.

The kill loop over every step is marked slow; the default run kills at the steps of the
publish protocol that matter most (between its two renames, and just before each)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import REPO_ROOT, assert_user_error, file_hashes
from textvae import checkpoint as ckpt
from textvae.files import FAULT_ENV, FAULT_LOG_ENV, FolderLock

A = "And the LORD said unto Moses, Go in unto Pharaoh."
B = "Yahweh said to Moses, Go in to Pharaoh."
KILL_RUN = ["--config", "configs/tiny.yaml", "--set", "train.max_steps=10", "--set", "train.save_every=4",
            "--set", "train.eval_every=0", "--set", "train.log_every=5", "--set", "train.threads=1"]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    for k in (FAULT_ENV, FAULT_LOG_ENV):
        e.pop(k, None)
    e.update(extra)
    return e


def textvae(*args, shell_redirect: str = "", timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess from the repository root (``shell_redirect``: e.g. '>&-')."""
    argv = [sys.executable, "-m", "textvae", *map(str, args)]
    if shell_redirect:
        import shlex

        cmd = " ".join(shlex.quote(a) for a in argv) + " " + shell_redirect
        return subprocess.run(["bash", "-c", cmd], cwd=REPO_ROOT, env=env(**extra_env), capture_output=True,
                              text=True, timeout=timeout)
    return subprocess.run(argv, cwd=REPO_ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"textvae {command}: error: "), proc.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


# --------------------------------------------------------------------------- outputs (defects 1, 2, 4)


def test_output_through_a_symlink_keeps_the_link(run_cli, trained_run, tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old\n", encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, A, "--output", link)
    assert rc == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text(encoding="utf-8").count("\n") == 1 and target.read_text(encoding="utf-8") != "old\n"


def test_output_to_a_fifo_writes_into_it(run_cli, trained_run, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, A, B, "--output", fifo)
    reader.join(30)
    assert rc == 0, err
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the FIFO was replaced by a file"
    assert got and got[0].decode("utf-8").count("\n") == 2


def test_output_to_a_device_node_is_not_replaced(run_cli, trained_run, tmp_path):
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here (needs root)")
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, A, "--output", node)
    assert rc == 0, err
    assert stat.S_ISCHR(node.lstat().st_mode)


def test_output_to_a_full_device_is_one_line(trained_run):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    proc = textvae("reconstruct", "--checkpoint", trained_run, A, "--output", "/dev/full")
    one_line(proc, "reconstruct", "No space left")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_output_that_is_a_folder(run_cli, trained_run, tmp_path):
    (tmp_path / "d").mkdir()
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, A, "--output", tmp_path / "d")
    assert_user_error(rc, err, "reconstruct", "is a folder")
    assert list((tmp_path / "d").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("command", ["reconstruct", "transfer"])
def test_output_equal_to_input_is_refused(run_cli, trained_run, tmp_path, command):
    f = tmp_path / "in.txt"
    f.write_text(A + "\n" + B + "\n", encoding="utf-8")
    before = f.read_bytes()
    extra = ["--from", "kjv", "--to", "web"] if command == "transfer" else []
    for out in (f, tmp_path / "." / "in.txt"):
        rc, _, err = run_cli(command, "--checkpoint", trained_run, "--input", f, "--output", out, *extra)
        assert_user_error(rc, err, command, "is the input file")
    link = tmp_path / "alias.txt"
    link.symlink_to(f)
    rc, _, err = run_cli(command, "--checkpoint", trained_run, "--input", f, "--output", link, *extra)
    assert_user_error(rc, err, command, "is the input file")
    assert f.read_bytes() == before


def test_read_only_file_system_is_one_line(run_cli, trained_run, tmp_path, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rc, _, err = run_cli("reconstruct", "--checkpoint", trained_run, A, "--output", tmp_path / "out.txt")
    assert_user_error(rc, err, "reconstruct", "Read-only file system", str(tmp_path / "out.txt"))
    assert not (tmp_path / "out.txt").exists()


def test_train_out_that_is_a_file(run_cli, in_repo, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me\n", encoding="utf-8")
    rc, _, err = run_cli("train", "--config", "configs/tiny.yaml", "--out", f)
    assert_user_error(rc, err, "train", "is a file")
    assert f.read_text(encoding="utf-8") == "keep me\n"


def test_full_disk_during_a_save_is_one_line_and_keeps_the_checkpoint(run_cli, copy_run, monkeypatch):
    import errno

    run = copy_run()
    before = file_hashes(run / ckpt.CHECKPOINT_DIR)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    rc, _, err = run_cli("train", "--resume", "--out", run, "--set", "train.max_steps=41")
    assert_user_error(rc, err, "train", "No space left", "previous checkpoint is kept")
    assert file_hashes(run / ckpt.CHECKPOINT_DIR) == before
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


# --------------------------------------------------------------------------- streams (defects 4, 5)


def test_closed_stdout_fails(trained_run):
    proc = textvae("reconstruct", "--checkpoint", trained_run, "Jesus wept.", shell_redirect=">&-")
    one_line(proc, "reconstruct", "standard output is closed")


def test_full_stdout_fails(trained_run):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    proc = textvae("sample", "--checkpoint", trained_run, "-n", "3", shell_redirect=">/dev/full")
    one_line(proc, "sample", "No space left")


@pytest.mark.parametrize("command", ["reconstruct", "score", "encode", "transfer", "analogy", "reconstruct -"])
def test_closed_stdin_is_one_line(trained_run, tmp_path, command):
    command, *dash = command.split()
    extra = {"encode": ["--output", tmp_path / "z.npy"], "transfer": ["--from", "kjv", "--to", "web"],
             "analogy": ["--input", "-"]}.get(command, []) + (["--input", "-"] if dash else [])
    proc = textvae(command, "--checkpoint", trained_run, *extra, shell_redirect="<&-")
    one_line(proc, command, "stdin")


# --------------------------------------------------------------------------- bounded numbers (defect 6)


@pytest.mark.parametrize("args,needle", [
    (["sample", "-n", "100000000000"], "-n: must be between 1 and"),
    (["sample", "--seed", "99999999999999999999999"], "--seed: must be between 0 and"),
    (["sample", "--temperature", "nan"], "--temperature: must be a finite number"),
    (["sample", "--top-p", "inf"], "--top-p: must be a finite number"),
    (["interpolate", A, B, "--steps", "100000000000"], "--steps: must be between 2 and 1000"),
    (["transfer", A, "--from", "kjv", "--to", "web", "--candidates", "0"], "--candidates: must be between 1 and"),
    (["transfer", A, "--from", "kjv", "--to", "web", "--alpha", "1e309"], "--alpha: must be a finite number"),
    (["reconstruct", A, "--beam-size", "-3", "--strategy", "beam"], "--beam-size: must be between 1 and"),
    (["evaluate", "--iw-samples", "x"], "--iw-samples: expected an integer"),
])
def test_numbers_are_bounded(run_cli, trained_run, args, needle):
    rc, out, err = run_cli(args[0], "--checkpoint", trained_run, *args[1:])
    assert_user_error(rc, err, args[0], needle)
    assert out == ""


def test_config_json_with_a_huge_max_len_is_refused(run_cli, copy_run):
    run = copy_run()
    f = run / ckpt.CHECKPOINT_DIR / ckpt.CONFIG
    meta = json.loads(f.read_text(encoding="utf-8"))
    meta["config"]["model"]["max_len"] = 1_000_000_000
    f.write_text(json.dumps(meta), encoding="utf-8")
    rc, _, err = run_cli("sample", "--checkpoint", run, "-n", "1")
    assert_user_error(rc, err, "sample", "model.max_len must be at most 16,384")


def test_config_override_bounds(run_cli, in_repo, tmp_path):
    rc, _, err = run_cli("train", "--config", "configs/tiny.yaml", "--out", tmp_path / "r",
                         "--set", "data.batch_size=10000000000")
    assert_user_error(rc, err, "train", "data.batch_size must be at most")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- the run folder (defects 3, 8, 9, 10)


def test_a_second_train_on_a_locked_folder_is_refused(run_cli, copy_run):
    run = copy_run()
    before = (run / "metrics.jsonl").read_bytes()
    with FolderLock(run, "textvae train"):
        rc, _, err = run_cli("train", "--resume", "--out", run, "--set", "train.max_steps=45")
        assert_user_error(rc, err, "train", "in use by another textvae train", f"pid {os.getpid()}")
    assert (run / "metrics.jsonl").read_bytes() == before


def test_a_stale_lock_file_does_not_block(run_cli, copy_run):
    run = copy_run()
    (run / FolderLock.NAME).write_text("999999\n", encoding="utf-8")  # left by a killed run: no flock held
    rc, _, err = run_cli("train", "--resume", "--out", run, "--set", "train.max_steps=42")
    assert rc == 0, err
    assert ckpt.read_meta(run)["step"] == 42


def test_resuming_a_finished_run_changes_nothing(run_cli, copy_run, caplog):
    run = copy_run()
    ck = run / ckpt.CHECKPOINT_DIR
    before, metrics = file_hashes(ck), (run / "metrics.jsonl").read_bytes()
    (run / ".checkpoint.tmp-killed").mkdir()  # what a killed save leaves
    (run / ".checkpoint.tmp-killed" / "model.safetensors").write_bytes(b"x" * 100)
    (run / ".metrics.jsonl.tmp-abc").write_text("partial", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="textvae"):
        rc, _, err = run_cli("train", "--resume", "--out", run)
    assert rc == 0, err
    assert "is finished" in caplog.text
    assert file_hashes(ck) == before and (run / "metrics.jsonl").read_bytes() == metrics
    assert [p.name for p in run.iterdir() if ".tmp-" in p.name] == []


def test_a_checkpoint_set_aside_mid_save_is_found_and_restored(run_cli, copy_run, in_repo):
    """The state a kill between the publish protocol's two renames leaves: no checkpoint/, the
    previous one as .checkpoint.old-PID, the new one complete under .checkpoint.tmp-*."""
    run = copy_run()
    ck = run / ckpt.CHECKPOINT_DIR
    before = file_hashes(ck)
    shutil.copytree(ck, run / ".checkpoint.tmp-new")
    os.replace(ck, run / ".checkpoint.old-12345")
    rc, out, err = run_cli("sample", "--checkpoint", run, "-n", "2")
    assert rc == 0 and out.count("\n") == 2, err
    rc, _, err = run_cli("train", "--config", "configs/tiny.yaml", "--out", run)  # not silently from step 0
    assert_user_error(rc, err, "train", "already holds a checkpoint")
    assert file_hashes(ck) == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]


# --------------------------------------------------------------------------- per-sentence seeds (defect 11)


def test_a_sample_does_not_depend_on_n(run_cli, trained_run):
    rc, one, _ = run_cli("sample", "--checkpoint", trained_run, "--seed", "3", "-n", "1")
    rc2, twenty, _ = run_cli("sample", "--checkpoint", trained_run, "--seed", "3", "-n", "20")
    assert rc == rc2 == 0
    assert twenty.splitlines()[0] == one.splitlines()[0]


def test_closest_transfer_does_not_depend_on_the_batch(run_cli, trained_run):
    opts = ["--from", "kjv", "--to", "web", "--method", "closest", "--candidates", "2", "--samples", "3",
            "--seed", "5"]
    rc, alone, err = run_cli("transfer", "--checkpoint", trained_run, A, *opts)
    assert rc == 0, err
    rc, batch, err = run_cli("transfer", "--checkpoint", trained_run, B, A, "In the beginning.", *opts)
    assert rc == 0, err
    assert batch.splitlines()[1] == alone.splitlines()[0]


# --------------------------------------------------------------------------- kills during training (defect 3)


def fault_steps(run: Path) -> list[str]:
    """The filesystem steps of an uninterrupted tiny run, in order (also trains ``run``)."""
    trace = run.parent / f"{run.name}.steps"
    proc = textvae("train", *KILL_RUN, "--out", run, **{FAULT_LOG_ENV: str(trace)})
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t", 1)[1] for line in trace.read_text(encoding="utf-8").splitlines()]


def weights_sha(run: Path) -> str:
    return hashlib.sha256((run / ckpt.CHECKPOINT_DIR / ckpt.WEIGHTS).read_bytes()).hexdigest()


def kill_and_resume(run: Path, step: int, reference: str) -> None:
    """Kill a fresh run at filesystem step ``step``; a complete checkpoint (if one was ever
    published) must load; then finish it and compare the final weights with ``reference``."""
    proc = textvae("train", *KILL_RUN, "--out", run, **{FAULT_ENV: str(step)})
    assert proc.returncode == -9, (step, proc.returncode, proc.stderr[-500:])
    published = (run / ckpt.CHECKPOINT_DIR).exists() or ckpt.set_aside(run / ckpt.CHECKPOINT_DIR) is not None
    if published:
        ckpt.load_pretrained(run)  # loads, wherever the protocol left it
        proc = textvae("train", *KILL_RUN, "--out", run, "--resume")
    else:
        proc = textvae("train", *KILL_RUN, "--out", run)
    assert proc.returncode == 0, (step, proc.stderr[-800:])
    assert weights_sha(run) == reference, f"kill at step {step}: resumed weights differ"
    leftovers = [p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == [], leftovers


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "reference"
    return fault_steps(run), weights_sha(run)


def test_kills_inside_the_publish_protocol(reference_run, tmp_path):
    steps, reference = reference_run
    # Two cases, run side by side (each is two one-thread training processes, mostly start-up):
    # between setting the old checkpoint aside and renaming the new one in, where only the
    # set-aside copy exists, and inside the first save, where nothing is published yet.
    # test_kills_at_every_filesystem_step (-m slow) kills at each of the run's steps.
    assert "rename checkpoint aside" in steps, steps
    chosen = [max(i for i, s in enumerate(steps) if s == "rename checkpoint aside") + 1,  # the last replacement
              steps.index(f"write {ckpt.CONFIG}") + 1]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(kill_and_resume, tmp_path / f"kill{k}", k, reference) for k in chosen]:
            done.result()


@pytest.mark.slow
def test_kills_at_every_filesystem_step(reference_run, tmp_path):
    steps, reference = reference_run
    for k in range(1, len(steps) + 1):
        kill_and_resume(tmp_path / f"kill{k}", k, reference)
