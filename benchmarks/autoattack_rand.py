"""autoattack-rand (APGD-CE + APGD-DLR, EOT over S_A = 20): advbayes's one-call expectation vs the official loop.

    python benchmarks/autoattack_rand.py [--device cpu|cuda] [--repeats N] [--steps N] [--batch N]

Networks: mnist-cnn trained on mnist-5k, made fully Bayesian or partially (the last quarter of the weight layers;
init_sigma 0.05), on 128 real test digits. "official" is pyautoattack's APGDAttack with eot_iter = 20 on the model
wrapped to return one draw's logits (20 calls of the whole network and 20 backwards per step), run for APGD-CE and
then APGD-DLR on the still-robust examples, as AutoAttack's version "rand" does. advbayes runs its autoattack-rand
entry (both APGD runs, each step one call with 20 draws, plus the R = 5 independent verdicts). Steps are cut to
--steps per APGD run (100 in the entry) so one repeat takes seconds; the per-step cost is what differs. "loop" runs
the same autoattack-rand protocol on the same model wrapped so that S draws are S calls of one draw (the naive loop
the sample dimension replaces): identical work, so its ratio is the sample dimension's gain. "official" does less
work: it skips an example as soon as one single-draw evaluation misclassifies it (the flaw autoattack-rand avoids)
and judges nothing R times. Ratios = their time / advbayes time."""

from __future__ import annotations

import argparse

import attrs
import torch
from common import OneDraw, timed, trained_mnist_cnn  # benchmarks/common.py, beside this script

from advbayes.components import EvalContext
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.stochastic import to_bayesian

EPS, SAMPLES = 0.1, 20


class DrawLoop(torch.nn.Module):
    """The naive loop over draws behind the same interface: forward(x, samples=S) makes S calls of one draw each."""

    takes_samples = True

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        return torch.cat([self.model(x, samples=1) for _ in range(samples)])


def official_rand(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """AutoAttack version 'rand' with the official APGD: APGD-CE, then APGD-DLR on what survived."""
    from pyautoattack.autopgd_base import APGDAttack

    wrapped = OneDraw(model)
    x_adv = x.clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for loss in ("ce", "dlr"):
        index = robust.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        attack = APGDAttack(wrapped, n_iter=steps, eps=EPS, loss=loss, eot_iter=SAMPLES, seed=0, device=x.device)
        found = attack.perturb(x[index], y[index])
        with torch.no_grad():
            still = wrapped(found).argmax(-1) == y[index]
        x_adv[index[~still]] = found[~still]
        robust[index[~still]] = False
    return x_adv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    registry = load_registry(pm=create_plugin_manager())
    entry = registry.build(
        "attacks", registry.resolve("attacks", "autoattack-rand", where=("benchmark", "autoattack-rand", "attack"))
    )

    def build(spec: object) -> object:
        resolved = registry.resolve("attacks", spec, where=("benchmark", "autoattack-rand", "attack"))
        return attrs.evolve(registry.build("attacks", resolved), steps=args.steps)

    ours = attrs.evolve(entry, eps=EPS, inference_samples=10).bind(EvalContext(build_attack=build, device=device))
    trained, x, y = trained_mnist_cnn(args.batch)
    x, y = x.to(device), y.to(device)
    print(
        f"device {device}, batch {args.batch}, S_A {SAMPLES}, {args.steps} steps per APGD run, "
        f"median of {args.repeats} repeats, threads {torch.get_num_threads()}"
    )
    print(f"{'network':<28} {'advbayes s':>11} {'loop s':>8} {'ratio':>7} {'official s':>11} {'ratio':>7}")
    for label, which in (("fully Bayesian mnist-cnn", None), ("partially Bayesian mnist-cnn", 0.25)):
        model = (
            to_bayesian(trained, init_sigma=0.05, seed=0)
            if which is None
            else to_bayesian(trained, which=which, init_sigma=0.05, seed=0)
        )
        model = model.to(device).eval()
        ours_time = timed(lambda: ours(model, x, y), device, args.repeats)
        loop_time = timed(lambda: ours(DrawLoop(model), x, y), device, args.repeats)
        official_time = timed(lambda: official_rand(model, x, y, args.steps), device, args.repeats)
        print(
            f"{label:<28} {ours_time:>11.3f} {loop_time:>8.3f} {loop_time / ours_time:>6.2f}x "
            f"{official_time:>11.3f} {official_time / ours_time:>6.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
