"""Seeing what a model learned: training curves, latent maps and a one-file HTML run report.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure`` rendered by the
Agg canvas), never ``pyplot``: no display, no global figure state, safe in a server thread.
matplotlib is an optional dependency (``pip install 'textvae[viz]'``).

Every file is written through :func:`textvae.files.atomic_write`, so a killed command leaves
the previous plot or report intact.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from textvae.errors import DataError, InputError, TextVAEError
from textvae.files import atomic_write

log = logging.getLogger("textvae")

COLLAPSE_KL = 0.1
"""A train KL (nats per sentence) below this counts towards posterior collapse."""
COLLAPSE_STEPS = 100
"""...when it stays there for at least this many optimiser steps."""
CURVES = ("rec", "kl", "beta_kl", "beta", "active_units", "neg_elbo")
"""The per-quantity PNGs ``textvae plot`` writes (``<name>.png``), besides ``curves.png``."""
MAP_LIMIT = 3000
"""Sentences a latent map encodes by default (a seeded random subset of larger files)."""


# --------------------------------------------------------------------------- figures


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 3.6)):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TextVAEError("plots need matplotlib: pip install 'textvae[viz]'") from None
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def png_bytes(fig) -> bytes:
    """The figure rendered as PNG bytes (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- training curves


@dataclass
class RunMetrics:
    """The records of a run's ``metrics.jsonl``, split by kind."""

    train: list[dict[str, Any]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0

    def series(self, split: str, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key`` in the ``split`` records that have a finite value for it."""
        steps, values = [], []
        for r in self.train if split == "train" else self.valid:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                steps.append(int(r["step"]))
                values.append(float(v))
        return steps, values

    def beta_kl(self) -> tuple[list[int], list[float]]:
        """beta times the KL term as optimised (free bits applied): the KL part of the loss."""
        steps, values = [], []
        for r in self.train:
            b, k = r.get("beta"), r.get("kl_objective", r.get("kl"))
            if isinstance(b, (int, float)) and isinstance(k, (int, float)) and math.isfinite(b * k):
                steps.append(int(r["step"]))
                values.append(float(b) * float(k))
        return steps, values


def read_metrics(run_dir: str | Path) -> RunMetrics:
    """Parse ``RUN_DIR/metrics.jsonl`` (or a metrics file given directly).

    Lines that are not JSON objects with a step (e.g. one cut short when a run was killed) are
    skipped and counted. A missing or recordless file is a :class:`DataError`.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"no metrics file: {path} (give a run folder written by `textvae train`)")
    out = RunMetrics()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            out.bad_lines += 1
            continue
        if not isinstance(r, dict) or not isinstance(r.get("step"), int):
            out.bad_lines += 1
            continue
        (out.valid if r.get("split") == "valid" else out.train).append(r)
    if not out.train and not out.valid:
        raise DataError(f"{path} holds no metric records")
    if out.bad_lines:
        log.warning("%s: skipped %d unreadable lines", path, out.bad_lines)
    return out


def collapse_spans(steps: Sequence[int], kl: Sequence[float], threshold: float = COLLAPSE_KL,
                   min_steps: int = COLLAPSE_STEPS) -> list[tuple[int, int]]:
    """Stretches of training where the KL stayed below ``threshold`` for at least ``min_steps`` steps.

    Args:
        steps: increasing step numbers of the logged records.
        kl: the KL logged at each of them (nats per sentence).
    Returns:
        (first step, last step) of each maximal run of consecutive records under the
        threshold whose steps span at least ``min_steps`` (a lone record spans 0 steps, so it
        counts only with ``min_steps`` 0).
    """
    spans: list[tuple[int, int]] = []
    start: Optional[int] = None
    last = 0
    for s, v in zip(steps, kl):
        if v < threshold:
            if start is None:
                start = s
            last = s
        else:
            if start is not None and last - start >= min_steps:
                spans.append((start, last))
            start = None
    if start is not None and last - start >= min_steps:
        spans.append((start, last))
    return spans


def _draw_curve(ax, name: str, m: RunMetrics, spans: list[tuple[int, int]], threshold: float,
                latent_dim: Optional[int]) -> None:
    """One quantity against step on ``ax``, with collapse stretches shaded."""
    title = {"rec": "reconstruction NLL (nats/sentence)", "kl": "KL(q(z|x) || p(z)) (nats/sentence)",
             "beta_kl": "beta · KL term (free bits applied)", "beta": "beta (KL weight)",
             "active_units": "active units (validation)", "neg_elbo": "validation −ELBO (nats/sentence)"}[name]
    lines = []
    if name in ("rec", "kl"):
        lines = [("train", *m.series("train", name), "-"), ("valid", *m.series("valid", name), "o-")]
    elif name == "beta_kl":
        lines = [("train", *m.beta_kl(), "-")]
    elif name == "beta":
        lines = [("train", *m.series("train", "beta"), "-")]
    elif name == "active_units":
        lines = [("valid", *m.series("valid", "active_units"), "o-")]
    else:
        lines = [("valid", *m.series("valid", "neg_elbo"), "o-")]
    drawn = False
    for label, xs, ys, style in lines:
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=4, linewidth=1.4)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not in this run's log", ha="center", va="center", transform=ax.transAxes, color="gray")
    for i, (a, b) in enumerate(spans):
        ax.axvspan(a, b, color="tab:red", alpha=0.15, label="collapse" if i == 0 else None)
    if name == "kl":
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=0.8, label=f"collapse threshold {threshold:g}")
    if name == "active_units" and latent_dim:
        ax.set_ylim(-0.5, latent_dim + 0.5)
        ax.axhline(latent_dim, color="gray", linestyle=":", linewidth=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if drawn or spans:
        ax.legend(fontsize=8, loc="best")


def curve_figures(m: RunMetrics, threshold: float = COLLAPSE_KL, min_steps: int = COLLAPSE_STEPS,
                  latent_dim: Optional[int] = None, names: Sequence[str] = (*CURVES, "curves")
                  ) -> tuple[dict[str, bytes], list[tuple[int, int]]]:
    """PNG bytes of each curve in :data:`CURVES` and of all of them on one sheet ('curves').

    Args:
        names: the figures to draw (default: all).
    Returns:
        ({name: png bytes}, collapse spans found in the train KL).
    """
    spans = collapse_spans(*m.series("train", "kl"), threshold=threshold, min_steps=min_steps)
    pngs = {}
    for name in CURVES:
        if name not in names:
            continue
        fig, (ax,) = _figure()
        _draw_curve(ax, name, m, spans, threshold, latent_dim)
        pngs[name] = png_bytes(fig)
    if "curves" not in names:
        return pngs, spans
    fig, axes = _figure(2, 3, size=(5.0, 3.4))
    for ax, name in zip(axes, CURVES):
        _draw_curve(ax, name, m, spans, threshold, latent_dim)
    note = (f"collapse (KL < {threshold:g} for ≥ {min_steps} steps): "
            + (", ".join(f"steps {a}–{b}" for a, b in spans) if spans else "none"))
    fig.suptitle(note, fontsize=10, color="tab:red" if spans else "black")
    pngs["curves"] = png_bytes(fig)
    return pngs, spans


def _latent_dim_of(run_dir: Path) -> Optional[int]:
    try:
        from textvae import checkpoint as ckpt

        return int(ckpt.read_meta(run_dir)["config"]["model"]["latent_dim"])
    except Exception:  # no or foreign checkpoint: the plot just has no upper line
        return None


def plot_run(run_dir: str | Path, out_dir: Optional[str | Path] = None, threshold: float = COLLAPSE_KL,
             min_steps: int = COLLAPSE_STEPS) -> tuple[list[Path], list[tuple[int, int]]]:
    """Write ``<name>.png`` for each of :data:`CURVES` and ``curves.png`` (all in one) for a run.

    Args:
        run_dir: a run folder holding ``metrics.jsonl``.
        out_dir: where the PNGs go (default ``run_dir/plots``).
        threshold, min_steps: collapse is a train KL under ``threshold`` for ``min_steps`` steps.
    Returns:
        (the files written, the collapse spans).
    """
    if threshold < 0 or min_steps < 0:
        raise InputError("the collapse threshold and step count must be >= 0")
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    pngs, spans = curve_figures(m, threshold, min_steps, _latent_dim_of(run_dir) if run_dir.is_dir() else None)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    return [atomic_write(out / f"{name}.png", data) for name, data in pngs.items()], spans


# --------------------------------------------------------------------------- latent map


@dataclass
class LatentMap:
    """A 2-D projection of posterior means and what it was made from."""

    points: Any  # (N, 2) numpy array
    labels: Optional[list[str]]
    label_names: list[str]
    projection: str
    axis_names: tuple[str, str]
    label_means: Any = None  # (K, 2) projected per-label means
    kept_share: Optional[float] = None  # |projected mean difference| / |mean difference|, first two labels


def project(mu, labels: Optional[Sequence[str]] = None, method: str = "pca") -> LatentMap:
    """Project posterior means to 2-D.

    Args:
        mu: (N, L) tensor of posterior means.
        labels: N label strings or None.
        method: 'pca' (the two directions of largest variance) or 'axis' (x: the unit
            direction from the first label's mean to the second's; y: the direction of
            largest variance of what is left; needs two labels).
    """
    import torch

    mu = mu.detach().double().cpu()
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise InputError("a latent map needs at least 2 sentences")
    names = sorted(set(labels)) if labels is not None else []
    centre = mu.mean(0)
    x = mu - centre
    means = None
    if names:
        lab = torch.tensor([names.index(v) for v in labels])
        means = torch.stack([mu[lab == k].mean(0) for k in range(len(names))])  # (K, L)
    if method == "pca":
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        basis = vh[:2]
        if basis.shape[0] < 2:  # latent_dim 1: a zero second axis
            basis = torch.cat([basis, torch.zeros_like(basis)])
        var = s ** 2
        share = (var[:2] / var.sum().clamp_min(1e-12)).tolist() + [0.0]
        axis_names = (f"PC1 ({100 * share[0]:.0f}% of variance)", f"PC2 ({100 * share[1]:.0f}% of variance)")
    elif method == "axis":
        if len(names) < 2:
            raise InputError("the 'axis' projection needs labelled data with at least two labels")
        u = means[1] - means[0]
        if float(u.norm()) < 1e-12:
            raise InputError("the two label means coincide: no attribute direction to project on")
        u = u / u.norm()
        rest = x - (x @ u)[:, None] * u
        _, _, vh = torch.linalg.svd(rest, full_matrices=False)
        basis = torch.stack([u, vh[0]])
        axis_names = (f"attribute direction ({names[0]} → {names[1]})", "largest remaining variance")
    else:
        raise InputError(f"unknown projection {method!r}; use pca or axis")
    pts = (x @ basis.T).numpy()
    out = LatentMap(pts, list(labels) if labels is not None else None, names, method, axis_names)
    if means is not None:
        out.label_means = ((means - centre) @ basis.T).numpy()
        if len(names) >= 2:
            delta = means[1] - means[0]
            out.kept_share = float((delta @ basis.T).norm() / delta.norm().clamp_min(1e-12))
    return out


def map_figure(m: LatentMap, title: str = "") -> bytes:
    """The latent map as PNG bytes: one colour per label, the label means as crosses and
    the attribute direction (first label's mean → each other label's) as arrows."""
    fig, (ax,) = _figure(size=(7.0, 6.0))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan"]
    alpha = 0.5 if len(m.points) < 1000 else 0.25
    if m.labels is None:
        ax.scatter(m.points[:, 0], m.points[:, 1], s=6, alpha=alpha, color="tab:blue", linewidths=0, label="sentences")
    else:
        for k, name in enumerate(m.label_names):
            idx = [i for i, v in enumerate(m.labels) if v == name]
            ax.scatter(m.points[idx, 0], m.points[idx, 1], s=6, alpha=alpha, color=palette[k % len(palette)],
                       linewidths=0, label=f"{name} ({len(idx)})")
        for k, name in enumerate(m.label_names):
            ax.plot(*m.label_means[k], marker="X", markersize=9, color=palette[k % len(palette)],
                    markeredgecolor="black", zorder=4)
        for k in range(1, len(m.label_names)):
            (x0, y0), (x1, y1) = m.label_means[0], m.label_means[k]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="-|>", color="black", linewidth=2, mutation_scale=18), zorder=5)
        if m.kept_share is not None:
            ax.plot([], [], color="black", linewidth=2,
                    label=f"attribute direction {m.label_names[0]} → {m.label_names[1]} "
                          f"({100 * m.kept_share:.0f}% of its length in this plane)")
    ax.set_xlabel(m.axis_names[0])
    ax.set_ylabel(m.axis_names[1])
    ax.set_title(title or f"posterior means, {m.projection.upper() if m.projection == 'pca' else m.projection} projection",
                 fontsize=10)
    ax.grid(alpha=0.3)
    leg = ax.legend(fontsize=8, loc="best", markerscale=2)
    for h in leg.legend_handles:
        if hasattr(h, "set_alpha"):
            h.set_alpha(1)
    return png_bytes(fig)


