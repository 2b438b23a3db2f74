"""HMC's cost on half-moons: the full-batch potential gradient, and whole pyro HMC iterations, with autograd's own
linear backward (what a user of pyro and torch gets) and with OrientedLinearGrad (what the hmc defense uses).

    python benchmarks/hmc_gradient.py [--widths 32 128 256 512] [--points 5000] [--repeats 7]

Prints per width the median milliseconds of one potential gradient and of one HMC iteration (20 leapfrog steps),
each as plain / oriented and their ratio, on one CPU thread.
"""

from __future__ import annotations

import argparse

import torch
from common import timed_together  # benchmarks/common.py, beside this script
from torch import nn

from advbayes import unflatten_parameters
from advbayes.builtins.datasets import HalfMoons
from advbayes_advbnn.hmc import full_batch_log_likelihood, sample_posterior

LEAPFROG_STEPS = 20
WARMUP, KEPT = 2, 4  # enough to time an iteration (the diagnostics need 4 kept), far too few for a posterior
ITERATIONS = WARMUP + KEPT


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128, 256, 512])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = HalfMoons(train_size=args.points, test_size=10).load("train").tensors
    cpu = torch.device("cpu")
    print(f"half-moons, {args.points} points, 2-W-2 MLP, one thread; median ms of {args.repeats} rounds")
    header = {"width": 6, "gradient plain": 15, "oriented": 9, "ratio": 6, "iteration plain": 16, " oriented": 9}
    print(" ".join(f"{name.strip():>{width}s}" for name, width in header.items()), f"{'ratio':>6s}")
    for width in args.widths:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 2))
        theta = nn.utils.parameters_to_vector(net.parameters()).detach().requires_grad_()
        likelihoods = {
            name: full_batch_log_likelihood(net, x, y, oriented=name == "oriented") for name in ("plain", "oriented")
        }
        gradient = timed_together(
            {
                name: lambda f=f: torch.autograd.grad(f(unflatten_parameters(net, theta)), theta)
                for name, f in likelihoods.items()
            },
            cpu,
            args.repeats,
        )
        iteration = timed_together(
            {
                name: lambda f=f: sample_posterior(
                    net,
                    f,
                    prior_sigma=1.0,
                    num_samples=KEPT,
                    warmup=WARMUP,
                    chains=1,
                    num_steps=LEAPFROG_STEPS,
                    step_size=1e-3,
                    nuts=False,
                    init_jitter=0.01,
                    seed=0,
                )
                for name, f in likelihoods.items()
            },
            cpu,
            max(1, args.repeats // 3),
        )
        g, it = {k: 1000 * v for k, v in gradient.items()}, {k: 1000 * v / ITERATIONS for k, v in iteration.items()}
        print(
            f"{width:>6d} {g['plain']:>15.2f} {g['oriented']:>9.2f} {g['plain'] / g['oriented']:>6.2f}"
            f" {it['plain']:>16.1f} {it['oriented']:>9.1f} {it['plain'] / it['oriented']:>6.2f}"
        )


if __name__ == "__main__":
    main()
