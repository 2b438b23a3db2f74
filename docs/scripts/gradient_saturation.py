"""Whether a tracked stochastic model's softmax saturates: how often the cross-entropy's input gradient is exactly 0,
and what a loss unchanged by the logits' scale (autoattack-rand's APGD-DLR) finds beside FGSM and PGD.

For each run of the experiment in the store (the newest per defense), on the first N test examples at one eps: the
share of examples whose cross-entropy input gradient is exactly 0 for one draw (mean over 20 draws) and for the
average over 20 draws, the median gap between the top two logits, then the accuracy (S_I = 10 fresh draws, one
prediction) on clean inputs and under fgsm-posterior, pgd-15-posterior and autoattack-rand, all judged alike.
With --float64 the model and inputs are cast to float64 first, where exp() underflows only below -745 instead of
-104: what the same attacks find when the softmax's round-off no longer zeroes their gradient.

Usage: python docs/scripts/gradient_saturation.py EXPERIMENT [--store sqlite:///mlflow.db] [--examples 1000] [--float64]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

import advbayes
import advbayes.attacks
from advbayes.engine.building import tracked_model
from advbayes.lab.sources import latest_per_defense
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.tracking import tracked_runs

DRAWS = 20
ATTACKS = ("fgsm-posterior", "pgd-15-posterior", "autoattack-rand")


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int) -> float:
    """The share of examples whose input gradient of the summed cross-entropy over `samples` draws is exactly 0."""
    inputs = x.clone().requires_grad_(True)
    logits = model(inputs, samples=samples)  # [S, B, k]
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(samples), reduction="sum")
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
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    torch.set_num_threads(1)
    pm = create_plugin_manager()
    registry = load_registry(pm=pm)
    spec = registry.resolve_experiment(args.experiment)
    test = registry.build("datasets", spec["dataset"]).load("test")
    n = min(args.examples, len(test))
    dtype = torch.float64 if args.float64 else torch.float32
    x = torch.stack([torch.as_tensor(test[i][0]) for i in range(n)]).to(dtype)
    y = torch.as_tensor([int(test[i][1]) for i in range(n)]).long()
    for run in latest_per_defense(tracked_runs(args.store, [args.experiment])):
        torch.manual_seed(0)
        model = tracked_model(pm, run.info.run_id, args.store, torch.device("cpu")).to(dtype)
        one_draw = sum(zero_gradient_share(model, x, y, 1) for _ in range(DRAWS)) / DRAWS
        with torch.no_grad():
            top2 = model(x, samples=DRAWS).topk(2, dim=-1).values
        seed = run.data.tags.get("advbayes.seed", "?")
        print(f"seed {seed} (run {run.info.run_id[:8]}), {n} test examples, eps {args.eps}, {dtype}:")
        print(
            f"  cross-entropy input gradient exactly 0: {one_draw:.3f} of examples for one draw (mean of {DRAWS}), "
            f"{zero_gradient_share(model, x, y, DRAWS):.3f} summed over {DRAWS} draws; median gap between the top "
            f"two logits {(top2[..., 0] - top2[..., 1]).median():.1f}"
        )

        def accuracy(inputs: torch.Tensor) -> float:
            """One prediction of S_I = 10 fresh draws, as `accuracy` judges it."""
            probs, _ = advbayes.predict(model, inputs, samples=10)
            return float((probs.argmax(-1) == y).double().mean())

        print(f"  clean {accuracy(x):.3f}")
        for name in ATTACKS:
            started = time.perf_counter()
            x_adv = advbayes.attacks.entry(name, eps=args.eps)(model, x, y)
            print(f"  {name}: {accuracy(x_adv):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