def load_labelled(source: str, vae, text_column: Optional[str] = None, label_column: Optional[str] = None,
                  limit: int = MAP_LIMIT, seed: int = 0) -> tuple[list[str], Optional[list[str]], Optional[str]]:
    """Cleaned sentences (and labels) of a data file, with the checkpoint's word filters.

    ``label_column``: a column name, 'none' for no labels, or None for the checkpoint's label
    column when the file has it. ``limit``: keep a seeded random subset of that many (0: all).
    Returns (texts, labels or None, the label column used).
    """
    from textvae.data import load_texts, read_labelled

    dc = vae.config.data
    text_column = text_column or dc.text_column
    label_column = _map_label_column(source, vae, text_column, label_column)
    if label_column:
        rows = read_labelled(source, text_column, label_column, "train", dc.min_words, dc.max_words,
                             require_labels=True)
        if not rows:
            raise DataError(f"{source}: no sentences left after cleaning")
        log.info("%s: %d labelled sentences", source, len(rows))
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    else:
        texts = load_texts(source, "train", text_column, dc.min_words, dc.max_words, report=True)
        labels = None
    if limit and len(texts) > limit:
        keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
    return texts, labels, label_column


def _map_label_column(source: str, vae, text_column: str, label_column: Optional[str]) -> Optional[str]:
    """The label column :func:`load_labelled` reads: None for 'none'; by default the checkpoint's,
    or None with a warning when ``source`` lacks it (a column named explicitly must exist)."""
    from textvae.data import load_split

    if label_column is not None:
        return None if label_column.lower() == "none" else label_column
    label_column = vae.meta.get("label_column") or vae.config.data.label_column
    if label_column and label_column not in load_split(source, "train", text_column).column_names:
        log.warning("%s has no %r column: the map is drawn without labels", source, label_column)
        return None
    return label_column


