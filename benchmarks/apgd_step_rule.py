"""Strength, not time: does APGD's step-size rule read a noisy loss as a stalled one? APGD-CE (S_A = 20, its last
iterate, as autoattack-rand runs it) at its default rho 0.75 and with its oscillation rule off, beside EOT-PGD-40
with the same 20 draws, and autoattack-rand (APGD-CE then APGD-DLR, per example the point right on fewer of R
predictions on the same draws as the point kept so far, or on a tie with the clean input), on rand_strength.py's
network, every attack's examples judged on the same fresh draws.

    python benchmarks/apgd_step_rule.py [--examples 400] [--eps 0.1] [--device cpu|cuda]

APGD halves an example's step size at each checkpoint where its loss rose in at most rho of the steps since the last
one (AutoAttack's condition 1). On a stochastic network the loss each step reads is an estimate from S_A draws, so
it rises about half the time whether or not the attack progresses, and at rho 0.75 the step size halves at nearly
every checkpoint. rho 1e-6 halves only where the loss never rose (condition 2, no better point since the last
checkpoint, still applies). The last rows count, per pair of attacks, the digits robust under all R after one
attack and not after the other (a paired comparison on the same digits and judging draws).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from rand_strength import S_I, compare, network  # benchmarks/rand_strength.py, beside this script

import advbayes.attacks

EOT = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--init-sigma", type=float, default=0.05, help="the network's weight sigma")
    args = parser.parse_args()
    args.run, args.tracking_uri = None, None  # rand_strength's default network, never a tracked run here
    device = torch.device(args.device)
    model, x, y = network(args, device)
    common = {"eps": args.eps, "attack_samples": EOT, "inference_samples": S_I}
    attacks: dict[str, Callable[[], torch.Tensor]] = {
        "apgd-ce rho 0.75 (default)": lambda: advbayes.attacks.entry("apgd-ce", keep="last", **common)(model, x, y),
        "apgd-ce rho 1e-6": lambda: advbayes.attacks.entry("apgd-ce", keep="last", rho=1e-6, **common)(model, x, y),
        "pgd-40 S_A 20": lambda: advbayes.attacks.entry("pgd-40", **common)(model, x, y),
        "autoattack-rand": lambda: advbayes.attacks.entry("autoattack-rand", eps=args.eps, inference_samples=S_I)(
            model, x, y
        ),
    }
    print(
        f"mnist-cnn (2 epochs) made Bayesian, init_sigma {args.init_sigma}; {len(y)} mnist-5k test digits, "
        f"L_inf eps {args.eps}, device {device}, {torch.get_num_threads()} threads"
    )
    found = compare(model, x, y, attacks, args.eps)
    names = list(found)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = found[first]["all R"], found[second]["all R"]
            print(
                f"all R, robust after {first} only: {int((a & ~b).sum())}; after {second} only: {int((~a & b).sum())}"
            )


if __name__ == "__main__":
    main()
