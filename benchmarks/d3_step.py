"""One D3 training step (loss and backward) of the unpenalized BNN, d3-bnn at the paper's TFP initialization, on
mnist-cnn with its back 60 % Bayesian: batch 64 of real digits, K = 10 draws.

    python benchmarks/d3_step.py [--device cuda] [--batch 64] [--repeats 9]

Prints the median seconds of three ways to take the step, each computing the loss's gradients and Omega_M:
- advbayes: one forward on K copies of the batch; Omega_M read off the loss's own backward (d3's loss);
- two backwards: the same forward, then a separate backward for the per-draw input gradients before the loss's
  (what d3's loss did before; the penalized variants still need it, as their penalty is trained through);
- draw loop: K forward and backward passes of one draw each (what a user writes without a sample dimension).
Timed together, in alternating order, on one CPU thread (or the GPU), so load from elsewhere hits all alike.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import build_network, mnist_test_digits, timed_together  # benchmarks/common.py, beside this script

from advbayes import kl, mean_cross_entropy
from advbayes.registry import load_registry
from advbayes_d3.defenses import per_draw_input_gradients
from advbayes_d3.penalties import omega_m, unit_directions


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    registry = load_registry()
    defense = registry.build("defenses", registry.resolve("defenses", "d3-bnn-tfp", where=("benchmark", "d3", "")))
    model = defense.prepare(build_network("mnist-cnn")).to(device).train()
    x, y = (t.to(device) for t in mnist_test_digits(args.batch))
    draws = defense.draws
    context = argparse.Namespace(n_train=2000)  # the loss reads only n_train from its context

    def kl_term() -> torch.Tensor:
        return defense.alpha / context.n_train * kl(model, defense.prior_sigma)

    def advbayes_step() -> float:
        model.zero_grad()
        output = defense.loss(model, (x, y), context)
        output.loss.backward()
        return float(output.parts["omega_m"])

    def two_backwards() -> float:
        model.zero_grad()
        logits, gradients = per_draw_input_gradients(model, x, y, draws, "loss", create_graph=False)
        value = omega_m(unit_directions(gradients)).mean()
        (mean_cross_entropy(logits, y) + kl_term()).backward()
        return float(value)

    def draw_loop() -> float:
        model.zero_grad()
        directions = []
        for _ in range(draws):
            copy = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(copy, samples=1)[0], y, reduction="sum") / (draws * len(y))
            loss.backward()  # the parameters' gradients accumulate over the draws
            directions.append(copy.grad)  # type: ignore[arg-type]
        kl_term().backward()
        return float(omega_m(unit_directions(torch.stack(directions))).mean())

    runs = {"advbayes": advbayes_step, "two backwards": two_backwards, "draw loop": draw_loop}
    for name, run in runs.items():  # a broken way must not be timed as a fast one
        value = run()
        if not 0.0 < value <= 1.0 + 1e-6:
            raise SystemExit(f"{name}: Omega_M is {value}, expected a value in (0, 1]")
    seconds = timed_together(runs, device, args.repeats)
    print(f"d3-bnn-tfp step on mnist-cnn, batch {args.batch}, K = {draws}, {device}; median s of {args.repeats}")
    base = seconds["advbayes"]
    for name, value in seconds.items():
        print(f"{name:>14s} {value:8.3f} s  {value / base:5.2f}x advbayes's time")


if __name__ == "__main__":
    main()