def latent_map(vae, texts: Sequence[str], labels: Optional[Sequence[str]] = None, method: str = "pca",
               title: str = "") -> tuple[bytes, LatentMap]:
    """Encode ``texts`` to posterior means, project them and draw the map. Returns (PNG bytes, map).
    A label-conditional model colours unlabelled texts by the label its classifier q(y|x) predicts."""
    texts = list(texts)
    if labels is None and getattr(vae, "conditional", False):
        labels = [r["label"] for r in vae.classify(texts)]
        title = f"{title}, coloured by predicted label" if title else "coloured by predicted label"
        from textvae.data import check_sentences

        mu, _ = vae.encode_texts(check_sentences(texts), labels=labels)  # q(y|x) already run: not again
    else:
        mu, _ = vae.encode(texts)
    m = project(mu, labels, method)
    return map_figure(m, title), m


def write_map(vae, data: Optional[str] = None, text_column: Optional[str] = None, label_column: Optional[str] = None,
              projection: str = "pca", limit: Optional[int] = MAP_LIMIT, seed: int = 0,
              output: Optional[str | Path] = None) -> tuple[Path, LatentMap]:
    """``textvae map``: draw the latent map of a data file and write it as a PNG.

    Args:
        data: the data file (default: the checkpoint config's validation file, else its training file).
        text_column, label_column, limit, seed: as for :func:`load_labelled` (limit None: :data:`MAP_LIMIT`).
        projection: 'pca' or 'axis' (see :func:`project`).
        output: the PNG (default ``RUN_DIR/plots/map.png``, RUN_DIR holding the checkpoint).
    Returns:
        (the file written, the map).
    """
    if limit is not None and limit < 0:
        raise InputError("--limit must be >= 0")
    data = data or vae.config.data.valid or vae.config.data.train
    texts, labels, column = load_labelled(data, vae, text_column, label_column,
                                          limit=MAP_LIMIT if limit is None else limit, seed=seed)
    if projection == "axis" and not getattr(vae, "conditional", False) and (labels is None or len(set(labels)) < 2):
        raise InputError("--projection axis needs labelled data with at least two labels (--label-column COL)")
    png, m = latent_map(vae, texts, labels, projection,
                        title=f"{Path(data).name}: posterior means of {len(texts)} sentences"
                              + (f", coloured by {column}" if column else ""))
    run_dir = vae.path.parent if vae.path.name == "checkpoint" else vae.path
    out = Path(output) if output else run_dir / "plots" / "map.png"
    return atomic_write(out, png), m


