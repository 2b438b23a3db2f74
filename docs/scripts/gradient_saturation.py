"""Whether a tracked stochastic model's softmax saturates: how often the cross-entropy's input gradient is exactly 0,
and what a loss unchanged by the logits' scale (autoattack-rand's APGD-DLR) finds beside FGSM and PGD.

For each run of the experiment in the store (the newest per defense), on the first N test examples at one eps: the
share of examples whose cross-entropy input gradient is exactly 0 for one draw (mean over 20 draws) and for the
average over 20 draws, the median gap between the top two logits, the share of examples and draws whose true class
float32's softmax rounds to probability 1 (the gradient keeps only the other classes' push), then the accuracy
(S_I = 10 fresh draws, one prediction) on clean inputs and under each --attacks entry (default: fgsm-posterior,
pgd-15-posterior and autoattack-rand), all judged alike.
With --float64 the model and inputs are cast to float64 first, where exp() underflows only below -745 instead of
-104: what the same attacks find when the softmax's round-off no longer zeroes their gradient.

Usage: python docs/scripts/gradient_saturation.py EXPERIMENT [--store sqlite:///mlflow.db] [--examples 1000] [--float64]
       [--attacks fgsm-posterior pgd-15-posterior autoattack-rand] [--attack-samples S_A]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from tracked_split import experiment_split, newest_models  # docs/scripts/tracked_split.py, beside this script

import advbayes
import advbayes.attacks

DRAWS = 20
ATTACKS = ("fgsm-posterior", "pgd-15-posterior", "autoattack-rand")


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int) -> float:
    """The share of examples whose input gradient of the summed cross-entropy over `samples` draws is exactly 0."""
    inputs = x.clone().requires_grad_(True)
    logits = model(inputs, samples=samples)  # [S, B, k]
    # len(logits) is `samples`, or 1 for a deterministic network (its one draw is all there is)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(len(logits)), reduction="sum")
    (gradient,) = torch.autograd.grad(loss, inputs)
    return float((gradient.flatten(1).abs().sum(1) == 0).double().mean())


def main() -> None:
    """Print, per run, the saturation figures and the accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--float64", action="store_true", help="cast the model and the inputs to float64 first")
    parser.add_argument("--attack-samples", type=int, default=None, help="S_A for every attack (default: each entry's)")
    parser.add_argument(
        "--attacks", nargs="*", default=list(ATTACKS), help="attack entries to run (default: %(default)s)"
    )
    args = parser.parse_args()
    pm, _, x, y, value_range = experiment_split(args.experiment, "test", args.examples)
    n = len(y)
    dtype = torch.float64 if args.float64 else torch.float32
    x = x.to(dtype)
    for run, model in newest_models(pm, args.store, args.experiment, seed=0):
        model = model.to(dtype)
        one_draw = sum(zero_gradient_share(model, x, y, 1) for _ in range(DRAWS)) / DRAWS
        with torch.no_grad():
            logits = model(x, samples=DRAWS)
        top2 = logits.topk(2, dim=-1).values
        # float32's softmax rounds the true class's probability to exactly 1 once the others' sum is below its
        # half-ulp (gaps above ~17): the cross-entropy's gradient then loses its true-class term, and its direction
        # only pushes the other logits up (a float64 loss keeps both).
        draws = logits.shape[0]  # DRAWS, or 1 for a deterministic network
        certain = logits.float().softmax(-1).gather(-1, y.expand(draws, -1).unsqueeze(-1)) == 1
        seed = run.data.tags.get("advbayes.seed", "?")
        name = run.data.tags.get("mlflow.runName", "?")
        print(f"{name} seed {seed} (run {run.info.run_id[:8]}), {n} test examples, eps {args.eps}, {dtype}:")
        print(
            f"  cross-entropy input gradient exactly 0: {one_draw:.3f} of examples for one draw (mean of {DRAWS}), "
            f"{zero_gradient_share(model, x, y, DRAWS):.3f} summed over {DRAWS} draws; median gap between the top "
            f"two logits {(top2[..., 0] - top2[..., 1]).median():.1f}; true class's float32 probability exactly 1 "
            f"(the gradient's true-class term lost) for {certain.double().mean():.3f} of examples and draws"
        )

        def accuracy(inputs: torch.Tensor) -> float:
            """One prediction of S_I = 10 fresh draws, as `accuracy` judges it."""
            probs, _ = advbayes.predict(model, inputs, samples=10)
            return float((probs.argmax(-1) == y).double().mean())

        print(f"  clean {accuracy(x):.3f}")
        for name in args.attacks:
            started = time.perf_counter()
            given = {} if args.attack_samples is None else {"attack_samples": args.attack_samples}
            attack = advbayes.attacks.entry(name, eps=args.eps, value_range=value_range, **given)
            x_adv = attack(model, x, y)
            print(f"  {name}: {accuracy(x_adv):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
