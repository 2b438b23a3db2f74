"""A whole evaluation of a Bayesian network (predictions with S draws, no autograd), its pass-size choice included.

    python benchmarks/evaluation_pass_size.py [--device cpu|cuda] [--repeats N] [--images N] [--samples S]

Each repeat forgets every measured choice first, as a new process would, so the time of "auto" includes its
measurement of how many draws to run per pass. Against: the naive loop (S calls of one draw per batch, what a
torchbnn-style model or torchattacks' EOT does), the "loop" and "batched" strategies (all S draws in one pass,
per-draw or batched kernels), on a fully Bayesian mnist-cnn and on its last quarter made Bayesian.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import build_network, timed_together  # benchmarks/common.py, beside this script

from advbayes.stochastic import StochasticModel, forget_choices, to_bayesian


def evaluation(model: StochasticModel, images: torch.Tensor, batch: int, samples: int, loop: bool) -> Callable[[], int]:
    """One evaluation: every batch's S-draw prediction, after forgetting what auto had measured."""

    def run() -> int:
        forget_choices()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(images), batch):
                x = images[start : start + batch]
                if loop:
                    probabilities = sum(model(x, samples=1)[0].softmax(-1) for _ in range(samples))
                else:
                    probabilities = model(x, samples=samples).softmax(-1).sum(0)
                correct += int(probabilities.argmax(-1).eq(0).sum())
        return correct

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000, help="digits per evaluation (the last batch is smaller)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=20, help="S_I, draws per prediction")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.rand(args.images, 1, 28, 28, device=device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; {args.images} images, "
        f"batch {args.batch}, S {args.samples}; median of {args.repeats} whole evaluations"
    )
    print(f"{'network':<22}{'naive loop s':>13}{'loop s':>9}{'batched s':>11}{'auto s':>9}  auto vs naive, vs best")
    for kind, which in (("mnist-cnn", "all"), ("mnist-cnn last 1/4", 0.25)):
        base = build_network("mnist-cnn")
        models = {
            name: to_bayesian(base, which=which, init_sigma=0.05, strategy=name, seed=0).to(device).eval()
            for name in ("loop", "batched", "auto")
        }
        runs = {"naive": evaluation(models["loop"], images, args.batch, args.samples, loop=True)}
        runs.update({name: evaluation(m, images, args.batch, args.samples, loop=False) for name, m in models.items()})
        seconds = timed_together(runs, device, args.repeats)
        best = min(seconds["loop"], seconds["batched"])
        print(
            f"{kind:<22}{seconds['naive']:>13.2f}{seconds['loop']:>9.2f}{seconds['batched']:>11.2f}"
            f"{seconds['auto']:>9.2f}  {seconds['naive'] / seconds['auto']:.2f}x, {best / seconds['auto']:.2f}x"
        )


if __name__ == "__main__":
    main()