# --------------------------------------------------------------------------- run report


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.92em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.note{color:#666;font-size:.9em}.warn{color:#b00}ol li,ul li{margin:.15em 0}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _list(items: Sequence[str], ordered: bool = False) -> str:
    tag = "ol" if ordered else "ul"
    return f"<{tag}>" + "".join(f"<li>{html.escape(x) if x else '<i>(empty)</i>'}</li>" for x in items) + f"</{tag}>"


def _eval_table(r: dict[str, Any]) -> str:
    """The figures of ``textvae evaluate --json`` as an HTML table (the text table's rows)."""
    from textvae.evaluate import format_report

    try:
        text = format_report(r)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"the evaluation JSON lacks a figure ({e}); write it with `textvae evaluate --json`") from None
    rows = []
    for line in text.splitlines():
        if line.startswith("BLEU signature"):
            rows.append(f'<tr><td colspan="3" class="note">{html.escape(line)}</td></tr>')
            continue
        parts = [p for p in line.split("  ") if p.strip()]
        name, value, conv = (parts + ["", "", ""])[:3] if len(parts) < 3 else (parts[0], parts[1], "  ".join(parts[2:]))
        rows.append(f"<tr><td>{html.escape(name.strip())}</td><td class='num'>{html.escape(value.strip())}</td>"
                    f"<td class='note'>{html.escape(conv.strip())}</td></tr>")
    return "<table><tr><th>figure</th><th>value</th><th>convention</th></tr>" + "".join(rows) + "</table>"


