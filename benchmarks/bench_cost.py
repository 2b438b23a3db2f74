"""What a leaderboard card costs before starting one: `advbayes bench` on one defense, projected from measured times.

    python benchmarks/bench_cost.py DEFENSE [--dataset mnist-5k] [--device cpu|cuda] [--epochs N] [--examples 128]

The same measurement as `advbayes bench DEFENSE --estimate` (advbayes.lab.cost): the seconds of one training epoch
of the defense and of its deterministic twin, and the seconds per test example of every attack of every threat
model at its largest radius, timed on --examples test examples (on the network after that one epoch: nearly every
example is attacked by every sub-attack, the upper end; a trained defense leaves fewer examples for the later
sub-attacks). Then projects a card: the epochs (the bench experiment's cap unless --epochs) x the epoch time, plus
per threat model the full test split x the radii x the attacks' per-example times, times the protocol's seeds.
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
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    projected = estimate_bench(
        args.defense,
        dataset=args.dataset,
        device=args.device,
        examples=args.examples,
        epochs=args.epochs,
        say=lambda line: print(line, file=sys.stderr),
    )
    print("\n".join(projected.lines()))


if __name__ == "__main__":
    main()
