"""Training and decoding speed of textvae, against plain PyTorch references, in one process.

    python scripts/benchmark_speed.py                                   # tiny + transformer on CPU; + gpu on a GPU
    python scripts/benchmark_speed.py --configs configs/gpu_100m.yaml   # the ~100M-parameter model (GPU)
    python scripts/benchmark_speed.py --configs configs/gpu.yaml --set model.d_model=768 --set model.n_heads=12

Training (one line per config x precision x compile): the training step of ``textvae/train.py``
(word dropout, autocast forward, float32 ELBO with free bits, backward with a GradScaler for
fp16, gradient clipping, AdamW) on real length-bucketed batches of the config's training data.
The same step runs a **reference** VAE of the same size built from
``torch.nn.TransformerEncoderLayer`` blocks (pre-LN, GELU; z as a prefix token of the decoder and
added to its inputs), on the same batches; the two alternate in rounds within one process, so a
busy machine slows both alike and the ratio stays fair. Reported: target tokens per second,
peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on a GPU), and on a GPU the MFU:
model FLOP/s (counted by ``torch.utils.flop_counter`` over one step) over the card's bf16 matmul
peak, measured in the same run.

Decoding (one line per config x length): sentences per second of batched greedy decoding to a
fixed length (32 and 64 tokens; eos never stops it), with the key/value cache and with full
recomputation of the prefix every step (``generate.decode(use_cache=False)``), alternating.

Variants (``--variant NAME=KEY=VALUE[,KEY=VALUE...]``, repeatable): instead of the comparison with
the reference, the training step of the first ``--configs`` config as it is ("as configured") and
under each variant's overrides, alternating in rounds on the same batches, so that a machine whose
speed drifts (a shared host) slows every variant alike; one line per variant with its time per
step relative to the config's:

    python scripts/benchmark_speed.py --configs configs/default.yaml --no-decode --rounds 6 \
        --variant embed96=model.embed_dim=96 --variant embed96-ff384=model.embed_dim=96,model.d_ff=384

Writes every figure to ``--json`` (default docs/benchmark_speed.json) with the machine, the
number of threads and the command. Cases that cannot run here (fp16 or the GPU config on a CPU,
torch.compile on a CPU unless ``--compile``) are printed as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from textvae.config import Config, ModelConfig, load_config  # noqa: E402
from textvae.data import BucketBatcher, prepare_split, read_training_texts  # noqa: E402
from textvae.errors import TextVAEError  # noqa: E402
from textvae.generate import decode  # noqa: E402
from textvae.losses import elbo_loss, word_dropout  # noqa: E402
from textvae.model import SentenceVAE, VAEOutput  # noqa: E402
from textvae.tokenizer import build_tokenizer  # noqa: E402
from textvae.train import autocast_context, build_optimizer, resolve_precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the reference


class ReferenceVAE(nn.Module):
    """The same VAE written plainly with torch.nn.TransformerEncoderLayer stacks.

    Same widths, depths, heads, MLP width, vocabulary (tied output embedding) and latent size
    as :class:`textvae.model.SentenceVAE`; z reaches the decoder as a prefix token (the plain
    way to give every layer a z key/value) and added to every input embedding.
    """

    def __init__(self, mc: ModelConfig, pad_id: int):
        super().__init__()
        D, L = mc.d_model, mc.latent_dim
        d_ff = mc.d_ff or 4 * D

        def stack(n: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(D, mc.n_heads, d_ff, mc.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, n, norm=nn.LayerNorm(D), enable_nested_tensor=False)

        self.pad_id = pad_id
        self.tok_emb = nn.Embedding(mc.vocab_size, D)
        self.enc_pos = nn.Embedding(mc.max_len, D)
        self.dec_pos = nn.Embedding(mc.max_len + 1, D)
        self.encoder = stack(mc.enc_layers)
        self.decoder = stack(mc.dec_layers)
        self.to_posterior = nn.Linear(D, 2 * L)
        self.z_prefix = nn.Linear(L, D)
        self.z_embed = nn.Linear(L, D)

    def forward(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_in: torch.Tensor) -> VAEOutput:
        S, T = enc_ids.shape[1], dec_in.shape[1]
        x = self.tok_emb(enc_ids) + self.enc_pos(torch.arange(S, device=enc_ids.device))
        h = self.encoder(x, src_key_padding_mask=~enc_mask)
        m = enc_mask.unsqueeze(-1).to(h.dtype)
        mu, logvar = self.to_posterior((h * m).sum(1) / m.sum(1)).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        y = self.tok_emb(dec_in) + self.z_embed(z).unsqueeze(1)
        y = torch.cat([self.z_prefix(z).unsqueeze(1), y], dim=1) + self.dec_pos(torch.arange(T + 1, device=dec_in.device))
        causal = nn.Transformer.generate_square_subsequent_mask(T + 1, device=dec_in.device, dtype=y.dtype)
        y = self.decoder(y, mask=causal, is_causal=True)
        return VAEOutput(F.linear(y[:, 1:], self.tok_emb.weight), mu, logvar, z)


# --------------------------------------------------------------------------- measuring


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (e.g. VmHWM, VmRSS) in MB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Peak resident set size since the last reset_rss_peak(), in MB (VmHWM)."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    """Current resident set size in MB (VmRSS), 0 where /proc is missing."""
    return _proc_status_mb("VmRSS") or 0.0


def reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_rss_peak()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mb()


def bf16_matmul_peak(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """The card's bf16 dense matmul throughput in FLOP/s: best of 5 timed runs of n x n x n."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.mm(a, b, out=c)
    best = 0.0
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        end.record()
        torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 * iters / (start.elapsed_time(end) / 1e3))
    del a, b, c
    torch.cuda.empty_cache()
    return best