def _read_eval(path: Path) -> dict[str, Any]:
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the evaluation file {path}: {e}") from None
    if not isinstance(r, dict):
        raise DataError(f"{path} is not an evaluation report (a JSON object from `textvae evaluate --json`)")
    return r


def build_report(run_dir: str | Path, checkpoint: Optional[str | Path] = None, output: Optional[str | Path] = None,
                 evaluation: Optional[str | Path] = None, samples: int = 8, seed: int = 0,
                 interpolate: Optional[tuple[str, str]] = None, transfers: int = 3, map_limit: int = 1000,
                 device: str = "cpu", threshold: float = COLLAPSE_KL, min_steps: int = COLLAPSE_STEPS) -> Path:
    """Write one self-contained HTML report of a run (images embedded as data URIs).

    Args:
        run_dir: the run folder (``metrics.jsonl``; ``checkpoint/`` unless ``checkpoint`` is given).
        checkpoint: the model to show samples, an interpolation and transfers of.
        output: the HTML file (default ``run_dir/report.html``).
        evaluation: a ``textvae evaluate --json`` file (default ``run_dir/evaluation.json`` when present).
        samples: prior samples to show.
        interpolate: the two endpoint sentences (default: two sentences of the validation data).
        transfers: example transfers per direction between the first two labels.
        map_limit: validation sentences in the latent map (0: no map).
    Returns:
        the report file.
    """
    run_dir = Path(run_dir)
    metrics, vae = _report_inputs(run_dir, checkpoint, device, samples, transfers, map_limit)
    sections = [_config_section(vae), _curves_section(metrics, vae, threshold, min_steps),
                _evaluation_section(run_dir, evaluation), _samples_section(vae, samples, seed)]
    examples = _report_examples(vae, max(map_limit, 200), seed)
    sections += [_interpolation_section(vae, interpolate, examples.texts),
                 _transfers_section(vae, examples, transfers), _map_section(vae, examples, map_limit)]
    out = Path(output) if output else run_dir / "report.html"
    return atomic_write(out, _page(run_dir, sections))


