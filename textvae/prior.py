"""A prior fitted to where the codes are: a Gaussian mixture on the aggregate posterior.

A posterior that carries tens of nats per sentence is not N(0, I) in aggregate: its codes fill a
small, uneven part of the space, and codes drawn from N(0, I) land in the holes between them,
where the decoder has never been trained. Two-stage VAEs (Dai & Wipf 2019) and regularised
autoencoders (Ghosh et al. 2020) fit a second density to the codes after training and sample from
that instead. Here it is a mixture of K Gaussians (full covariances by default) fitted by EM to one
z ~ q(z|x) per training sentence; ``textvae sample --prior fitted`` draws from it, and ``textvae
evaluate`` also reports the likelihood of the model with it as its prior (a two-stage model). Pure
tensor code: the checkpoint files are :mod:`textvae.checkpoint`'s.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

PRIORS = ("auto", "normal", "fitted")
"""Where prior samples come from: 'normal' N(0, I); 'fitted' the mixture fitted to the training codes
(fitted and stored when missing); 'auto' the fitted mixture when the checkpoint stores one or its
training data can be read to fit one, else N(0, I)."""
DEFAULT_PRIOR = "auto"
COMPONENTS = 4
"""Mixture components of the fitted prior (with full covariances, 16 fit the held-out codes of the
bundled corpus only about 0.2 nats better than 4, at four times the fitting time)."""
COVARIANCES = ("full", "diag")
COVARIANCE = "full"
"""Each component's covariance: 'full' (the codes' dimensions are correlated: on the bundled corpus a
full-covariance fit is about 10 nats per sentence closer to the held-out codes than a diagonal one) or
'diag'."""
MIN_VAR = 1e-4  # floor on a component's variance per dimension (a component may not collapse onto a point)
CHUNK = 8192  # codes per block of the density computations (bounds the (K, L, N) intermediates)


@dataclass
class GaussianMixture:
    """A mixture of K Gaussians over R^L, with diagonal or full covariances."""

    weights: torch.Tensor  # (K,) mixing proportions, summing to 1
    means: torch.Tensor  # (K, L)
    variances: torch.Tensor  # (K, L) diagonal covariances, or (K, L, L) full covariance matrices
    info: dict[str, Any] = field(default_factory=dict)
    by_label: dict[str, "GaussianMixture"] = field(default_factory=dict)
    """One mixture per label of a labelled training corpus, fitted to the codes of that label's
    sentences alone (:func:`fit_by_label`); empty when the corpus had no labels."""

    @property
    def covariance(self) -> str:
        """'full' or 'diag'."""
        return "full" if self.variances.dim() == 3 else "diag"

    @functools.cached_property
    def _cholesky(self) -> torch.Tensor:
        """(K, L, L) float64 Cholesky factors C_k of the full covariances, Sigma_k = C_k C_k^T: computed
        once per mixture, not at every density or sample call."""
        return torch.linalg.cholesky(self.variances.double())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(N,) log density of codes z (N, L)."""
        return torch.logsumexp(self._component_log_probs(z.double()), dim=1).to(z.dtype)

    def _component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K): log w_k + log N(z; m_k, Sigma_k), in float64."""
        m, v, w = self.means.double(), self.variances.double(), self.weights.double()
        if self.covariance == "diag":
            # sum_l (z - m)^2 / v, expanded so that no (N, K, L) tensor is built
            quad = (z**2) @ (1 / v).T - 2 * z @ (m / v).T + (m**2 / v).sum(-1)[None]  # (N, K)
            logdet = v.log().sum(-1)  # (K,)
        else:
            chol = self._cholesky
            quad = torch.cat([_mahalanobis(z[i:i + CHUNK], m, chol) for i in range(0, len(z), CHUNK)])
            logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return w.log()[None] - 0.5 * (quad + logdet[None] + z.shape[1] * math.log(2 * math.pi))

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        """(n, L) codes: a component drawn by weight, then a point from it. ``temperature`` scales
        the point's distance from its component's mean (below 1: nearer the modes; see
        :func:`textvae.generate.sample`)."""
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator) * temperature
        if self.covariance == "diag":
            return self.means[k].float() + self.variances[k].float().sqrt() * eps
        chol = self._cholesky[k]  # (n, L, L)
        return self.means[k].float() + (chol @ eps.double().unsqueeze(-1)).squeeze(-1).float()


def _mahalanobis(z: torch.Tensor, m: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """(N, K) squared Mahalanobis distances of z (N, L) to each component (means m (K, L), Cholesky
    factors chol (K, L, L)): |C_k^-1 (z - m_k)|^2."""
    d = z.T[None] - m[:, :, None]  # (K, L, N)
    return torch.linalg.solve_triangular(chol, d, upper=False).pow(2).sum(1).T


def fit_mixture(z: torch.Tensor, components: int = COMPONENTS, iterations: int = 100, seed: int = 0,
                tol: float = 1e-3, covariance: str = COVARIANCE) -> GaussianMixture:
    """EM for a Gaussian mixture (Dempster et al. 1977), deterministic for ``seed``.

    Args:
        z: (N, L) codes, N >= components.
        components: K; initial means are K distinct codes chosen at random.
        iterations: most EM steps; stops earlier when the mean log-likelihood improves by < ``tol`` nats per code.
        covariance: 'full' or 'diag' (see :data:`COVARIANCE`); every variance is floored at MIN_VAR
            (added to a full covariance's diagonal), so a component never collapses onto a point.
    """
    if covariance not in COVARIANCES:
        raise ValueError(f"unknown covariance {covariance!r}; use one of {', '.join(COVARIANCES)}")
    x = z.detach().double().cpu()
    N, L = x.shape
    if N < components:
        raise ValueError(f"a {components}-component mixture needs at least {components} codes, got {N}")
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(N, generator=g)[:components]].clone()
    if covariance == "diag":
        cov = x.var(0, unbiased=False).clamp_min(MIN_VAR).expand(components, L).clone()
    else:
        cov = (torch.cov(x.T, correction=0).reshape(L, L) + MIN_VAR * torch.eye(L, dtype=x.dtype)).expand(
            components, L, L).clone()
    gm = GaussianMixture(torch.full((components,), 1.0 / components, dtype=torch.float64), means, cov)
    last = -math.inf
    for step in range(iterations):
        logp = gm._component_log_probs(x)  # E step: responsibilities
        ll = float(torch.logsumexp(logp, 1).mean())
        r = (logp - torch.logsumexp(logp, 1, keepdim=True)).exp()  # (N, K)
        nk = r.sum(0).clamp_min(1e-10)  # M step
        means = (r.T @ x) / nk[:, None]
        if covariance == "diag":
            cov = ((r.T @ x**2) / nk[:, None] - means**2).clamp_min(MIN_VAR)
        else:
            second = torch.stack([(x * r[:, k, None]).T @ x for k in range(components)]) / nk[:, None, None]
            cov = second - means[:, :, None] * means[:, None, :] + MIN_VAR * torch.eye(L, dtype=x.dtype)
        gm = GaussianMixture(nk / N, means, cov)
        if ll - last < tol:
            break
        last = ll
    gm.info = {"components": components, "codes": N, "iterations": step + 1, "mean_log_likelihood": ll,
               "seed": seed, "covariance": covariance}
    return GaussianMixture(gm.weights.float(), gm.means.float(), gm.variances.float(), gm.info)


def aggregate_moments(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per dimension of the aggregate posterior, the mixture of the
    N(mu_i, exp(logvar_i)) of N sentences: mean E[mu], variance Var[mu] + E[exp(logvar)].
    (N, L) each -> (L,), (L,); float64 sums, float32 results."""
    mu, var = mu.detach().double().cpu(), logvar.detach().double().cpu().exp()
    mean = mu.mean(0)
    std = (mu.var(0, unbiased=False) + var.mean(0)).sqrt()
    return mean.float(), std.float()


def code_rows(n: int, limit: int, seed: int) -> list[int]:
    """Which of n corpus rows to encode for the fitted prior and the style vectors: all of them
    (``limit`` 0 or >= n), else ``limit`` rows drawn without replacement with ``seed``, in corpus order."""
    if limit <= 0 or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def posterior_codes(posterior: tuple[torch.Tensor, torch.Tensor], seed: int) -> torch.Tensor:
    """One z ~ q(z|x) per row of ``posterior`` (mu, logvar), drawn with ``seed``: the codes the
    fitted prior is fitted to. (N, L) on the CPU."""
    mu, logvar = (t.cpu() for t in posterior)
    g = torch.Generator().manual_seed(seed)
    return mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)


