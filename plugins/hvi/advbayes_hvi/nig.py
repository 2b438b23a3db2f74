"""Normal-Inverse-Gamma pieces: the per-weight KL, its optimum, and finite-nu weight sampling."""

from __future__ import annotations

import math

import torch

from advbayes import GaussianParameter, regularizer_terms


def nu_term(nu: float) -> float:
    """(1/2)(log nu - digamma(nu)): the part of the optimal KL that depends on nu only (0 as nu -> inf)."""
    if math.isinf(nu):
        return 0.0
    return 0.5 * (math.log(nu) - float(torch.special.digamma(torch.tensor(nu, dtype=torch.float64))))


def nig_kl(mu0: torch.Tensor, sigma0: torch.Tensor, nu: float, lam: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Per-weight KL(q || p) for q = N(mu0, sigma0^2) IG(nu, psi) and p = N(0, sigma^2 / lam) IG(nu, 1)."""
    digamma = torch.special.digamma(torch.as_tensor(nu, dtype=mu0.dtype))
    first = (
        lam * nu * (sigma0**2 + mu0**2) / (2 * psi) + 0.5 * (psi.log() - digamma - lam.log() - (sigma0**2).log()) - 0.5
    )
    return first + nu * psi.log() - nu * (psi - 1) / psi


def optimal_kl(mu0: torch.Tensor, sigma0: torch.Tensor, nu: float) -> torch.Tensor:
    """min over lambda, psi of nig_kl: (1/2) log(1 + mu0^2 / sigma0^2) + (1/2)(log nu - digamma(nu))."""
    return regularizer_terms(mu0, sigma0.log()) + nu_term(nu)


def standard_gamma(
    shape_parameter: float, size: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Gamma(k, 1) draws by Marsaglia and Tsang's method, from `generator` (so a model's seed covers them)."""
    boost = shape_parameter < 1
    k = shape_parameter + 1 if boost else shape_parameter
    d = k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(size, device=device)
    pending = torch.ones(size, dtype=torch.bool, device=device)
    while bool(pending.any()):  # accepts ~98% per round for k >= 1
        x = torch.randn(size, generator=generator, device=device)
        v = (1 + c * x) ** 3
        u = torch.rand(size, generator=generator, device=device)
        accept = pending & (v > 0) & (u.clamp_min(1e-30).log() < 0.5 * x**2 + d - d * v + d * v.clamp_min(1e-30).log())
        out = torch.where(accept, d * v, out)
        pending &= ~accept
    if boost:  # Gamma(k) = Gamma(k + 1) * U^(1/k)
        out = out * torch.rand(size, generator=generator, device=device) ** (1.0 / shape_parameter)
    return out


class NIGParameter(GaussianParameter):
    """A weight with the Normal-Inverse-Gamma posterior: w = mu0 + sigma0 e_mu + sqrt(psi e_s) e, e_s ~ IG(nu, 1)."""

    def __init__(self, source: GaussianParameter, nu: float, psi: float = 1.0) -> None:
        super().__init__(source.mu.detach(), 1.0)
        self.mu = source.mu
        self.log_sigma = source.log_sigma
        self.nu = nu
        self.psi = psi

    def sample_noise(self, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[S, 3, *shape]: e_mu, e (standard normal) and e_s (inverse gamma)."""
        shape = (samples, *self.mu.shape)
        device = self.mu.device
        e_mu = torch.randn(shape, generator=generator, device=device)
        e = torch.randn(shape, generator=generator, device=device)
        e_s = 1.0 / standard_gamma(self.nu, shape, generator, device)
        return torch.stack([e_mu, e, e_s], dim=1).to(self.mu.dtype)

    def weights_from(self, noise: torch.Tensor) -> torch.Tensor:
        """The hierarchical draw from its three noise channels."""
        return self.mu + self.draw_sigma() * noise[:, 0] + (self.psi * noise[:, 2]).sqrt() * noise[:, 1]
