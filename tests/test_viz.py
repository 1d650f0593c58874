"""Curves, latent maps, the HTML run report (textvae/viz.py) and TensorBoard logging
(textvae/tboard.py), through the functions and the CLI."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import pytest

from helpers import TINY_DATA, assert_user_error, read_jsonl
from textvae import viz

pytest.importorskip("matplotlib")


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, checking its signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- collapse detection


def test_collapse_spans():
    steps = [0, 20, 40, 60, 80, 100, 120, 140, 160]
    kl = [5.0, 0.01, 0.02, 0.0, 3.0, 0.05, 0.05, 0.05, 0.05]
    # 20..60 spans 40 steps; 100..160 spans 60 steps and runs to the end of the log
    assert viz.collapse_spans(steps, kl, threshold=0.1, min_steps=40) == [(20, 60), (100, 160)]
    assert viz.collapse_spans(steps, kl, threshold=0.1, min_steps=50) == [(100, 160)]
    assert viz.collapse_spans(steps, kl, threshold=0.01, min_steps=0) == [(60, 60)]
    assert viz.collapse_spans(steps, [1.0] * 9) == []


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{\"step\": 9", encoding="utf-8")


def collapsed_log(tmp_path):
    """A synthetic run whose KL dies at step 200 and never recovers."""
    run = tmp_path / "collapsed"
    run.mkdir()
    recs = []
    for s in range(10, 510, 10):
        kl = 4.0 if s < 200 else 0.001
        recs.append({"step": s, "split": "train", "rec": 50 - s / 50, "kl": kl, "kl_objective": max(kl, 0.8),
                     "beta": min(1.0, s / 300), "word_dropout": 0.2, "lr": 1e-3, "grad_norm": 1.0})
        if s % 100 == 0:
            recs.append({"step": s, "split": "valid", "rec": 48.0, "kl": kl, "neg_elbo": 48 + kl,
                         "active_units": 8 if s < 200 else 0})
    write_metrics(run / "metrics.jsonl", recs)
    return run


# --------------------------------------------------------------------------- plot


def test_plot_cli_writes_every_curve(run_cli, copy_run):
    run = copy_run()
    rc, out, err = run_cli("plot", run)
    assert rc == 0, err
    written = sorted(out.split())
    expected = sorted(str(run / "plots" / f"{n}.png") for n in (*viz.CURVES, "curves"))
    assert written == expected
    for name in viz.CURVES:
        w, h = png_size(run / "plots" / f"{name}.png")
        assert (w, h) == (600, 360)
    assert png_size(run / "plots" / "curves.png") == (1500, 680)
    assert not list((run / "plots").glob(".*"))  # no temporary files left behind


def test_plot_marks_collapse(tmp_path, run_cli, caplog):
    run = collapsed_log(tmp_path)
    m = viz.read_metrics(run)
    assert m.bad_lines == 1 and len(m.train) == 50 and len(m.valid) == 5
    assert m.beta_kl()[1][0] == pytest.approx(10 / 300 * 4.0)
    assert viz.curve_figures(m, threshold=0.1, min_steps=100, names=())[1] == [(200, 500)]
    assert viz.curve_figures(m, threshold=0.1, min_steps=301, names=())[1] == []
    with caplog.at_level("WARNING", logger="textvae"):
        rc, _, err = run_cli("plot", run, "--out", tmp_path / "cli", "--collapse-kl", 0.01, "--collapse-steps", 300)
    assert rc == 0 and "posterior collapse: train KL under 0.01 for steps 200-500" in caplog.text
    assert len(list((tmp_path / "cli").glob("*.png"))) == len(viz.CURVES) + 1


def test_collapse_is_visible_in_the_kl_png(tmp_path):
    """The shaded collapse span changes the KL plot's pixels (red-tinted area appears)."""
    import numpy as np
    from matplotlib.image import imread

    m = viz.read_metrics(collapsed_log(tmp_path))
    with_span, _ = viz.curve_figures(m, threshold=0.1, min_steps=100, names=("kl",))
    without, _ = viz.curve_figures(m, threshold=0.1, min_steps=10_000, names=("kl",))
    a, b = imread(io.BytesIO(with_span["kl"])), imread(io.BytesIO(without["kl"]))

    def reddish(img):
        r, g, bl = img[..., 0], img[..., 1], img[..., 2]
        return int(((r > 0.9) & (g < 0.9) & (g > 0.7) & (bl < 0.9)).sum())

    assert reddish(a) > 20 * max(reddish(b), 1)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("setup,needle", [
    (lambda p: None, "no metrics file"),
    (lambda p: (p / "metrics.jsonl").write_text("not json\n\n", encoding="utf-8"), "holds no metric records"),
])
def test_plot_bad_run_is_one_line(tmp_path, run_cli, setup, needle):
    run = tmp_path / "run"
    run.mkdir()
    setup(run)
    rc, _, err = run_cli("plot", run)
    assert_user_error(rc, err, "plot", needle)
    assert not (run / "plots").exists()


# --------------------------------------------------------------------------- latent map


