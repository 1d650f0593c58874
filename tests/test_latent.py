"""Latent arithmetic on tensors (textvae/latent.py): paths, attribute vectors, transfer, analogy."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import small_model_config
from textvae import latent
from textvae.evaluate import posterior_params
from textvae.data import collate
from textvae.model import SentenceVAE


def codes(n: int = 2, dim: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("method", latent.INTERPOLATIONS)
def test_paths_start_and_end_exactly_at_the_endpoints(method):
    za, zb = codes()
    path = latent.interpolate(za, zb, 7, method)
    assert path.shape == (7, 6)
    assert torch.equal(path[0], za) and torch.equal(path[-1], zb)
    assert not torch.allclose(path[3], za) and not torch.allclose(path[3], zb)


def test_lerp_is_the_straight_line():
    za, zb = codes()
    path = latent.lerp(za, zb, 5)
    assert torch.allclose(path[2], (za + zb) / 2, atol=1e-6)
    steps = path[1:] - path[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-6)  # equal steps


def test_slerp_norm_moves_linearly_between_the_endpoint_norms():
    za, zb = codes()
    za = za * 3.0  # unequal norms
    path = latent.slerp(za, zb, 9)
    norms = path.norm(dim=1)
    lo, hi = sorted([float(za.norm()), float(zb.norm())])
    assert all(lo - 1e-5 <= float(n) <= hi + 1e-5 for n in norms)
    expected = torch.linspace(float(za.norm()), float(zb.norm()), 9)
    assert torch.allclose(norms, expected, atol=1e-5)
    # with equal norms a straight line dips towards the origin in the middle; slerp stays on the shell
    zb = zb / zb.norm() * za.norm()
    assert float(latent.lerp(za, zb, 9).norm(dim=1)[4]) < 0.95 * float(za.norm())
    assert torch.allclose(latent.slerp(za, zb, 9).norm(dim=1), za.norm().expand(9), atol=1e-4)


def test_slerp_walks_the_great_circle_at_constant_angular_speed():
    za, zb = codes(seed=3)
    path = latent.slerp(za, zb, 6)
    unit = path / path.norm(dim=1, keepdim=True)
    angles = torch.arccos((unit[1:] * unit[:-1]).sum(1).clamp(-1, 1))
    assert torch.allclose(angles, angles[0].expand_as(angles), atol=1e-4)
    total = torch.arccos((za / za.norm() @ (zb / zb.norm())).clamp(-1, 1))
    assert float(angles.sum()) == pytest.approx(float(total), abs=1e-4)


def test_slerp_falls_back_to_lerp_when_the_circle_is_undefined():
    z = codes(1)[0]
    assert torch.allclose(latent.slerp(z, 2 * z, 4), latent.lerp(z, 2 * z, 4))  # parallel
    zero = torch.zeros_like(z)
    assert torch.allclose(latent.slerp(zero, z, 4), latent.lerp(zero, z, 4))
    assert torch.isfinite(latent.slerp(z, -z, 5)).all()  # antipodal


@pytest.mark.parametrize("steps", [1, 0, -3])
def test_fewer_than_two_steps_is_an_error(steps):
    za, zb = codes()
    with pytest.raises(ValueError, match="at least 2"):
        latent.interpolate(za, zb, steps)


# --------------------------------------------------------------------------- attribute vectors


def test_attribute_vectors_are_per_label_means():
    mu = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 6.0]])
    means, counts = latent.attribute_vectors(mu, torch.tensor([0, 0, 1, 0]), 3)
    assert counts.tolist() == [3, 1, 0]
    assert torch.allclose(means[0], torch.tensor([3.0, 4.0]))
    assert torch.allclose(means[1], torch.tensor([10.0, 0.0]))
    assert torch.equal(means[2], torch.zeros(2))  # no sentences: a zero row, not NaN


def test_attribute_vectors_of_a_tiny_model_match_a_hand_computation():
    torch.manual_seed(0)
    model = SentenceVAE(small_model_config()).eval()

    class Tok:
        pad_id, bos_id, eos_id = 0, 1, 2

    ids = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [6], [7, 7, 7, 7]]
    labels = [1, 0, 1, 1, 0]
    mu, _ = posterior_params(model, ids, Tok(), batch_size=2)
    by_hand = {0: [], 1: []}
    for x, y in zip(ids, labels):
        b = collate([x], Tok())
        m, _ = model.encode(b.enc_ids, b.enc_mask)  # one sentence at a time: no padding at all
        by_hand[y].append(m[0])
    means, counts = latent.attribute_vectors(mu, torch.tensor(labels), 2)
    assert counts.tolist() == [2, 3]
    for k in (0, 1):
        assert torch.allclose(means[k], torch.stack(by_hand[k]).mean(0), atol=1e-5)


# --------------------------------------------------------------------------- transfer


@pytest.mark.parametrize("method", ["mean-diff", "project"])
def test_transfer_with_alpha_zero_changes_nothing(method):
    z, (s, t) = codes(4), codes(2, seed=1)
    assert torch.equal(latent.transfer(z, s, t, 0.0, method), z)


def test_mean_diff_moves_every_code_by_the_same_offset():
    z, (s, t) = codes(4), codes(2, seed=1)
    moved = latent.transfer_mean_diff(z, s, t, 1.0)
    assert torch.allclose(moved - z, (t - s).expand_as(z), atol=1e-6)
    assert torch.allclose(latent.transfer_mean_diff(s[None], s, t, 1.0)[0], t, atol=1e-6)


def test_project_sets_the_style_coordinate_and_keeps_the_rest():
    z, (s, t) = codes(5), codes(2, seed=1)
    u = latent.style_axis(s, t)
    moved = latent.transfer_project(z, s, t, 1.0)
    assert torch.allclose(moved @ u, (t @ u).expand(5), atol=1e-5)  # all land on the target's coordinate
    orth = lambda x: x - (x @ u)[:, None] * u  # noqa: E731
    assert torch.allclose(orth(moved), orth(z), atol=1e-5)  # content part untouched
    half = latent.transfer_project(z, s, t, 0.5)
    assert torch.allclose(half @ u, (z @ u + t @ u) / 2, atol=1e-5)


def test_per_sentence_strengths():
    z, (s, t) = codes(3), codes(2, seed=1)
    alphas = torch.tensor([0.0, 1.0, 2.0])
    moved = latent.transfer_mean_diff(z, s, t, alphas)
    for i, a in enumerate(alphas.tolist()):
        assert torch.allclose(moved[i], z[i] + a * (t - s), atol=1e-6)
    with pytest.raises(ValueError, match="alpha has shape"):
        latent.transfer_mean_diff(z, s, t, torch.ones(2))


def test_identical_attribute_vectors_have_no_axis():
    s = codes(1)[0]
    with pytest.raises(ValueError, match="identical"):
        latent.transfer_project(codes(2), s, s.clone(), 1.0)


def test_search_candidates_and_the_first_accepted():
    z, (s, t) = codes(3), codes(2, seed=1)
    cands, alphas = latent.search_candidates(z, s, t, 2.0, 4, base="mean-diff")
    assert cands.shape == (4, 3, 6)
    assert torch.allclose(alphas, torch.tensor([0.5, 1.0, 1.5, 2.0]))
    assert torch.allclose(cands[1], latent.transfer_mean_diff(z, s, t, 1.0))
    accepted = torch.tensor([[False, True, False], [True, True, False], [True, False, False], [False, False, False]])
    assert latent.first_accepted(accepted).tolist() == [1, 0, 3]  # none accepted: the strongest


# --------------------------------------------------------------------------- analogy


def test_analogy_arithmetic():
    a, b, c = codes(3)
    assert torch.allclose(latent.analogy(a, b, c), c + b - a)
    assert torch.equal(latent.analogy(a, a.clone(), c), c)  # a == b: exactly c
    assert math.isclose(float((latent.analogy(a, b, a) - b).abs().max()), 0.0, abs_tol=1e-6)
