"""EOT-PGD (S_A = 10, 20 steps): advbayes's one-call expectation vs a Python loop over draws, and torchattacks' EOTPGD.

    python benchmarks/eot_pgd.py [--device cpu|cuda] [--repeats N] [--hog P]

With --hog P, P busy-looping processes run beside it for the whole measurement, including the first call of each
size, where advbayes measures its execution strategies: the choice must not turn into a loss under load.

Networks: a Bayesian mlp (2 x 128), a fully Bayesian mnist-cnn and a partially Bayesian mnist-cnn (last quarter
of the weight layers Bayesian), at batch 16 and 128. "loop" computes each step's gradient the way torchattacks'
EOTPGD does: S_A separate calls of the whole network with one draw each, one backward each. The three are timed
in alternating rounds (median; the first call of each, where advbayes measures its choices, apart). torchattacks is
timed on the same model (wrapped to return one draw's logits) when it is installed. advbayes uses the mean of
per-draw losses (expectation = "loss"), the same quantity EOTPGD averages. Ratio = loop time / time.
"""

from __future__ import annotations

import argparse

import attrs
import torch
import torch.nn.functional as F
from common import OneDraw, build_network, cpu_hog, timed_together  # benchmarks/common.py, beside this script

from advbayes.registry import load_registry
from advbayes.stochastic import to_bayesian

SAMPLES, STEPS, EPS, ALPHA = 10, 20, 0.3, 0.03


def loop_eot_pgd(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The naive expectation: S_A calls with one draw each per step."""
    x_adv = x.clone()
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        gradient = torch.zeros_like(x)
        for _ in range(SAMPLES):
            loss = F.cross_entropy(model(x_adv, samples=1)[0], y)
            gradient += torch.autograd.grad(loss, x_adv)[0]
        x_adv = (x + (x_adv.detach() + ALPHA * gradient.sign() - x).clamp(-EPS, EPS)).clamp(0, 1)
    return x_adv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--hog", type=int, default=0, help="busy-looping processes beside the measurement")
    args = parser.parse_args()
    with cpu_hog(args.hog):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Time loop, advbayes and torchattacks per network and batch size, one line each."""
    device = torch.device(args.device)
    registry = load_registry()
    pgd = registry.build(
        "attacks",
        registry.resolve(
            "attacks",
            {
                "use": "pgd",
                "eps": EPS,
                "steps": STEPS,
                "step_size": ALPHA,
                "attack_samples": SAMPLES,
                "expectation": "loss",
                "random_start": False,
                "keep": "last",
            },
            where=("benchmark", "eot", "attack"),
        ),
    )
    pgd = attrs.evolve(pgd, value_range=(0.0, 1.0))
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"EOT-PGD S_A={SAMPLES}, {STEPS} steps; median of {args.repeats}; time per batch; "
        f"{args.hog} busy process(es) beside it"
    )
    header = f"{'network':<22}{'B':>5}{'loop s':>9}{'advbayes s':>12}{'ratio':>8}"
    print(header + (f"{'torchattacks s':>16}{'ratio':>8}" if torchattacks else "  (torchattacks not installed)"))
    for kind, which in (("mlp", "all"), ("mnist-cnn", "all"), ("mnist-cnn last 1/4", 0.25)):
        model = to_bayesian(build_network(kind.split()[0]), which=which, init_sigma=0.05, seed=0).to(device).eval()
        for batch in args.batches:
            x = torch.rand(batch, 1, 28, 28, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            runs = {"loop": lambda: loop_eot_pgd(model, x, y), "advbayes": lambda: pgd(model, x, y)}
            if torchattacks:
                attack = torchattacks.EOTPGD(
                    OneDraw(model).eval(),
                    eps=EPS,
                    alpha=ALPHA,
                    steps=STEPS,
                    eot_iter=SAMPLES,
                    random_start=False,
                )
                attack.set_device(device)
                runs["torchattacks"] = lambda: attack(x, y)
            times = timed_together(runs, device, args.repeats)
            loop, ours = times["loop"], times["advbayes"]
            line = f"{kind:<22}{batch:>5}{loop:>9.2f}{ours:>12.2f}{loop / ours:>7.2f}x"
            if torchattacks:
                line += f"{times['torchattacks']:>16.2f}{loop / times['torchattacks']:>7.2f}x"
            print(line)


if __name__ == "__main__":
    main()
