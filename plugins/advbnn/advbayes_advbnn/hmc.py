"""An HMC reference posterior for small networks (pyro-ppl's HMC / NUTS), stored as the model's sample dimension.

Why pyro: its HMC and NUTS are maintained, adapt the step size and a diagonal mass matrix during warm-up, take a
plain potential function over a flat parameter vector (no pyro model needed around an nn.Module), and ship the
split R-hat and effective-sample-size estimators. `posteriors` offers stochastic-gradient MCMC but no exact
(Metropolis-corrected) HMC, which is what a reference posterior needs.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, ClassVar

import attrs
import torch
from torch import nn
from torch.func import functional_call

from advbayes import (
    Defense,
    LossOutput,
    SampleEnsemble,
    TrainContext,
    ensemble_accuracy,
    first_examples,
    mean_cross_entropy,
    param,
    unflatten_parameters,
)
from advbayes_advbnn.linear_grad import OrientedLinearGrad

RHAT_LIMIT = 1.1  # split R-hat above this on any function-space quantity: the chains disagree
REPORT_EVERY = 30.0  # seconds between progress lines when there is no progress bar
PROBE = 32  # training examples whose predicted probabilities the chains must agree on
CHUNK_BYTES = 2**28  # about the most chain_diagnostics' effective sample size holds at once


@attrs.frozen(kw_only=True)
class ChainSamples:
    """Samples [chains, N, P] of a flat parameter vector, and what it took to draw them."""

    samples: torch.Tensor
    seconds: float
    accept_rate: float
    step_size: float = math.nan  # the adapted leapfrog step size, mean over chains
    leapfrog_steps: float = math.nan  # leapfrog steps per iteration (drawn: their mean), mean over chains

    @property
    def samples_per_s(self) -> float:
        """Kept and warm-up iterations are not told apart: kept samples over all the sampling time."""
        return self.samples.shape[0] * self.samples.shape[1] / max(self.seconds, 1e-9)


def chain_diagnostics(tracked: torch.Tensor) -> dict[str, float]:
    """Split R-hat (max, median) and effective sample size (min, median) of quantities [chains, N, Q]."""
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    tracked = tracked.double()
    # a quantity no sample changed (saturated, or a chain that never moved it) has no R-hat (0 / 0): left out
    varies = tracked.flatten(2).std(dim=1).amax(dim=0) > 0
    tracked = tracked.flatten(2)[..., varies]
    if not tracked.shape[-1]:
        return dict.fromkeys(("r_hat_max", "r_hat_median", "ess_min", "ess_median"), math.nan)
    # pyro's ESS holds a [N / 2, N / 2, Q] tensor (its running minimum): 9.3 GB for 200 samples of the MNIST MLP's
    # 118,282 weights. Quantities are independent, so a chunk of them at a time gives the same values in less.
    step = max(1, CHUNK_BYTES // (8 * tracked.shape[1] ** 2))
    chunks = tracked.split(step, dim=-1)
    r_hat = torch.cat([split_gelman_rubin(chunk, chain_dim=0, sample_dim=1) for chunk in chunks])
    ess = torch.cat([effective_sample_size(chunk, chain_dim=0, sample_dim=1) for chunk in chunks])
    # pyro's estimate goes negative when lag-1 autocorrelation is below -0.5 (antithetic samples, or noise on a few
    # samples: -2,612 on 2 x 6 MNIST samples); Stan bounds the autocorrelation time below by 1 / log10(draws), so
    # the ESS by draws x log10(draws), and so does this
    draws = tracked.shape[0] * tracked.shape[1]
    cap = draws * math.log10(draws)
    ess = torch.where((ess < 0) | (ess > cap), torch.full_like(ess, cap), ess)
    return {
        "r_hat_max": float(r_hat.max()),
        "r_hat_median": float(r_hat.median()),
        "ess_min": float(ess.min()),
        "ess_median": float(ess.median()),
    }


def jittered_steps_hmc(
    potential: Callable[..., torch.Tensor],
    *,
    step_size: float,
    num_steps: int,
    trajectory_length: float = 0.0,
    adapt_mass_matrix: bool = True,
) -> Any:
    """pyro's HMC making, per iteration, a number of leapfrog steps drawn uniformly from ceil(n / 2) to n, at whatever
    step size warm-up adapts: n = num_steps, or, with trajectory_length > 0, that length over the current step size
    (at least 1). `draws` keeps the counts drawn.

    Why not pyro's HMC as it is: it keeps the trajectory LENGTH step_size x num_steps of its constructor and divides
    it by the adapted step size, so 40 steps asked at step size 1e-3 integrate for 0.04 time units, one leapfrog step
    once warm-up has adapted the step size to 0.04 or more; and given a length, it makes the same count every time.
    Why drawn, not fixed: a fixed count can integrate one whole period of the (mass-adapted) posterior and return to
    where it started (10 steps of 0.66 on a unit Gaussian: ESS 2 of 1,200 samples); a count drawn from an interval
    breaks that (Neal 2011, section 5.4.2.2).
    """
    from pyro.infer.mcmc import HMC

    class JitteredStepsHMC(HMC):  # type: ignore[misc]
        draws: list[int]  # the step count of every iteration so far

        @property
        def num_steps(self) -> int:
            # pyro reads this once per iteration; torch's generator is the one pyro.set_rng_seed seeds
            most = max(1, round(trajectory_length / self.step_size)) if trajectory_length > 0 else num_steps
            steps = int(torch.randint((most + 1) // 2, most + 1, ()).item())
            self.draws.append(steps)
            return steps

    kernel = JitteredStepsHMC(
        potential_fn=potential,
        step_size=step_size,
        num_steps=num_steps,
        adapt_step_size=True,
        adapt_mass_matrix=adapt_mass_matrix,
    )
    kernel.draws = []
    return kernel


def prior_only_weights(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Which entries of the flat parameter vector the likelihood cannot reach, as a bool mask: the first layer's
    weights on input features that are zero in every example of x, when that layer is a Linear on the flattened
    input (an MLP). Their gradient is a sum of products with those zeros, so their posterior is exactly the prior."""
    mask = torch.zeros(sum(p.numel() for p in net.parameters()), dtype=torch.bool)
    layers = list(net) if isinstance(net, nn.Sequential) else [net]
    first = next((layer for layer in layers if not isinstance(layer, nn.Flatten | nn.Identity)), None)
    features = x.flatten(1)
    if not isinstance(first, nn.Linear) or first.in_features != features.shape[1]:
        return mask
    zero = (features == 0).all(dim=0).to(mask.device)
    offset = 0
    for parameter in net.parameters():
        if parameter is first.weight:
            mask[offset : offset + parameter.numel()] = zero.expand(first.out_features, -1).flatten()
        offset += parameter.numel()
    return mask


