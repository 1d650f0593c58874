"""Latent-space arithmetic: interpolation paths, attribute vectors, style transfer, analogies.

Pure tensor functions on posterior means, and the attribute-vector type they use; nothing here
runs a model or touches a file (the text-level wrappers are ``textvae/api.py``'s and
``textvae/transfer.py``'s; attribute files are ``textvae/checkpoint.py``'s).
Shapes: N sentences, L latent_dim, K labels, S steps (or candidates).

Every function here is deterministic and keeps the device and dtype of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from textvae.errors import InputError

INTERPOLATIONS = ("lerp", "slerp")


@dataclass
class Attributes:
    """Attribute vectors: the mean posterior mean of each label's sentences (John et al. 2019)."""

    labels: list[str]
    means: torch.Tensor  # (K, L)
    counts: torch.Tensor  # (K,) sentences per label
    info: dict[str, Any] = field(default_factory=dict)  # source file, label column, weights digest...

    def index(self, label: str) -> int:
        """Row of ``label``; an unknown label is an error that lists the known ones."""
        if label not in self.labels:
            raise InputError(f"unknown label {label!r}; known labels: {', '.join(self.labels)}")
        return self.labels.index(label)

    def vector(self, label: str) -> torch.Tensor:
        return self.means[self.index(label)]


# --------------------------------------------------------------------------- interpolation


def lerp(za: torch.Tensor, zb: torch.Tensor, steps: int) -> torch.Tensor:
    """Straight line from ``za`` to ``zb`` (Bowman et al. 2016, "homotopies").

    Args:
        za, zb: (L,) endpoints.
        steps: points on the path, endpoints included (>= 2).
    Returns:
        (S, L) with row 0 == za and row S-1 == zb exactly.
    """
    _check_steps(steps)
    t = torch.linspace(0.0, 1.0, steps, device=za.device, dtype=za.dtype)[:, None]  # (S, 1)
    path = (1 - t) * za + t * zb
    path[0], path[-1] = za, zb  # exact endpoints whatever the rounding
    return path


def slerp(za: torch.Tensor, zb: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; for generative models White 2016).

    Under a Gaussian prior most mass lies near a shell, and the middle of a straight line is
    closer to the origin than its ends (a low-norm, atypical code). Here the direction moves
    along the great circle from za/|za| to zb/|zb| while the norm moves linearly from |za| to
    |zb|, so every point's norm lies between the endpoints' norms. Falls back to :func:`lerp`
    when a direction is undefined (a zero endpoint) or the directions are (anti)parallel.

    Args:
        za, zb: (L,) endpoints.
        steps: points on the path, endpoints included (>= 2).
    Returns:
        (S, L) with row 0 == za and row S-1 == zb exactly.
    """
    _check_steps(steps)
    na, nb = za.norm(), zb.norm()
    if float(na) < eps or float(nb) < eps:
        return lerp(za, zb, steps)
    ua, ub = za / na, zb / nb
    cos = (ua * ub).sum().clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if float(sin) < 1e-4:  # (anti)parallel: the great circle is not unique
        return lerp(za, zb, steps)
    t = torch.linspace(0.0, 1.0, steps, device=za.device, dtype=za.dtype)[:, None]  # (S, 1)
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / sin  # unit rows
    path = ((1 - t) * na + t * nb) * direction
    path[0], path[-1] = za, zb
    return path


def interpolate(za: torch.Tensor, zb: torch.Tensor, steps: int, method: str = "lerp") -> torch.Tensor:
    """(S, L) path from za to zb by ``method`` ('lerp' or 'slerp')."""
    if method == "lerp":
        return lerp(za, zb, steps)
    if method == "slerp":
        return slerp(za, zb, steps)
    raise ValueError(f"interpolation method must be one of {', '.join(INTERPOLATIONS)}, got {method!r}")


def _check_steps(steps: int) -> None:
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps (its two endpoints), got {steps}")


# --------------------------------------------------------------------------- attribute vectors


def attribute_vectors(mu: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label mean of posterior means: the attribute vectors of John et al. (2019); the
    difference of two of them is the transfer direction of Shen et al. (2020).

    Args:
        mu: (N, L) posterior means.
        labels: (N,) label indices in [0, num_labels).
        num_labels: K.
    Returns:
        means (K, L) (a label without sentences gets a zero row) and counts (K,) int64.
    """
    labels = labels.to(mu.device, torch.long)
    counts = torch.bincount(labels, minlength=num_labels)[:num_labels]
    sums = torch.zeros(num_labels, mu.shape[1], device=mu.device, dtype=torch.float64)
    sums.index_add_(0, labels, mu.double())  # float64 sums: tens of thousands of rows
    means = sums / counts.clamp_min(1)[:, None]
    return means.to(mu.dtype), counts


