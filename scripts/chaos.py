"""Fault injection against textvae: kills during training, full and read-only disks, a fuzz pass
over the command line, and hostile clients and load against the web demo. Prints figures.

    python scripts/chaos.py                       # everything (about 10 minutes on 2 cores)
    python scripts/chaos.py --only kills --random-kills 10
    python scripts/chaos.py --only fuzz --fuzz 500 --json /tmp/chaos.json

kills: a tiny run (configs/tiny.yaml, 10 steps, a save every 4) is killed with SIGKILL at each
of its filesystem steps in turn (the test hook ``TEXTVAE_FAULT_KILL_AT``) and at random
instants; after each kill a complete checkpoint must load (when one was ever published) and
resuming must reach weights byte-identical to the uninterrupted run's.
disk: training into a 2 MiB tmpfs (a full disk mid-save) and into a read-only bind mount;
needs root and mount(8), skipped otherwise.
fuzz: random arguments and input files (random bytes, huge and empty lines, NaN/inf/huge
numbers, folders, missing files) for every command, in-process; counts clean exits, one-line
refusals, tracebacks (goal 0) and input files changed (goal 0); plus closed and full streams.
demo: malformed bodies, hostile headers, slow and half-open clients, and a load test of 8 and
64 clients on 127.0.0.1 (requests/s, p50/p99 latency, errors, connection resets).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILL_RUN = ["--config", "configs/tiny.yaml", "--set", "train.max_steps=10", "--set", "train.save_every=4",
            "--set", "train.eval_every=0", "--set", "train.log_every=5", "--set", "train.threads=1"]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             OMP_NUM_THREADS="1")
    e.pop("TEXTVAE_FAULT_KILL_AT", None)
    e.pop("TEXTVAE_FAULT_LOG", None)
    e.update(extra)
    return e


def cli(*args: object, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textvae", *map(str, args)], cwd=REPO, env=env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- kills


def kills(work: Path, random_kills: int, seed: int) -> dict:
    from textvae import checkpoint as ckpt

    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    trace = work / "steps.txt"
    t0 = time.perf_counter()
    proc = cli("train", *KILL_RUN, "--out", ref, TEXTVAE_FAULT_LOG=str(trace))
    assert proc.returncode == 0, proc.stderr
    run_s = time.perf_counter() - t0
    steps = trace.read_text(encoding="utf-8").splitlines()
    reference = sha(ref / "checkpoint" / "model.safetensors")
    tried = survived = 0
    failures: list[str] = []

    def check(run: Path, how: str) -> None:
        nonlocal tried, survived
        tried += 1
        try:
            published = (run / "checkpoint").exists() or ckpt.set_aside(run / "checkpoint") is not None
            if published:
                ckpt.load_pretrained(run)
            p = cli("train", *KILL_RUN, "--out", run, *(["--resume"] if published else []))
            ok = (p.returncode == 0 and sha(run / "checkpoint" / "model.safetensors") == reference
                  and not [x for x in run.iterdir() if ".tmp-" in x.name or ".old-" in x.name])
            if ok:
                survived += 1
            else:
                failures.append(f"{how}: rc {p.returncode} {p.stderr.strip().splitlines()[-1:] }")
        except Exception as e:  # noqa: BLE001 - a failure to report, not to raise
            failures.append(f"{how}: {type(e).__name__}: {e}")
        shutil.rmtree(run, ignore_errors=True)

    for k in range(1, len(steps) + 1):
        run = work / f"k{k}"
        p = cli("train", *KILL_RUN, "--out", run, TEXTVAE_FAULT_KILL_AT=str(k))
        if p.returncode != -signal.SIGKILL:
            failures.append(f"step {k}: not killed (rc {p.returncode})")
            continue
        check(run, f"step {k} ({steps[k - 1].split(chr(9))[1]})")
    rng = random.Random(seed)
    for i in range(random_kills):
        run = work / f"r{i}"
        delay = rng.uniform(1.0, run_s)
        child = subprocess.Popen([sys.executable, "-m", "textvae", "train", *KILL_RUN, "--out", str(run)], cwd=REPO,
                                 env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        if run.exists():
            check(run, f"random kill at {delay:.2f} s")
    return {"filesystem_steps": len(steps), "uninterrupted_run_s": round(run_s, 1), "kills_tried": tried,
            "kills_survived": survived, "failures": failures}


# --------------------------------------------------------------------------- disks


def disks(work: Path) -> dict:
    out: dict = {}
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return {"skipped": "needs root and mount(8)"}
    ck = work / "ck"
    if not ck.exists():
        assert cli("train", *KILL_RUN, "--out", ck).returncode == 0
    full = work / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], capture_output=True).returncode:
        out["full_disk"] = "skipped: cannot mount a tmpfs here"
    else:
        try:
            p = cli("train", *KILL_RUN, "--out", full / "run", "--set", "model.d_model=128",
                    "--set", "tokenizer.vocab_size=2000")
            lines = p.stderr.strip().splitlines()
            out["full_disk"] = {"rc": p.returncode, "traceback": "Traceback" in p.stderr,
                                "last_line": lines[-1] if lines else ""}
        finally:
            subprocess.run(["umount", str(full)], capture_output=True)
    ro = work / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], capture_output=True).returncode:
        out["read_only"] = "skipped: cannot mount a read-only file system here"
    else:
        try:
            p = cli("train", *KILL_RUN, "--out", ro / "run")
            q = cli("reconstruct", "--checkpoint", ck, "Jesus wept.", "--output", ro / "x.txt")
            out["read_only"] = {"train_rc": p.returncode, "reconstruct_output_rc": q.returncode,
                                "traceback": "Traceback" in p.stderr + q.stderr,
                                "last_lines": p.stderr.strip().splitlines()[-1:] + q.stderr.strip().splitlines()[-1:]}
        finally:
            subprocess.run(["umount", str(ro)], capture_output=True)
    return out


# --------------------------------------------------------------------------- fuzz


VALID = ["1", "2", "3"]
NUMBERS = ["nan", "inf", "-inf", "1e309", "-1", "0", "99999999999999999999999", "3.5", "", "x", "1e9"]
OPTIONS = {
    "sample": ["-n", "--temperature", "--top-k", "--top-p", "--beam-size", "--max-len", "--seed", "--no-repeat-ngram"],
    "reconstruct": ["--beam-size", "--top-p", "--seed", "--refine-steps", "--no-repeat-ngram"],
    "interpolate": ["--steps", "--seed", "--top-p"],
    "transfer": ["--alpha", "--candidates", "--samples", "--seed"],
    "score": ["--iw-samples", "--seed"],
    "encode": ["--seed", "--refine-steps"],
    "evaluate": ["--iw-samples", "--limit", "--batch-size", "--samples", "--au-threshold", "--max-words"],
    "analogy": ["--seed", "--beam-size"],
}


def _inputs(folder: Path, rng: random.Random) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "random.bin": bytes(rng.randrange(256) for _ in range(2000)),
        "empty.txt": b"",
        "blank.txt": b"\n\n   \n",
        "huge_line.txt": ("word " * 200_000).encode(),
        "latin1.txt": "caf\xe9 au lait\n".encode("latin-1"),
        "nul.txt": b"In the\x00 beginning\n",
        "bad.jsonl": b'{"text": "a b"}\n{"text": \n',
        "nocol.jsonl": b'{"other": "a b"}\n',
        "bad.csv": b"a,b\n1,2,3\n",
        "tabs.txt": b"a\tb\tc\nonly one\n",
        "ok.txt": b"And God said, Let there be light.\nJesus wept.\n",
    }
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    (folder / "a_folder").mkdir(exist_ok=True)
    return paths + [folder / "a_folder", folder / "missing.txt"]


def _run_in_process(argv: list[str]) -> tuple[int, str, bool]:
    from textvae import cli as textvae_cli

    out, err = io.StringIO(), io.StringIO()
    traceback = False
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = textvae_cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            rc, traceback = 1, True
    text = err.getvalue()
    return rc, text, traceback or "Traceback" in text


def fuzz(work: Path, count: int, seed: int) -> dict:
    ck = work / "ck"
    if not ck.exists():
        assert cli("train", *KILL_RUN, "--out", ck).returncode == 0
    rng = random.Random(seed)
    files = _inputs(work / "inputs", rng)
    hashes = {p: sha(p) for p in files if p.is_file()}
    tried = clean = refused = tracebacks = multi_line = 0
    examples: list[str] = []
    commands = list(OPTIONS)
    for i in range(count):
        cmd = rng.choice(commands)
        argv = [cmd, "--checkpoint", str(ck)]
        if cmd in ("reconstruct", "transfer", "score", "encode"):
            argv += ["--input", str(rng.choice(files))]
        if cmd == "interpolate":
            argv += ["a b", rng.choice(["c d", "", " ", "x" * 3000])]
        if cmd == "analogy":
            argv += ["--input", str(rng.choice(files))]
        if cmd == "transfer":
            argv += ["--from", rng.choice(["kjv", "web", "nope"]), "--to", rng.choice(["web", "kjv", ""])]
        if cmd == "encode":
            argv += ["--output", str(work / "out" / rng.choice(["z.npy", "z.parquet", "z.txt", ""]))]
        if cmd == "evaluate":
            argv += ["--data", str(rng.choice(files)), "--samples", "2", "--iw-samples", "2"]
        for opt in rng.sample(OPTIONS[cmd], k=min(2, len(OPTIONS[cmd]))):
            argv += [opt, rng.choice(NUMBERS) if rng.random() < 0.5 else rng.choice(VALID)]
        if cmd in ("reconstruct", "sample", "transfer") and rng.random() < 0.3:
            argv += ["--output", str(rng.choice([work / "out" / "o.txt", files[0], work / "inputs" / "a_folder"]))]
        if cmd == "sample" and "-n" not in argv:
            argv += ["-n", "2"]
        rc, err, tb = _run_in_process(argv)
        tried += 1
        lines = err.strip().splitlines()
        if tb:
            tracebacks += 1
            examples.append(" ".join(argv[:1] + argv[3:])[:200])
        elif rc == 0:
            clean += 1
        elif rc == 2 and lines and lines[-1].startswith("textvae"):
            refused += 1
        else:
            multi_line += 1
            examples.append(f"rc {rc}: " + " ".join(argv[:1] + argv[3:])[:200])
    lost = sum(1 for p, h in hashes.items() if not p.is_file() or sha(p) != h)
    streams = {}
    for name, redirect in (("closed stdout", ">&-"), ("full stdout", ">/dev/full"), ("closed stdin", "<&-"),
                           ("closed stderr and stdout", ">&- 2>&-")):
        cmd = f"{sys.executable} -m textvae reconstruct --checkpoint {ck} {redirect}" if "stdin" in name else \
            f"{sys.executable} -m textvae sample --checkpoint {ck} -n 2 {redirect}"
        p = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
        streams[name] = {"rc": p.returncode, "traceback": "Traceback" in p.stderr,
                         "last_line": (p.stderr.strip().splitlines() or [""])[-1][:160]}
    return {"inputs_tried": tried, "ran_cleanly": clean, "one_line_refusals": refused, "tracebacks": tracebacks,
            "other_failures": multi_line, "input_files_changed": lost, "examples": examples[:10], "streams": streams}


# --------------------------------------------------------------------------- the web demo


def _request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def demo(work: Path, seconds: float) -> dict:
    from textvae.api import TextVAE
    from textvae.serve import IDLE_TIMEOUT, make_server

    ck = work / "ck"
    if not ck.exists():
        assert cli("train", *KILL_RUN, "--out", ck).returncode == 0
    srv = make_server(TextVAE.from_pretrained(ck), "127.0.0.1", 0)
    port = srv.server_address[1]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    result: dict = {}
    try:
        hostile = [
            ("POST", "/api/sample", b"[" * 5000, {}), ("POST", "/api/sample", b'{"n": ' + b"9" * 5000 + b"}", {}),
            ("POST", "/api/interpolate", b'{"a": "\\ud800 abc", "b": "c d"}', {}),
            ("POST", "/api/sample", b'{"n": 1}', {"Content-Type": "text/plain"}),
            ("POST", "/api/sample", b'{"n": 1}', {"Origin": "http://evil.example"}),
            ("GET", "/api/info", None, {"Host": "rebind.example"}), ("PUT", "/api/sample", b"{}", {}),
            ("DELETE", "/", None, {}), ("OPTIONS", "/api/sample", None, {}), ("POST", "/api/sample", b"\xff" * 100, {}),
            ("POST", "/api/sample", b'{"n": 1e309}', {}), ("POST", "/api/sample", b'{"n": NaN}', {}),
            ("POST", "/api/transfer", b'{"text": "x", "source": [], "target": {}}', {}),
            ("GET", "/../../etc/passwd", None, {}), ("POST", "/api/sample", b"x" * 100_000, {}),
        ]
        answered = json_errors = 0
        for method, path, body, headers in hostile:
            try:
                code, raw = _request(port, method, path, body, headers)
            except (OSError, http.client.HTTPException):
                continue
            answered += 1
            try:
                json_errors += int(code >= 400 and "error" in json.loads(raw))
            except ValueError:
                pass
        result["hostile_requests"] = {"sent": len(hostile), "answered": answered, "json_errors": json_errors}
        # half-open clients: connect, send nothing; the server must stay responsive and drop them
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
        t0 = time.perf_counter()
        code, _ = _request(port, "GET", "/api/info", timeout=30)
        responsive = time.perf_counter() - t0
        time.sleep(IDLE_TIMEOUT + 2)
        dropped = refused = 0
        for s in idle:
            s.settimeout(1)
            try:
                first = s.recv(1)
                dropped += int(first == b"")  # held, then closed after the idle timeout
                refused += int(first == b"H")  # over MAX_CONNECTIONS: answered 503 at once
            except ConnectionResetError:
                dropped += 1
            except (socket.timeout, OSError):
                pass
            s.close()
        result["half_open_clients"] = {"opened": 300, "info_status_meanwhile": code,
                                       "info_latency_s": round(responsive, 3), "closed_after_idle_timeout": dropped,
                                       "refused_with_503": refused}
        for clients in (8, 64):
            result[f"load_{clients}_clients"] = _load(port, clients, seconds)
        code, _ = _request(port, "GET", "/api/info")
        result["alive_after"] = code == 200
    finally:
        srv.shutdown()
        srv.server_close()
    return result


def _load(port: int, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = resets = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    body = json.dumps({"n": 1, "seed": 1}).encode()

    def worker(i: int) -> None:
        nonlocal errors, resets
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                path = "/api/info" if i % 2 else "/api/sample"
                code, _ = _request(port, "GET" if i % 2 else "POST", path, None if i % 2 else body, timeout=120)
                ok = code == 200
            except ConnectionResetError:
                with lock:
                    resets += 1
                continue
            except (OSError, http.client.HTTPException):
                ok = False
            with lock:
                latencies.append(time.perf_counter() - t0)
                errors += int(not ok)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else 0.0

    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": q(0.5),
            "p99_ms": q(0.99), "errors": errors, "resets": resets,
            "error_rate": round((errors + resets) / max(1, len(latencies) + resets), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("kills", "disk", "fuzz", "demo"), action="append")
    parser.add_argument("--random-kills", type=int, default=5)
    parser.add_argument("--fuzz", type=int, default=300, help="fuzzed command lines (default 300)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per load-test setting (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    os.chdir(REPO)
    parts = args.only or ["kills", "disk", "fuzz", "demo"]
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="textvae-chaos-") as tmp:
        work = Path(tmp)
        for part in parts:
            t0 = time.perf_counter()
            if part == "kills":
                report[part] = kills(work / "kills", args.random_kills, args.seed)
            elif part == "disk":
                report[part] = disks(work)
            elif part == "fuzz":
                report[part] = fuzz(work, args.fuzz, args.seed)
            else:
                report[part] = demo(work, args.seconds)
            report[part]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"== {part}\n{json.dumps(report[part], indent=2)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
