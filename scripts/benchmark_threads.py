"""Training steps per second on an idle CPU and on a busy one, for several thread settings.

    python scripts/benchmark_threads.py                    # default config's model, 20 s per setting
    python scripts/benchmark_threads.py --seconds 10 --busy 1

Each setting runs in a fresh process (OpenMP reads its environment when torch loads): a model
of ``--config``'s architecture trains on random batches of ``--batch`` sentences of ``--tokens``
tokens for ``--seconds``, and the steps per second are printed. "busy" runs the same beside
``--busy`` other processes that each keep one core busy (a pure-Python loop), the situation of a
2-core machine that runs a second job (``--torch-load``: the second job is the same training).
Settings: torch's default thread count with OpenMP's own waiting (what torch does unless told
otherwise), passive waiting, a short spin (``GOMP_SPINCOUNT``; 3,000 is textvae's default,
``textvae/runtime.py``), and one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "torch default (OpenMP's own waiting)": {"threads": 0, "env": {}},
    "OMP_WAIT_POLICY=PASSIVE": {"threads": 0, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "GOMP_SPINCOUNT=300": {"threads": 0, "env": {"GOMP_SPINCOUNT": "300"}},
    "textvae default (GOMP_SPINCOUNT=3000)": {"threads": 0, "env": {"GOMP_SPINCOUNT": "3000"}},
    "one thread": {"threads": 1, "env": {}},
}

WORKER = r"""
import json, sys, time, torch
from textvae.config import load_config
from textvae.losses import elbo_loss
from textvae.model import SentenceVAE
from dataclasses import replace
a = json.loads(sys.argv[1])
if a["threads"]:
    torch.set_num_threads(a["threads"])
torch.manual_seed(0)
cfg = load_config(a["config"])
mc = replace(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
model = SentenceVAE(mc)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
B, T = a["batch"], a["tokens"]
ids = torch.randint(4, mc.vocab_size, (B, T))
mask = torch.ones(B, T, dtype=torch.bool)
steps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < a["seconds"]:
    out = model(ids, mask, ids)
    loss = elbo_loss(out.logits, ids, out.mu, out.logvar, 0, 1.0, 0.0)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    steps += 1
print(json.dumps({"steps_per_s": steps / (time.perf_counter() - t0), "threads": torch.get_num_threads()}))
"""

BUSY = "while True: pass"


def run(setting: dict, args: argparse.Namespace, busy: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(setting["env"])
    task = {"threads": setting["threads"], "config": args.config, "batch": args.batch, "tokens": args.tokens,
            "seconds": args.seconds}
    # the other job: the same training with the same settings (two textvae jobs), or a pure-Python loop
    load = [WORKER, json.dumps({**task, "seconds": 10 * args.seconds})] if args.torch_load else [BUSY]
    loads = [subprocess.Popen([sys.executable, "-c", *load], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
             for _ in range(busy)]
    try:
        time.sleep(3.0 if busy else 0)
        p = subprocess.run([sys.executable, "-c", WORKER, json.dumps(task)], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        for q in loads:
            q.kill()
            q.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--busy", type=int, default=1, help="CPU-bound processes beside the busy runs")
    ap.add_argument("--torch-load", action="store_true",
                    help="the other processes run the same training with the same settings (a second job) instead of "
                         "a pure-Python loop")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; config {args.config}; batch {args.batch} x {args.tokens} tokens; "
          f"{args.seconds:g} s per run; busy = {args.busy} other CPU-bound process(es)")
    print("| setting | threads | idle steps/s | busy steps/s |")
    print("|---|---:|---:|---:|")
    for name, setting in SETTINGS.items():
        idle = run(setting, args, 0)
        busy = run(setting, args, args.busy)
        print(f"| {name} | {idle['threads']} | {idle['steps_per_s']:.2f} | {busy['steps_per_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