def prior_only_check(kept: torch.Tensor, mask: torch.Tensor, prior_sigma: float) -> tuple[float, float]:
    """The kept samples' mean square of the prior-only weights over prior_sigma^2 (1 on a posterior), and how far
    from 1 it may fall on one: 4 standard errors of the estimate, sqrt(2 / m) for m independent N(0, sigma^2)
    weights however correlated the samples of each (nan, nan without such weights)."""
    m = int(mask.sum())
    if not m:
        return math.nan, math.nan
    ratio = float(kept[..., mask.to(kept.device)].double().square().mean() / prior_sigma**2)
    return ratio, 4 * math.sqrt(2 / m)


def sample_posterior(
    net: nn.Module,
    log_likelihood: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    prior_sigma: float,
    num_samples: int,
    warmup: int,
    chains: int,
    num_steps: int,
    step_size: float,
    nuts: bool,
    init_jitter: float,
    seed: int,
    progress: bool = False,
    trajectory_length: float = 0.0,
    adapt_mass_matrix: bool = True,
) -> ChainSamples:
    """HMC (or NUTS) on p(theta | data) ~ exp(log_likelihood(theta)) N(theta; 0, prior_sigma^2 I), one chain after
    another from the network's current weights plus N(0, init_jitter^2) (chains must start apart for R-hat).

    HMC makes ceil(num_steps / 2) to `num_steps` leapfrog steps per iteration; with `trajectory_length` > 0, from
    half of that length to all of it, in steps of the adapted size. Warm-up adapts the step size, and a diagonal mass
    matrix unless adapt_mass_matrix is False (an identity one)."""
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    start = nn.utils.parameters_to_vector(net.parameters()).detach()
    buffers = dict(net.named_buffers())

    def potential(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        theta = params["theta"]
        prior = theta.square().sum() / (2 * prior_sigma**2)
        return prior - log_likelihood({**unflatten_parameters(net, theta), **buffers})

    chain_samples = []
    acceptance: dict[int, float] = {}  # per chain, over its kept iterations
    step_sizes, steps = [], []
    started = time.perf_counter()
    said = [started]

    def report(chain: int) -> Callable[..., None]:
        """Keeps the chain's acceptance rate so far; without a terminal (no progress bar), a line at least every
        30 s: chain, stage, iteration, time."""

        def hook(kernel: Any, params: Any, stage: str, index: int) -> None:
            if not stage.lower().startswith("warm"):
                # from the kernel's counts: MCMC.diagnostics() also computes every weight's ESS and R-hat, which
                # for one chain of the 118,282-weight MNIST MLP took 6.7 GB and 7 s at 200 samples, 14 GB at 300,
                # and ran out of 23 GB at 400
                acceptance[chain] = float(kernel.diagnostics()["acceptance rate"])
            now = time.perf_counter()
            if progress or now - said[0] < REPORT_EVERY:
                return
            said[0] = now
            total = warmup if stage.lower().startswith("warm") else num_samples
            last = getattr(kernel, "draws", [])[-1:]  # NUTS draws no count
            print(
                f"hmc chain {chain + 1}/{chains}: {stage.lower()} {index + 1}/{total}, step size "
                f"{float(getattr(kernel, 'step_size', math.nan)):.3g}"
                + "".join(f", {n} leapfrog steps" for n in last)
                + f", {now - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )

        return hook

    for chain in range(chains):
        pyro.set_rng_seed(seed + chain)
        generator = torch.Generator(device="cpu").manual_seed(seed + 1000 + chain)
        jitter = torch.randn(start.shape, generator=generator).to(start) * init_jitter
        if nuts:
            kernel: Any = NUTS(
                potential_fn=potential, step_size=step_size, adapt_step_size=True, adapt_mass_matrix=adapt_mass_matrix
            )
        else:
            kernel = jittered_steps_hmc(
                potential,
                step_size=step_size,
                num_steps=num_steps,
                trajectory_length=trajectory_length,
                adapt_mass_matrix=adapt_mass_matrix,
            )
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup,
            initial_params={"theta": start + jitter},
            disable_progbar=not progress,
            hook_fn=report(chain),
        )
        mcmc.run()
        chain_samples.append(mcmc.get_samples()["theta"].detach())
        step_sizes.append(float(kernel.step_size))
        if nuts:  # NUTS chooses each trajectory's length itself: no one step count to report
            steps.append(math.nan)
        else:  # reading num_steps here would draw one more count: the mean of those the chain drew
            steps.append(sum(kernel.draws) / len(kernel.draws))
    seconds = time.perf_counter() - started
    return ChainSamples(
        samples=torch.stack(chain_samples),
        seconds=seconds,
        accept_rate=sum(acceptance.values()) / chains,
        step_size=sum(step_sizes) / chains,
        leapfrog_steps=sum(steps) / chains,
    )


def full_batch_log_likelihood(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, oriented: bool = True
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """log p(y | x, params) summed over the whole batch, as a function of net's parameters (HMC's likelihood)."""

    def log_likelihood(params: dict[str, torch.Tensor]) -> torch.Tensor:
        # OrientedLinearGrad: a wide first layer's weight gradient, 3x faster per leapfrog step on CPU
        with OrientedLinearGrad() if oriented else nullcontext():
            logits = functional_call(net, params, (x,))
        return -nn.functional.cross_entropy(logits, y, reduction="sum")

    return log_likelihood


def function_space(
    net: nn.Module,
    log_likelihood: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    probe: torch.Tensor,
    kept: torch.Tensor,
) -> torch.Tensor:
    """What the convergence verdict judges, per kept sample of [chains, N, P]: its log-likelihood and the probe
    examples' log-probabilities, as [chains, N, 1 + probes x classes]."""

    def function_of(theta: torch.Tensor) -> torch.Tensor:
        params = unflatten_parameters(net, theta)
        outputs = functional_call(net, params, (probe,)).log_softmax(-1).flatten()
        return torch.cat([log_likelihood(params).view(1), outputs])

    with torch.no_grad():
        return torch.stack([torch.stack([function_of(theta) for theta in chain]) for chain in kept])


@attrs.frozen(kw_only=True)
class HMCDefense(Defense):
    """HMC reference posterior: a MAP warm start for `epochs`, then `chains` x `num_samples` full-batch HMC samples
    stored as the sample dimension (S draws = S of the stored samples), with split R-hat and ESS logged."""

    name: ClassVar[str] = "hmc"
    default_optimizer: ClassVar[str] = "adam"
    default_lr: ClassVar[float] = 1e-3
    prior_sigma: float = param(1.0, gt=0.0, help="prior std of every weight (Carbone et al.: N(0, 1))")
    num_samples: int = param(100, kind=int, ge=4, le=100_000, help="samples kept per chain")
    warmup: int = param(100, kind=int, ge=0, le=100_000, help="warm-up iterations per chain (adaptation)")
    chains: int = param(2, kind=int, ge=1, le=16, help="chains, one after another (R-hat needs 2 or more)")
    num_steps: int = param(
        20, kind=int, ge=1, le=10_000, help="leapfrog steps per iteration, at most (drawn from half of it up)"
    )
    trajectory_length: float = param(
        0.0, ge=0.0, help="> 0: integrate from half of this long to this long per iteration instead of num_steps"
    )
    adapt_mass_matrix: bool = param(
        True, kind=bool, help="adapt a diagonal mass matrix in warm-up (false: identity, a prior-scaled trajectory)"
    )
    step_size: float = param(1e-3, gt=0.0, le=10.0, help="initial leapfrog step size (adapted in warm-up)")
    nuts: bool = param(False, kind=bool, help="NUTS instead of HMC with num_steps")
    thin: int = param(1, kind=int, ge=1, le=1000, help="keep every thin-th sample")
    init_jitter: float = param(0.01, ge=0.0, help="std of the noise added to the warm start for each chain")
    max_train: int = param(10_000, kind=int, ge=1, help="full-batch HMC on at most this many training examples")
    inference_samples: int = param(10, kind=int, ge=1, help="S_I: stored samples averaged at prediction")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The network in a SampleEnsemble with room for every kept sample (it answers [1, B, k] until filled)."""
        kept = self.chains * math.ceil(self.num_samples / self.thin)
        return SampleEnsemble(model, kept, seed=int(torch.randint(0, 2**62, (1,)).item()))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], context: TrainContext) -> LossOutput:
        """The warm start: the MAP objective, cross-entropy + |theta|^2 / (2 prior_sigma^2 n_train)."""
        x, y = batch
        logits = model(x, samples=1)
        ce = mean_cross_entropy(logits, y)
        prior = sum(p.square().sum() for p in model.parameters()) / (2 * self.prior_sigma**2 * context.n_train)
        return LossOutput(loss=ce + prior, parts={"ce": ce.detach(), "acc": ensemble_accuracy(logits.detach(), y)})

    def after_training(self, model: nn.Module, context: TrainContext) -> Mapping[str, float]:
        """Draw the chains on the training split (full batch), store the kept samples, return the diagnostics."""
        if not isinstance(model, SampleEnsemble):
            raise TypeError(f"hmc: expected the SampleEnsemble its prepare() built, got {type(model).__name__}")
        net = model.net
        x, y = first_examples(context.train, self.max_train, context.device)
        net.eval()

        log_likelihood = full_batch_log_likelihood(net, x, y)
        drawn = sample_posterior(
            net,
            log_likelihood,
            prior_sigma=self.prior_sigma,
            num_samples=self.num_samples,
            warmup=self.warmup,
            chains=self.chains,
            num_steps=self.num_steps,
            step_size=self.step_size,
            nuts=self.nuts,
            init_jitter=self.init_jitter,
            seed=context.seed,
            progress=context.progress,
            trajectory_length=self.trajectory_length,
            adapt_mass_matrix=self.adapt_mass_matrix,
        )
        kept = drawn.samples[:, :: self.thin]
        # A network's weights are not identifiable (permuting hidden units leaves the function unchanged), so chains
        # are judged in function space, as Izmailov et al. (2021) do: the log-likelihood and the predicted
        # log-probabilities of PROBE training examples (probabilities saturate at 1 in float32 and then have no
        # R-hat); weight-space R-hat is logged beside them.
        function = function_space(net, log_likelihood, x[:PROBE], kept)
        metrics = {f"hmc_{k}": v for k, v in chain_diagnostics(function).items()}
        metrics.update({f"hmc_weight_{k}": v for k, v in chain_diagnostics(kept).items()})
        # Which part disagrees, beside the verdict: the log-likelihood alone, and the weights' norm (unchanged by
        # permuting units, so comparable across chains; a norm still growing is a chain still drifting, and the
        # logits' scale, hence the far-off classes' log-probabilities, drift with it).
        metrics["hmc_loglik_r_hat"] = chain_diagnostics(function[..., :1])["r_hat_max"]
        metrics["hmc_norm_r_hat"] = chain_diagnostics(kept.norm(dim=-1, keepdim=True))["r_hat_max"]
        metrics.update(hmc_accept_rate=drawn.accept_rate, hmc_samples_per_s=drawn.samples_per_s)
        metrics.update(hmc_step_size=drawn.step_size, hmc_leapfrog_steps=drawn.leapfrog_steps)
        # A check with a known answer, where the network has them: the weights on inputs that are zero in every
        # training example have the prior as posterior, so two chains that agree but have not yet spread them to
        # the prior's variance (both still drifting from one warm start) are not converged either.
        mask = prior_only_weights(net, x)
        ratio, tolerance = prior_only_check(kept, mask, self.prior_sigma)
        metrics["hmc_prior_only_weights"] = float(mask.sum())
        if mask.any():
            metrics["hmc_prior_only_variance_ratio"] = ratio
        model.store(kept.reshape(-1, kept.shape[-1]))
        converged = metrics["hmc_r_hat_max"] < RHAT_LIMIT and not abs(ratio - 1) > tolerance  # nan: no such weights
        return {**{f"posterior/{k}": v for k, v in metrics.items()}, "posterior/converged": float(converged)}