# --------------------------------------------------------------------------- style transfer


def style_axis(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unit vector (L,) from the source attribute vector to the target one."""
    d = target - source
    n = d.norm()
    if float(n) == 0.0:
        raise ValueError("the source and target attribute vectors are identical: no direction to move along")
    return d / n


def transfer_mean_diff(z: torch.Tensor, source: torch.Tensor, target: torch.Tensor, alpha: float | torch.Tensor = 1.0
                       ) -> torch.Tensor:
    """z + alpha * (target - source): add the difference of class means (Shen et al. 2020, their
    "offset" baseline; Mikolov et al. 2013 for the arithmetic). Every sentence moves the same.

    Args:
        z: (N, L) codes (posterior means).
        source, target: (L,) attribute vectors.
        alpha: a scalar, or (N,) one strength per sentence.
    Returns:
        (N, L).
    """
    a = _per_row(alpha, z)
    return z + a * (target - source)


def transfer_project(z: torch.Tensor, source: torch.Tensor, target: torch.Tensor, alpha: float | torch.Tensor = 1.0
                     ) -> torch.Tensor:
    """Replace each code's coordinate along the style axis by the target mean's coordinate.

    With u the unit vector from source to target mean, z' = z + alpha * ((target - z) . u) u:
    the source-style component of z is removed and the target's put in its place, so a
    sentence far on the source side moves further than one already near the boundary, and
    the part of z orthogonal to u (the content) is untouched. alpha = 1 lands exactly on the
    target mean's coordinate; alpha > 1 overshoots.

    Args:
        z: (N, L) codes.
        source, target: (L,) attribute vectors.
        alpha: a scalar or (N,).
    Returns:
        (N, L).
    """
    u = style_axis(source, target)
    a = _per_row(alpha, z)
    gap = (target - z) @ u  # (N,) how far each code is from the target mean along u
    return z + a * gap[:, None] * u


def transfer(z: torch.Tensor, source: torch.Tensor, target: torch.Tensor, alpha: float | torch.Tensor = 1.0,
             method: str = "mean-diff") -> torch.Tensor:
    """Move codes (N, L) towards the target attribute by ``method`` ('mean-diff' or 'project').

    ('search' and 'closest' decode candidates, so they live in ``textvae/transfer.py``; their
    candidates come from :func:`search_candidates`.)
    """
    if method == "mean-diff":
        return transfer_mean_diff(z, source, target, alpha)
    if method == "project":
        return transfer_project(z, source, target, alpha)
    raise ValueError(f"latent transfer method must be 'mean-diff' or 'project', got {method!r}")


def search_candidates(z: torch.Tensor, source: torch.Tensor, target: torch.Tensor, alpha: float, n: int,
                      base: str = "project") -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate codes at n evenly spaced strengths alpha/n, 2 alpha/n, ..., alpha along the
    transfer path of ``base`` ('mean-diff' or 'project').

    Args:
        z: (N, L) codes.
        source, target: (L,) attribute vectors.
        alpha: the largest strength tried.
        n: candidates per sentence (>= 1).
    Returns:
        codes (n, N, L), weakest first, and their strengths (n,).
    """
    if n < 1:
        raise ValueError("the search needs at least one candidate")
    alphas = torch.arange(1, n + 1, device=z.device, dtype=z.dtype) * (alpha / n)
    return torch.stack([transfer(z, source, target, float(a), base) for a in alphas]), alphas


def first_accepted(accepted: torch.Tensor) -> torch.Tensor:
    """For each column of ``accepted`` (n, N) bool (candidates weakest first), the row of the
    first accepted candidate, or the last row when none is: (N,) long."""
    n = accepted.shape[0]
    first = torch.where(accepted.any(0), accepted.float().argmax(0), torch.full_like(accepted[0], n - 1, dtype=torch.long))
    return first.long()


def _per_row(alpha: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor | float:
    if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
        if alpha.shape != z.shape[:1]:
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}; expected a scalar or ({z.shape[0]},)")
        return alpha.to(z)[:, None]
    return float(alpha)


# --------------------------------------------------------------------------- analogies


def analogy(za: torch.Tensor, zb: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
    """a is to b as c is to d: z_d = z_c + (z_b - z_a) (Mikolov et al. 2013, in sentence space).

    Args:
        za, zb, zc: (N, L) or (L,).
    Returns:
        z_d with the broadcast shape; z_d == z_c exactly when za == zb.
    """
    return zc + (zb - za)