class Trainer:
    """One model, its AdamW and the training step of textvae/train.py."""

    def __init__(self, model: nn.Module, cfg: Config, tok, device: torch.device, precision: str, compiled: bool):
        self.model = model.to(device).train()
        self.cfg = cfg
        self.tok = tok
        self.device = device
        self.precision = precision
        self.fwd = torch.compile(self.model) if compiled else self.model
        self.opt = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.amp = autocast_context(device, precision)
        self.keep = (tok.pad_id, tok.bos_id, tok.eos_id)

    def step(self, b) -> None:
        tc = self.cfg.train
        dec_in = word_dropout(b.dec_in, tc.word_dropout.rate, self.tok.unk_id, self.keep)
        with self.amp:
            out = self.fwd(b.enc_ids, b.enc_mask, dec_in)
        terms = elbo_loss(out.logits, b.targets, out.mu, out.logvar, self.tok.pad_id, tc.kl.beta_max, tc.kl.free_bits)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf"))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        float(norm)  # the loop reads the norm (and the loss terms) back every step

    def flops_per_step(self, b) -> float:
        """Forward + backward FLOPs of one step, counted by torch's FLOP counter (matmuls, attention)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            with self.amp:
                out = self.model(b.enc_ids, b.enc_mask, b.dec_in)
            elbo_loss(out.logits, b.targets, out.mu, out.logvar, self.tok.pad_id, 1.0, 0.0)["loss"].backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- cases


def load_data(cfg: Config, n_batches: int):
    dc = cfg.data
    texts = read_training_texts(dc.train, dc.train_split, dc.text_column, dc.min_words, dc.max_words)
    tok = build_tokenizer(cfg.tokenizer, texts)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tok.vocab_size))
    corpus, _ = prepare_split(dc.train, dc.train_split, tok, cfg.model.max_len, text_column=dc.text_column,
                              min_words=dc.min_words, max_words=dc.max_words, num_proc=dc.num_proc)
    batcher = BucketBatcher([len(x) for x in corpus.ids], dc.batch_size, dc.bucket_size, seed=cfg.train.seed)
    batches = [corpus.batch(idx, tok) for idx in batcher.epoch_batches(0)[:n_batches]]
    return cfg, tok, batches


def bench_training(cfg: Config, tok, batches, device: torch.device, precision: str, compiled: bool,
                   args, peak_flops: float | None) -> dict:
    torch.manual_seed(0)
    before = rss_now_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    models = {"textvae": SentenceVAE(cfg.model, pad_id=tok.pad_id), "reference": ReferenceVAE(cfg.model, tok.pad_id)}
    trainers = {k: Trainer(m, cfg, tok, device, precision, compiled) for k, m in models.items()}
    on_device = [b.to(device) for b in batches]
    tokens_per_round = sum(b.n_tokens for b in batches[: args.steps])
    res: dict = {k: {"params": params(m), "seconds": 0.0, "tokens": 0, "peak_mb": 0.0} for k, m in models.items()}
    for name, tr in trainers.items():  # warm-up (and compilation) outside the timing
        reset_peak(device)
        for b in on_device[: args.warmup]:
            tr.step(b)
        sync(device)
        res[name]["flops_per_token"] = tr.flops_per_step(on_device[0]) / on_device[0].n_tokens
    order = list(trainers)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            tr = trainers[name]
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            for b in on_device[: args.steps]:
                tr.step(b)
            sync(device)
            res[name]["seconds"] += time.perf_counter() - t0
            res[name]["tokens"] += tokens_per_round
            res[name]["peak_mb"] = max(res[name]["peak_mb"], peak_mb(device))
    for name, r in res.items():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["flop_per_s"] = r["tokens_per_s"] * r["flops_per_token"]
        if peak_flops:
            r["mfu"] = r["flop_per_s"] / peak_flops
    del trainers, models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"textvae": res["textvae"], "reference": res["reference"], "memory_before_models_mb": before,
            "ratio": res["textvae"]["tokens_per_s"] / res["reference"]["tokens_per_s"]}


def bench_variants(path: Path, base: list[str], variants: list[str], device: torch.device, args) -> list[dict]:
    """The training step of one config as configured and under each variant's overrides (model and
    train keys; the data and tokenizer stay the config's), alternating in rounds on the same batches."""
    cfg, tok, batches = load_data(load_config(path, base), max(args.steps, args.warmup))
    on_device = [b.to(device) for b in batches]
    arms: dict[str, Config] = {"as configured": cfg}
    for spec in variants:
        name, _, overrides = spec.partition("=")
        if not name or not overrides:
            raise TextVAEError(f"--variant {spec!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
        v = load_config(path, base + overrides.split(","))
        arms[name] = replace(v, model=replace(v.model, vocab_size=tok.vocab_size))
    trainers = {}
    for name, c in arms.items():
        torch.manual_seed(0)
        trainers[name] = Trainer(SentenceVAE(c.model, pad_id=tok.pad_id), c, tok, device, "fp32", False)
        for b in on_device[: args.warmup]:
            trainers[name].step(b)
    seconds = dict.fromkeys(trainers, 0.0)
    order = list(trainers)
    for r in range(args.rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:  # each arm takes every place in turn
            sync(device)
            t0 = time.perf_counter()
            for b in on_device[: args.steps]:
                trainers[name].step(b)
            sync(device)
            seconds[name] += time.perf_counter() - t0
    steps = args.rounds * args.steps
    tokens = args.rounds * sum(b.n_tokens for b in on_device[: args.steps])
    first = seconds["as configured"]
    return [{"variant": name, "overrides": spec, "params": params(trainers[name].model),
             "ms_per_step": 1000 * seconds[name] / steps, "tokens_per_s": tokens / seconds[name],
             "time_vs_config": seconds[name] / first}
            for name, spec in zip(trainers, ["", *[v.partition("=")[2] for v in variants]])]


def bench_decoding(cfg: Config, tok, device: torch.device, length: int, args) -> dict:
    torch.manual_seed(0)
    mc = replace(cfg.model, max_len=max(cfg.model.max_len, length + 1), dropout=0.0)
    model = SentenceVAE(mc, pad_id=tok.pad_id).to(device).eval()
    amp = autocast_context(device, "bf16") if device.type == "cuda" and torch.cuda.is_bf16_supported() else contextlib.nullcontext()
    z = torch.randn(args.decode_batch, mc.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    seconds = {True: 0.0, False: 0.0}

    def run(cached: bool):
        with amp:
            # eos id -1 never comes: every sentence runs to exactly `length` tokens
            return decode(model, z, tok.bos_id, -1, strategy="greedy", max_len=length, use_cache=cached)

    same = run(True).ids == run(False).ids  # warm-up, and the two give the same tokens
    for r in range(args.rounds):
        for cached in (True, False) if r % 2 == 0 else (False, True):
            sync(device)
            t0 = time.perf_counter()
            run(cached)
            sync(device)
            seconds[cached] += time.perf_counter() - t0
    n = args.decode_batch * args.rounds
    cached_sps, full_sps = n / seconds[True], n / seconds[False]
    return {"length": length, "batch": args.decode_batch, "cached_sentences_per_s": cached_sps,
            "uncached_sentences_per_s": full_sps, "speedup": cached_sps / full_sps, "same_tokens": same,
            "precision": "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"}


# --------------------------------------------------------------------------- main


def fmt_train(name: str, precision: str, compiled: bool, r: dict, device: torch.device) -> str:
    t, ref = r["textvae"], r["reference"]
    mem = "peak GPU mem" if device.type == "cuda" else "peak RSS"
    line = (f"train   {name:<9} {precision:<4} {'compile' if compiled else 'eager':<7}  "
            f"textvae {t['tokens_per_s']:>10,.0f} tok/s  reference {ref['tokens_per_s']:>10,.0f} tok/s  "
            f"ratio {r['ratio']:.2f}  {mem} {t['peak_mb']:,.0f} MB (ref {ref['peak_mb']:,.0f} MB; "
            f"{r['memory_before_models_mb']:,.0f} MB before the models)  "
            f"params {t['params'] / 1e6:.2f}M (ref {ref['params'] / 1e6:.2f}M)")
    if "mfu" in t:
        line += f"  MFU {100 * t['mfu']:.1f}% (ref {100 * ref['mfu']:.1f}%)"
    else:
        line += f"  {t['flop_per_s'] / 1e9:.1f} GFLOP/s"
    return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=None,
                    help="config files (default: tiny, transformer, and gpu on a GPU)")
    ap.add_argument("--set", action="append", default=[], help="config override applied to every config")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                    help="also time torch.compile (auto: on a GPU only; inductor on a CPU takes minutes per case)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=8, help="training steps per model per round")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (training and decoding)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="time the first config's training step under these overrides against the config as it is")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'shared machine')")
    ap.add_argument("--json", default=None,
                    help="default docs/benchmark_speed.json (docs/benchmark_speed_variants.json with --variant)")
    args = ap.parse_args()
    if args.json is None:
        args.json = str(REPO / "docs" / ("benchmark_speed_variants.json" if args.variant else "benchmark_speed.json"))

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py: TF32 matmuls for fp32
        torch.backends.cudnn.allow_tf32 = True
    # transformer.yaml: the CPU config with a transformer decoder, the one the reference mirrors
    configs = args.configs or ["configs/tiny.yaml", "configs/transformer.yaml", "configs/gpu.yaml"]
    compile_modes = [False] + ([True] if args.compile == "yes" or (args.compile == "auto" and device.type == "cuda") else [])
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "steps_per_round": args.steps, "rounds": args.rounds, "decode_batch": args.decode_batch, "note": args.note,
    }
    print(f"# {meta['device_name']} ({device}), torch {torch.__version__}, {meta['cpu_threads']} CPU threads"
          + (f"; {args.note}" if args.note else ""), flush=True)
    peak = None
    if device.type == "cuda":
        peak = bf16_matmul_peak(device)
        meta["bf16_matmul_peak_flop_per_s"] = peak
        print(f"# measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s", flush=True)
    results = {"meta": meta, "training": [], "decoding": [], "skipped": []}
    if args.variant:
        path = configs[0]
        try:
            rows = bench_variants(REPO / path if not Path(path).is_absolute() else Path(path), args.set, args.variant,
                                  device, args)
        except TextVAEError as e:
            print(f"benchmark_speed: error: {e}", file=sys.stderr)
            return 2
        for r in rows:
            print(f"variant {r['variant']:<16} {r['ms_per_step']:7.1f} ms/step  {r['tokens_per_s']:>8,.0f} tok/s  "
                  f"x{r['time_vs_config']:.3f} the config's time  params {r['params'] / 1e6:.2f}M  {r['overrides']}",
                  flush=True)
        results["variants"] = {"config": path, "rows": rows}
        configs = []

    def skip(what: str, why: str) -> None:
        print(f"skip    {what}: {why}", flush=True)
        results["skipped"].append({"case": what, "reason": why})

    for path in configs:
        try:
            cfg = load_config(REPO / path if not Path(path).is_absolute() else path, args.set)
        except TextVAEError as e:
            print(f"benchmark_speed: error: {e}", file=sys.stderr)
            return 2
        name = Path(path).stem
        if device.type == "cpu" and name.startswith("gpu"):
            skip(name, "a GPU config: not run on a CPU")
            continue
        cfg, tok, batches = load_data(cfg, max(args.steps, args.warmup))
        for precision in args.precisions:
            try:
                resolve_precision(precision, device)
            except TextVAEError as e:
                skip(f"{name} {precision}", str(e))
                continue
            for compiled in compile_modes:
                r = bench_training(cfg, tok, batches, device, precision, compiled, args, peak)
                results["training"].append({"config": name, "precision": precision, "compile": compiled, **r})
                print(fmt_train(name, precision, compiled, r, device), flush=True)
        if device.type == "cpu" and not any(compile_modes[1:]):
            skip(f"{name} torch.compile", "not timed on a CPU unless --compile yes")
        if not args.no_decode:
            for length in args.lengths:
                d = bench_decoding(cfg, tok, device, length, args)
                results["decoding"].append({"config": name, **d})
                print(f"decode  {name:<9} len {length:<3} batch {d['batch']}  cached {d['cached_sentences_per_s']:>9,.1f} sent/s  "
                      f"uncached {d['uncached_sentences_per_s']:>9,.1f} sent/s  speed-up {d['speedup']:.1f}x"
                      f"{'' if d['same_tokens'] else '  (TOKENS DIFFER)'}", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"# wrote {out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


if __name__ == "__main__":
    sys.exit(main())
