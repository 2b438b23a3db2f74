"""What a leaderboard card costs before starting one: `advbayes bench` on one defense, projected from measured times.

    python benchmarks/bench_cost.py DEFENSE [--dataset mnist-5k] [--device cpu|cuda] [--epochs N] [--examples 128]
        [--train-epochs 1]

The same measurement as `advbayes bench DEFENSE --estimate` (advbayes.lab.cost): the seconds of a training epoch
of the defense (--train-epochs, default 1) and of its deterministic twin, and the seconds per test example of every
attack of every threat model at its largest radius and with its full budget (at 1e-4 of the smallest radius, where
nothing breaks, per example the network gets right), timed on --examples test examples of the network so trained.
An attack skips what the network gets wrong and stops on what it broke, so its time at a radius follows the timed
network's accuracy (printed, with a warning below 0.5) and robustness; the full budget does not. Then projects a
card: the epochs (the bench experiment's cap unless --epochs) x the epoch time, plus per threat model the full test
split x its radii, each costing at least the largest radius's time and at most the full budget's, times the
protocol's seeds.
Run it with --device cuda on a GPU to project a GPU card from that GPU's own measured times.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from advbayes.lab.cost import estimate_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("defense")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs to project (default: the cap)")
    parser.add_argument("--examples", type=int, default=128, help="test examples each attack is timed on")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs the timed network is trained first")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    projected = estimate_bench(
        args.defense,
        dataset=args.dataset,
        device=args.device,
        examples=args.examples,
        epochs=args.epochs,
        train_epochs=args.train_epochs,
        say=lambda line: print(line, file=sys.stderr),
    )
    print("\n".join(projected.lines()))


if __name__ == "__main__":
    main()