def fit_to_corpus(model: Any, ids: list[list[int]], tok: Any, components: int = COMPONENTS, seed: int = 0,
                  posterior: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                  labels: Optional[list[int]] = None, label_names: Optional[list[str]] = None) -> GaussianMixture:
    """The fitted prior of a model: one z ~ q(z|x) per sentence of a tokenised corpus (token-id
    lists), then :func:`fit_mixture`. ``posterior``: the corpus's (mu, logvar) when already computed.
    With ``labels`` (a label index per sentence) and their ``label_names``, also one mixture per
    label on the same codes (``by_label``, see :func:`fit_by_label`)."""
    from textvae.evaluate import posterior_params

    if posterior is None:
        posterior = posterior_params(model, ids, tok, batch_size=256)
    z = posterior_codes(posterior, seed)
    gm = fit_mixture(z, min(components, len(ids)), seed=seed)
    if labels is not None and label_names:
        gm.by_label = fit_by_label(z, labels, label_names, components, seed)
    return gm


def fit_by_label(z: torch.Tensor, labels: list[int], label_names: list[str], components: int = COMPONENTS,
                 seed: int = 0) -> dict[str, GaussianMixture]:
    """A mixture per label, each fitted to the codes z (N, L) of the rows with that label index
    (rows labelled -1, unlabelled, are left out; a label without rows gets none).

    One prior over a corpus of several styles puts mass between their clusters too, and a code drawn
    there decodes into a sentence that may change style halfway; sampling from the codes of one
    label keeps a model that is not label-conditional in that label's style (``textvae sample
    --label``)."""
    y = torch.as_tensor(labels)
    out: dict[str, GaussianMixture] = {}
    for index, name in enumerate(label_names):
        rows = (y == index).nonzero().squeeze(1)
        if len(rows):
            gm = fit_mixture(z[rows], min(components, len(rows)), seed=seed)
            gm.info["label"] = name
            out[name] = gm
    return out