@dataclass
class _Examples:
    """Validation sentences a report shows: interpolation endpoints, transfer inputs, the map."""

    source: str
    texts: list[str] = field(default_factory=list)
    labels: Optional[list[str]] = None


def _report_inputs(run_dir: Path, checkpoint: Optional[str | Path], device: str, samples: int, transfers: int,
                   map_limit: int):
    """The run's metrics and its model (a :class:`textvae.api.TextVAE`), after checking the arguments."""
    from textvae.api import TextVAE

    if not run_dir.is_dir():
        raise DataError(f"run folder not found: {run_dir}")
    if samples < 0 or transfers < 0 or map_limit < 0:
        raise InputError("--samples, --transfers and --map-limit must be >= 0")
    metrics = read_metrics(run_dir)
    vae = TextVAE.from_pretrained(Path(checkpoint) if checkpoint else run_dir, device=device)
    if vae.model.is_lm:
        raise InputError("this checkpoint is a language model (latent_dim 0): it has no latent space to report on")
    return metrics, vae


def _config_section(vae) -> str:
    meta = vae.meta
    return ("<h2>Resolved config</h2>"
            f"<p class='note'>checkpoint <code>{html.escape(str(vae.path))}</code>, step {meta.get('step', '?')}"
            f"{'' if meta.get('final', True) else ' (not final)'}; {vae.model.num_parameters() / 1e6:.2f}M parameters; "
            f"labels: {html.escape(', '.join(meta.get('label_names') or []) or 'none')}</p>"
            f"<pre>{html.escape(json.dumps(vae.config.to_dict(), indent=2))}</pre>")


def _curves_section(metrics: RunMetrics, vae, threshold: float, min_steps: int) -> str:
    pngs, spans = curve_figures(metrics, threshold, min_steps, vae.latent_dim, names=("curves",))
    last_valid = metrics.valid[-1] if metrics.valid else None
    summary = (f"{len(metrics.train)} train and {len(metrics.valid)} validation records; "
               + (f"last validation (step {last_valid['step']}): −ELBO {last_valid.get('neg_elbo', float('nan')):.2f}, "
                  f"KL {last_valid.get('kl', float('nan')):.2f}, active units {last_valid.get('active_units', '?')}"
                  f"/{vae.latent_dim}. " if last_valid else "no validation records. ")
               + (f"<span class='warn'>Posterior collapse: train KL under {threshold:g} for "
                  + ", ".join(f"steps {a}–{b}" for a, b in spans) + "</span>" if spans
                  else f"No posterior collapse (train KL never under {threshold:g} for {min_steps} steps)."))
    return f"<h2>Training curves</h2><p>{summary}</p>{_img(pngs['curves'], 'training curves')}"


def _evaluation_section(run_dir: Path, evaluation: Optional[str | Path]) -> str:
    eval_path = Path(evaluation) if evaluation else run_dir / "evaluation.json"
    if not (evaluation or eval_path.is_file()):
        return ("<h2>Evaluation</h2><p class='note'>no evaluation in this run folder; write one with "
                f"<code>textvae evaluate --checkpoint {html.escape(str(run_dir))} --json &gt; "
                f"{html.escape(str(run_dir / 'evaluation.json'))}</code></p>")
    r = _read_eval(eval_path)
    return (f"<h2>Evaluation</h2><p class='note'>from <code>{html.escape(str(eval_path))}</code>, data "
            f"<code>{html.escape(str(r.get('data', {}).get('source', '?')))}</code></p>{_eval_table(r)}")