def test_project_pca_and_axis():
    import torch

    g = torch.Generator().manual_seed(0)
    half = torch.randn(100, 6, generator=g) * torch.tensor([5.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    mu = torch.cat([half, half + torch.tensor([0.0, 0.0, 0.0, 2.0, 0.0, 0.0])])
    labels = ["a"] * 100 + ["b"] * 100
    # the label means differ along dimension 3 only, which the top two PCs (dimensions 0, 1) miss
    m = viz.project(mu, labels, "pca")
    assert m.points.shape == (200, 2) and m.label_names == ["a", "b"]
    assert "PC1" in m.axis_names[0] and m.kept_share < 0.05
    a = viz.project(mu, labels, "axis")
    assert a.kept_share > 0.999  # the axis projection keeps the whole direction
    assert a.label_means[1, 0] - a.label_means[0, 0] == pytest.approx(float((mu[100:].mean(0) - mu[:100].mean(0)).norm()),
                                                                      rel=1e-6)
    with pytest.raises(Exception, match="two labels"):
        viz.project(mu, None, "axis")


def test_map_cli_with_and_without_labels(run_cli, copy_run, tmp_path, caplog):
    run = copy_run()
    caplog.set_level("INFO", logger="textvae")
    rc, out, err = run_cli("map", "--checkpoint", run, "--data", TINY_DATA / "valid.jsonl", "--label-column", "style")
    assert rc == 0, err
    assert out.strip() == str(run / "plots" / "map.png")
    assert png_size(run / "plots" / "map.png") == (700, 600)
    assert "of its length lies in the plotted plane" in caplog.text
    rc, out, err = run_cli("map", "--checkpoint", run, "--data", TINY_DATA / "train.txt", "--output", tmp_path / "m.png")
    assert rc == 0, err
    assert png_size(tmp_path / "m.png") == (700, 600) and caplog.text.count("plotted plane") == 1
    rc, _, err = run_cli("map", "--checkpoint", run, "--data", TINY_DATA / "valid.jsonl", "--projection", "axis",
                         "--output", tmp_path / "axis.png")
    assert rc == 0 and png_size(tmp_path / "axis.png") == (700, 600), err


def test_map_bad_input_is_one_line(run_cli, trained_run, tmp_path):
    rc, _, err = run_cli("map", "--checkpoint", trained_run, "--data", TINY_DATA / "valid.jsonl",
                         "--label-column", "colour", "--output", tmp_path / "x.png")
    assert_user_error(rc, err, "map", "no column 'colour'")
    rc, _, err = run_cli("map", "--checkpoint", trained_run, "--data", tmp_path / "missing.txt",
                         "--output", tmp_path / "x.png")
    assert_user_error(rc, err, "map", "not found")
    rc, _, err = run_cli("map", "--checkpoint", trained_run, "--data", TINY_DATA / "train.txt", "--projection", "axis",
                         "--output", tmp_path / "x.png")
    assert_user_error(rc, err, "map", "needs labelled data")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- report


def test_report_is_self_contained(run_cli, copy_run, tmp_path):
    run = copy_run()
    evaluation = {"data": {"sentences": 3, "truncated": 0, "tokens": 40, "words": 30, "source": "x.txt"},
                  "rec": 50.0, "kl": 2.5, "neg_elbo": 52.5, "iw_nll": 51.25, "iw_samples": 10, "ppl_token": 3.5,
                  "ppl_word": 5.5, "mi": 0.125, "mi_batch_size": 3, "active_units": 4, "latent_dim": 8,
                  "au_threshold": 0.01, "recon_bleu": 1.5, "recon_exact": 0.0, "bleu_signature": "sig",
                  "samples": {"distinct_1": 0.5, "distinct_2": 0.75, "n": 5, "strategy": "top-p 0.9", "self_bleu": 3.0,
                              "mean_words": 7.0, "eos_rate": 1.0, "copied_rate": None}}
    (run / "evaluation.json").write_text(json.dumps(evaluation), encoding="utf-8")
    # one transfer each way: the 'closest' method decodes dozens of candidates per input
    rc, out, err = run_cli("report", run, "--samples", 4, "--transfers", 1, "--interpolate", "Jesus wept.",
                           "And God said, Let there be light.")
    assert rc == 0, err
    path = run / "report.html"
    assert out.strip() == str(path)
    page = path.read_text(encoding="utf-8")
    import html

    for section in ("Resolved config", "Training curves", "Evaluation", "Prior samples", "Interpolation",
                    "Example transfers", "Latent map"):
        assert f"<h2>{section}</h2>" in page
    assert '"latent_dim": 8' in html.unescape(page)  # the resolved config
    assert "51.25" in page and "K = 10" in page  # the evaluation table
    assert "Jesus wept." in page and "kjv → web" in page and "web → kjv" in page
    assert page.count("<li>") >= 4
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # curves and the latent map, embedded
    import base64

    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere


def test_report_without_checkpoint_or_evaluation(run_cli, tmp_path, trained_run, copy_run):
    run = copy_run()
    rc, _, err = run_cli("report", run, "--evaluation", tmp_path / "none.json")
    assert_user_error(rc, err, "report", "cannot read the evaluation file")
    assert not (run / "report.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli("report", empty)
    assert_user_error(rc, err, "report", "no metrics file")
    # metrics only: the checkpoint comes from --checkpoint
    (empty / "metrics.jsonl").write_bytes((trained_run / "metrics.jsonl").read_bytes())
    rc, _, err = run_cli("report", empty, "--checkpoint", trained_run, "--samples", 2, "--transfers", 1,
                         "--map-limit", 0, "--output", tmp_path / "r.html")
    assert rc == 0, err
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no evaluation in this run folder" in page and "<h2>Latent map</h2>" not in page


# --------------------------------------------------------------------------- files


@pytest.fixture
def recorded_writes(monkeypatch):
    """viz's atomic_write replaced by a recorder that writes nothing: {path: data} of each call.

    A test that finds no file on disk afterwards knows every file went through atomic_write."""
    calls: dict = {}

    def record(path, data, mkdir=True):
        calls[Path(path)] = data
        return Path(path)

    monkeypatch.setattr(viz, "atomic_write", record)
    return calls


def test_plots_are_written_only_through_atomic_write(tmp_path, recorded_writes):
    run = collapsed_log(tmp_path)
    files, _ = viz.plot_run(run, tmp_path / "plots")
    assert sorted(files) == sorted(recorded_writes) == sorted(tmp_path / "plots" / f"{n}.png" for n in (*viz.CURVES, "curves"))
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in recorded_writes.values())
    assert not (tmp_path / "plots").exists()


def test_map_and_report_are_written_only_through_atomic_write(tmp_path, trained_run, recorded_writes):
    from textvae.api import TextVAE

    vae = TextVAE.from_pretrained(trained_run)
    out, m = viz.write_map(vae, str(TINY_DATA / "valid.jsonl"), limit=20)
    assert out == trained_run / "plots" / "map.png" and list(recorded_writes) == [out]
    assert recorded_writes[out][:4] == b"\x89PNG" and m.points.shape == (20, 2) and not out.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((trained_run / "metrics.jsonl").read_bytes())
    report = viz.build_report(run, checkpoint=trained_run, samples=0, transfers=0, map_limit=0)
    assert report == run / "report.html" and list(recorded_writes) == [out, report]
    assert recorded_writes[report].startswith("<!DOCTYPE html>") and "<h2>Interpolation</h2>" in recorded_writes[report]
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_load_labelled_falls_back_and_subsets(tmp_path, trained_run, caplog):
    """The checkpoint's label column when the file has it, else no labels with a warning; 'none'
    drops them; a named column must exist; ``limit`` keeps a seeded subset in file order."""
    from textvae.api import TextVAE
    from textvae.errors import DataError

    vae = TextVAE.from_pretrained(trained_run)
    valid = str(TINY_DATA / "valid.jsonl")
    texts, labels, column = viz.load_labelled(valid, vae, limit=0)
    assert column == "style" and len(texts) == len(labels) and set(labels) == {"kjv", "web"}
    assert viz.load_labelled(valid, vae, label_column="None", limit=0) == (texts, None, None)
    sub, sub_labels, _ = viz.load_labelled(valid, vae, limit=7, seed=3)
    assert viz.load_labelled(valid, vae, limit=7, seed=3)[0] == sub and len(sub) == 7
    order = [texts.index(t) for t in sub]
    assert order == sorted(order) and sub_labels == [labels[i] for i in order]
    with caplog.at_level("WARNING", logger="textvae"):
        plain, none, column = viz.load_labelled(str(TINY_DATA / "train.txt"), vae, limit=0)
    assert none is None and column is None and plain and "has no 'style' column" in caplog.text
    with pytest.raises(DataError, match="no column 'colour'"):
        viz.load_labelled(valid, vae, label_column="colour")
    gaps = tmp_path / "gaps.csv"
    gaps.write_text("text,style\nIn the beginning.,kjv\nJesus wept.,\n", encoding="utf-8")
    with pytest.raises(DataError, match="some rows have an empty 'style' label"):
        viz.load_labelled(str(gaps), vae)
    assert viz.load_labelled(str(gaps), vae, label_column="none")[0] == ["In the beginning.", "Jesus wept."]


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_events(make_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from textvae.train import train

    run = tmp_path / "tb"
    cfg = make_config(["train.max_steps=6", "train.log_every=2", "train.eval_every=4", "train.save_every=0",
                       "train.tensorboard=true"])
    train(cfg, run)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/rec", "train/kl", "train/kl_objective", "train/loss", "train/beta", "train/beta_kl",
                "train/word_dropout", "train/lr", "train/grad_norm", "valid/active_units", "valid/neg_elbo"):
        assert tag in tags, (tag, sorted(tags))
    # the same numbers as metrics.jsonl
    logged = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"}
    events = {e.step: e.value for e in acc.Scalars("train/kl")}
    assert sorted(events) == sorted(logged) == [2, 4, 6]
    for step, value in events.items():
        assert value == pytest.approx(logged[step]["kl"], rel=1e-6)
    assert [e.step for e in acc.Scalars("valid/active_units")] == [4, 6]
