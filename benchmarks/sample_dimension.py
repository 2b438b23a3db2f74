"""Forward + backward of S draws: advbayes's sample dimension vs a Python loop over draws of the whole network.

    python benchmarks/sample_dimension.py [--device cpu|cuda] [--repeats N]

For mlp, mnist-cnn and a partially Bayesian mnist-cnn (last quarter of the weight layers Bayesian), at batch
16 and 128 and S = 1, 10, 50: the time of one EOT-style gradient (mean cross-entropy over draws, backward to
the input and every parameter) with each execution strategy and with the naive loop (S calls of the whole
network with one draw each, as torchattacks' EOTPGD computes its expectation). Ratio = loop time / time
(above 1: faster than the loop). "auto" is what runs by default: per layer, the strategy that measured faster.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import build_network, timed  # benchmarks/common.py, beside this script

from advbayes.stochastic import StochasticModel, forget_choices, to_bayesian


def step(model: StochasticModel, x: torch.Tensor, y: torch.Tensor, samples: int, loop: bool) -> None:
    x = x.clone().requires_grad_(True)
    if loop:
        logits = torch.cat([model(x, samples=1) for _ in range(samples)])
    else:
        logits = model(x, samples=samples)
    loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]))
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; median of {args.repeats}")
    print(
        f"{'network':<22}{'B':>5}{'S':>4}{'loop ms':>10}{'loop-strat':>12}{'batched':>10}{'auto':>10}"
        "  ratios (loop / strategy)"
    )
    for kind, which in (("mlp", "all"), ("mnist-cnn", "all"), ("mnist-cnn last 1/4", 0.25)):
        base = build_network(kind.split()[0])
        for batch in args.batches:
            x = torch.rand(batch, 1, 28, 28, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            for samples in args.samples:
                times = {}
                for strategy in ("loop", "batched", "auto"):
                    forget_choices()
                    model = to_bayesian(base, which=which, init_sigma=0.05, strategy=strategy, seed=0).to(device)
                    times[strategy] = timed(lambda: step(model, x, y, samples, loop=False), device, args.repeats)
                naive = to_bayesian(base, which=which, init_sigma=0.05, strategy="loop", seed=0).to(device)
                times["naive"] = timed(lambda: step(naive, x, y, samples, loop=True), device, args.repeats)
                ratios = "  ".join(f"{s} {times['naive'] / times[s]:.2f}x" for s in ("loop", "batched", "auto"))
                print(
                    f"{kind:<22}{batch:>5}{samples:>4}{times['naive'] * 1e3:>10.1f}{times['loop'] * 1e3:>12.1f}"
                    f"{times['batched'] * 1e3:>10.1f}{times['auto'] * 1e3:>10.1f}  {ratios}"
                )


if __name__ == "__main__":
    main()
