"""Training a posterior: its width per epoch, the convergence verdict, optimizers for variational parameters."""

from advbayes.posterior.convergence import (
    ConvergenceVerdict,
    convergence_findings,
    convergence_verdict,
    sampler_finding,
)
from advbayes.posterior.width import WIDTH_KEY, width_statistics

__all__ = [
    "WIDTH_KEY",
    "ConvergenceVerdict",
    "convergence_findings",
    "convergence_verdict",
    "sampler_finding",
    "width_statistics",
]
