"""Record what the CLI prints for fixed seeds, to show that a refactor changed no behaviour.

    python scripts/behaviour_snapshot.py --work /tmp/snap --out before.json        # trains, then runs every command
    python scripts/behaviour_snapshot.py --work /tmp/snap --out after.json --reuse  # same checkpoints, new code
    python scripts/behaviour_snapshot.py --compare before.json after.json

Two tiny models are trained (configs/tiny.yaml with a transformer and with a GRU decoder); the
training metrics (timings left out) and a digest of the weights are recorded. Then ``sample``,
``reconstruct``, ``interpolate``, ``transfer`` (every method), ``analogy``, ``score``,
``evaluate --json`` and ``encode`` run on each checkpoint. ``--reuse`` runs the commands on the
checkpoints trained by an earlier call (so inference is compared on the very same weights) and
trains fresh copies next to them (so training is compared too). Everything runs on one CPU
thread; on one machine the same code gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["In the beginning God created the heaven and the earth.", "Jesus wept.",
             "And he said unto them, Go ye into the city."]
VARIANTS = {"transformer": [], "gru": ["--set", "model.decoder.type=gru"]}
TIMING_KEYS = ("tokens_per_s", "elapsed_s")


def textvae(*args: str, stdin: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-m", "textvae", "-q", *args], cwd=ROOT, env=env, input=stdin,
                       capture_output=True, text=True)
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr.strip().splitlines()[-1:] if p.returncode else []}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def train(run: Path, extra: list[str]) -> dict:
    res = textvae("train", "--config", "configs/tiny.yaml", "--out", str(run), "--set", "train.threads=1", *extra)
    metrics = []
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        r = json.loads(line)
        metrics.append({k: v for k, v in r.items() if k not in TIMING_KEYS})
    return {"rc": res["rc"], "metrics": metrics, "weights": digest(run / "checkpoint" / "model.safetensors"),
            "attributes": digest(run / "checkpoint" / "attributes.safetensors")}


def commands(ck: str, work: Path) -> dict:
    out: dict = {}
    out["sample"] = textvae("sample", "--checkpoint", ck, "-n", "5", "--seed", "3")
    out["sample_greedy"] = textvae("sample", "--checkpoint", ck, "-n", "3", "--strategy", "greedy")
    out["sample_beam"] = textvae("sample", "--checkpoint", ck, "-n", "3", "--strategy", "beam", "--beam-size", "3")
    out["reconstruct"] = textvae("reconstruct", "--checkpoint", ck, *SENTENCES)
    out["reconstruct_sample"] = textvae("reconstruct", "--checkpoint", ck, "--strategy", "sample", "--seed", "5",
                                        "--json", *SENTENCES)
    out["interpolate"] = textvae("interpolate", "--checkpoint", ck, SENTENCES[0], SENTENCES[1], "--steps", "4",
                                 "--method", "slerp", "--json")
    for method in ("mean-diff", "project", "search", "closest"):
        for judge in (("latent", "char") if method in ("search", "closest") else ("auto",)):
            out[f"transfer_{method}_{judge}"] = textvae(
                "transfer", "--checkpoint", ck, "--from", "kjv", "--to", "web", "--method", method,
                "--judge", judge, "--samples", "3", "--json", *SENTENCES)
    out["transfer_score"] = textvae("transfer", "--checkpoint", ck, "--from", "kjv", "--to", "web", "--method",
                                    "mean-diff", "--score", *SENTENCES)
    out["analogy"] = textvae("analogy", "--checkpoint", ck, *SENTENCES)
    out["score"] = textvae("score", "--checkpoint", ck, "--iw-samples", "5", "--json", stdin="\n".join(SENTENCES))
    ev = textvae("evaluate", "--checkpoint", ck, "--data", "data/tiny/valid.jsonl", "--iw-samples", "5",
                 "--samples", "10", "--json")
    if ev["rc"] == 0:
        report = json.loads(ev["stdout"])
        report.pop("checkpoint", None)
        ev["stdout"] = json.dumps(report, sort_keys=True)
    out["evaluate"] = ev
    npy = work / f"z-{Path(ck).name}.npy"
    enc = textvae("encode", "--checkpoint", ck, "--output", str(npy), "--logvar", stdin="\n".join(SENTENCES))
    enc["mu"] = digest(npy)
    enc["logvar"] = digest(npy.with_name(npy.stem + ".logvar.npy"))
    out["encode"] = enc
    out["evaluate_transfer"] = textvae("evaluate-transfer", "--checkpoint", ck, "--from", "kjv", "--to", "web",
                                       "--data", "data/tiny/valid.jsonl", "--method", "mean-diff", "--sweep", "1",
                                       "--sweep-methods", "project", "--json")
    if out["evaluate_transfer"]["rc"] == 0:
        report = json.loads(out["evaluate_transfer"]["stdout"])
        report.pop("checkpoint", None)
        out["evaluate_transfer"]["stdout"] = json.dumps(report, sort_keys=True)
    return out


def snapshot(work: Path, reuse: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    for name, extra in VARIANTS.items():
        kept = work / f"ck-{name}"
        if not reuse:
            result[f"train_{name}"] = train(kept, extra)
        else:
            fresh = work / f"fresh-{name}"
            if fresh.exists():
                import shutil

                shutil.rmtree(fresh)
            result[f"train_{name}"] = train(fresh, extra)
        for key, value in commands(str(kept), work).items():
            result[f"{name}:{key}"] = value
        print(f"{name}: done", file=sys.stderr)
    return result


def compare(a: dict, b: dict) -> int:
    same = differ = 0
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            same += 1
        else:
            differ += 1
            print(f"DIFFERENT {key}:\n  before: {json.dumps(a.get(key))[:400]}\n  after:  {json.dumps(b.get(key))[:400]}")
    print(f"{same} identical, {differ} different")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/textvae-snapshot", help="folder for checkpoints and outputs")
    ap.add_argument("--out", help="JSON file to write")
    ap.add_argument("--reuse", action="store_true", help="run the commands on the checkpoints of an earlier call")
    ap.add_argument("--compare", nargs=2, metavar="JSON", help="compare two snapshots and list the differences")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        return compare(a, b)
    result = snapshot(Path(args.work), args.reuse)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    failed = [k for k, v in result.items() if v.get("rc")]
    print(f"{len(result)} records, {len(failed)} with a non-zero exit: {', '.join(failed) or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