def _samples_section(vae, samples: int, seed: int) -> str:
    if not samples:
        return ""
    texts = vae.sample(samples, seed=seed)
    return (f"<h2>Prior samples</h2><p class='note'>z ~ N(0, I), nucleus sampling top-p 0.9, seed {seed}</p>"
            + _list(texts, ordered=True))


def _report_examples(vae, limit: int, seed: int) -> _Examples:
    """Up to ``limit`` sentences (and labels) of the checkpoint's validation data (else its
    training data); none, with a warning, when they cannot be read."""
    ex = _Examples(vae.config.data.valid or vae.config.data.train)
    try:
        ex.texts, ex.labels, _ = load_labelled(ex.source, vae, limit=limit, seed=seed)
    except TextVAEError as e:
        log.warning("report: no examples from %s (%s)", ex.source, e)
    return ex


def _interpolation_section(vae, interpolate: Optional[tuple[str, str]], texts: list[str]) -> str:
    """The slerp path between the given sentences, or by default the first example and one of
    another length."""
    if interpolate is None and len(texts) >= 2:
        a = texts[0]
        b = next((t for t in texts[1:] if len(t.split()) != len(a.split()) and t != a), texts[-1])
        interpolate = (a, b)
    if interpolate is None:
        return ""
    path = vae.interpolate(interpolate[0], interpolate[1], steps=7, method="slerp")
    rows = "".join(f"<tr><td class='num'>{i / 6:.2f}</td><td>{html.escape(t)}</td></tr>" for i, t in enumerate(path))
    return ("<h2>Interpolation</h2>"
            f"<p>from <b>{html.escape(interpolate[0])}</b><br>to <b>{html.escape(interpolate[1])}</b></p>"
            "<p class='note'>slerp between the posterior means, 7 points, greedy decoding; "
            "the first and last rows are the reconstructions</p>"
            f"<table><tr><th>t</th><th>decoded</th></tr>{rows}</table>")


def _transfers_section(vae, ex: _Examples, transfers: int) -> str:
    """``transfers`` examples each way between the first two labels, by the default method."""
    from textvae.transfer import DEFAULT_METHOD

    if not transfers:
        return ""
    if vae.attributes is None or len(vae.attributes.labels) < 2:
        return ("<h2>Example transfers</h2><p class='note'>this checkpoint has no attribute vectors "
                "(two labels needed; see <code>textvae attributes</code>)</p>")
    la, lb = vae.attributes.labels[:2]
    rows = []
    for src, tgt in ((la, lb), (lb, la)):
        if ex.labels is not None:
            inputs = [t for t, v in zip(ex.texts, ex.labels) if v == src][:transfers]
        else:
            inputs = ex.texts[:transfers]
        if not inputs:
            continue
        outs = vae.transfer(inputs, src, tgt)
        rows += [f"<tr><td>{html.escape(src)} → {html.escape(tgt)}</td><td>{html.escape(i)}</td>"
                 f"<td>{html.escape(o)}</td></tr>" for i, o in zip(inputs, outs)]
    if not rows:
        return ""
    return ("<h2>Example transfers</h2>"
            f"<p class='note'>method {DEFAULT_METHOD}, default strength; inputs from "
            f"<code>{html.escape(ex.source)}</code></p>"
            "<table><tr><th>direction</th><th>input</th><th>output</th></tr>" + "".join(rows) + "</table>")


def _map_section(vae, ex: _Examples, map_limit: int) -> str:
    if not map_limit or len(ex.texts) < 2:
        return ""
    n = min(map_limit, len(ex.texts))
    png, _ = latent_map(vae, ex.texts[:n], ex.labels[:n] if ex.labels else None,
                        title=f"posterior means of {n} validation sentences, PCA")
    return f"<h2>Latent map</h2>{_img(png, 'latent map')}"


def _page(run_dir: Path, sections: Sequence[str]) -> str:
    """The report's HTML document around its sections."""
    import datetime

    title = f"textvae run report: {run_dir.name}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='note'>run folder <code>{html.escape(str(run_dir))}</code>; "
            f"written {datetime.datetime.now().isoformat(timespec='seconds')}</p>"
            + "".join(sections) + "</body></html>\n")
