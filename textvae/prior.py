"""A prior fitted to where the codes are: a Gaussian mixture on the aggregate posterior.

A posterior that carries tens of nats per sentence is not N(0, I) in aggregate: its codes fill a
small, uneven part of the space, and codes drawn from N(0, I) land in the holes between them,
where the decoder has never been trained. Two-stage VAEs (Dai & Wipf 2019) and regularised
autoencoders (Ghosh et al. 2020) fit a second density to the codes after training and sample from
that instead. Here it is a mixture of K diagonal Gaussians fitted by EM to one z ~ q(z|x) per
training sentence; ``textvae sample --prior fitted`` draws from it. Pure tensor code: the
checkpoint files are :mod:`textvae.checkpoint`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

PRIORS = ("auto", "normal", "fitted")
"""Where prior samples come from: 'normal' N(0, I); 'fitted' the mixture fitted to the training codes
(fitted and stored when missing); 'auto' the fitted mixture when the checkpoint stores one or its
training data can be read to fit one, else N(0, I)."""
DEFAULT_PRIOR = "auto"
COMPONENTS = 16
"""Mixture components of the fitted prior."""
MIN_VAR = 1e-4  # floor on a component's variance per dimension (a component may not collapse onto a point)


@dataclass
class GaussianMixture:
    """A mixture of K diagonal Gaussians over R^L."""

    weights: torch.Tensor  # (K,) mixing proportions, summing to 1
    means: torch.Tensor  # (K, L)
    variances: torch.Tensor  # (K, L)
    info: dict[str, Any] = field(default_factory=dict)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(N,) log density of codes z (N, L)."""
        return torch.logsumexp(self._component_log_probs(z.double()), dim=1).to(z.dtype)

    def _component_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """(N, K): log w_k + log N(z; m_k, diag v_k), in float64."""
        m, v, w = self.means.double(), self.variances.double(), self.weights.double()
        # sum_l (z - m)^2 / v, expanded so that no (N, K, L) tensor is built
        quad = (z**2) @ (1 / v).T - 2 * z @ (m / v).T + (m**2 / v).sum(-1)[None]  # (N, K)
        logdet = v.log().sum(-1)  # (K,)
        return w.log()[None] - 0.5 * (quad + logdet[None] + z.shape[1] * math.log(2 * math.pi))

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(n, L) codes: a component drawn by weight, then a point from it."""
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator)
        return self.means[k].float() + self.variances[k].float().sqrt() * eps


def fit_mixture(z: torch.Tensor, components: int = COMPONENTS, iterations: int = 100, seed: int = 0,
                tol: float = 1e-6) -> GaussianMixture:
    """EM for a diagonal Gaussian mixture (Dempster et al. 1977), deterministic for ``seed``.

    Args:
        z: (N, L) codes, N >= components.
        components: K; initial means are K distinct codes chosen at random.
        iterations: most EM steps; stops earlier when the mean log-likelihood improves by < ``tol``.
    """
    x = z.detach().double().cpu()
    N, L = x.shape
    if N < components:
        raise ValueError(f"a {components}-component mixture needs at least {components} codes, got {N}")
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(N, generator=g)[:components]].clone()
    var = x.var(0, unbiased=False).clamp_min(MIN_VAR)
    gm = GaussianMixture(torch.full((components,), 1.0 / components, dtype=torch.float64), means,
                         var.expand(components, L).clone())
    last = -math.inf
    for step in range(iterations):
        logp = gm._component_log_probs(x)  # E step: responsibilities
        ll = float(torch.logsumexp(logp, 1).mean())
        r = (logp - torch.logsumexp(logp, 1, keepdim=True)).exp()  # (N, K)
        nk = r.sum(0).clamp_min(1e-10)  # M step
        means = (r.T @ x) / nk[:, None]
        variances = ((r.T @ x**2) / nk[:, None] - means**2).clamp_min(MIN_VAR)
        gm = GaussianMixture(nk / N, means, variances)
        if ll - last < tol:
            break
        last = ll
    gm.info = {"components": components, "codes": N, "iterations": step + 1, "mean_log_likelihood": ll,
               "seed": seed, "covariance": "diagonal"}
    return GaussianMixture(gm.weights.float(), gm.means.float(), gm.variances.float(), gm.info)


def fit_to_corpus(model: Any, ids: list[list[int]], tok: Any, components: int = COMPONENTS, seed: int = 0,
                  posterior: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> GaussianMixture:
    """The fitted prior of a model: one z ~ q(z|x) per sentence of a tokenised corpus (token-id
    lists), then :func:`fit_mixture`. ``posterior``: the corpus's (mu, logvar) when already computed."""
    from textvae.evaluate import posterior_params

    if posterior is None:
        posterior = posterior_params(model, ids, tok, batch_size=256)
    mu, logvar = (t.cpu() for t in posterior)
    g = torch.Generator().manual_seed(seed)
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)
    return fit_mixture(z, min(components, len(ids)), seed=seed)
