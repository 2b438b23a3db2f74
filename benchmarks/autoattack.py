"""autoattack on a deterministic network: advbayes's entry against the official AutoAttack "standard", attack by attack.

    python benchmarks/autoattack.py [--device cpu|cuda] [--eps 0.1] [--norm inf|2] [--examples 32]
                                    [--run RUN_ID --tracking-uri URI] [--repeats 1]

What a leaderboard card of a deterministic defense spends nearly all its time on (docs/leaderboard.md): APGD-CE,
APGD-T (9 targets), FAB-T (9 targets) and Square (5,000 queries), each on the examples no earlier attack broke,
100 iterations each. advbayes runs its `autoattack` entry (the worst-case ensemble; each sub-attack's time read
from the progress messages it sends as it starts the next). "official" chains pyautoattack's own classes with the
settings AutoAttack's version "standard" gives them, on the still-robust examples, as its run_standard_evaluation
does; that method itself is not called because its dynamic-defense check traces every Python call of the forward.

The network is mnist-cnn trained 2 epochs on mnist-5k (quickstart; seconds), or with --run the model of a tracked
run on mnist-5k (a converged defense is more robust, so every attack runs on more examples and the times grow). The
inputs are the first --examples test digits. A deterministic network has one draw, so there is no naive loop over
draws to compare with: the ratio is the official time over advbayes's, per sub-attack and in all, beside each
implementation's robust accuracy after each sub-attack. The two draw different random starts, so their accuracies
agree within a few examples, not exactly (plugins/attacks/tests/test_evaluation.py holds them to the official on
500 digits)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import attrs
import torch
from common import mnist_test_digits, trained_mnist_cnn  # benchmarks/common.py, beside this script

from advbayes.components import EvalContext
from advbayes.engine.building import tracked_model
from advbayes.plugins import create_plugin_manager
from advbayes.registry import load_registry
from advbayes.stochastic import as_sampled, is_stochastic
from advbayes.stochastic.sampled import DeterministicSampled
from advbayes.stochastic.strategy import synchronize

PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def ratio(theirs: float, ours: float) -> str:
    """official / advbayes, or "-" where neither ran (nothing was left to attack)."""
    return "-" if max(theirs, ours) < 0.01 else f"{theirs / max(ours, 1e-9):.2f}x"


def official_parts(net: torch.nn.Module, eps: float, norm: str, device: torch.device) -> dict[str, Any]:
    """pyautoattack's four attacks as AutoAttack's version "standard" configures them."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    name = "Linf" if norm == "inf" else "L2"
    common = {"eps": eps, "norm": name, "seed": 0, "device": device}
    return {
        "apgd-ce": APGDAttack(net, n_restarts=1, n_iter=100, loss="ce", **common),
        "apgd-t": APGDAttack_targeted(net, n_restarts=1, n_iter=100, n_target_classes=9, **common),
        "fab-t": FABAttack_PT(net, n_restarts=1, n_iter=100, targeted=True, n_target_classes=9, **common),
        "square": SquareAttack(net, p_init=0.8, n_queries=5000, n_restarts=1, resc_schedule=False, **common),
    }


def official_standard(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of each official sub-attack and the robust accuracy after it, each run on what is still robust."""
    with torch.no_grad():
        robust = net(x).argmax(-1) == y
    seconds, accuracy = {}, {}
    for name, attack in official_parts(net, eps, norm, x.device).items():
        index = robust.nonzero().squeeze(1)
        synchronize(x.device)
        started = time.perf_counter()
        if index.numel():
            found = attack.perturb(x[index], y[index])
            with torch.no_grad():
                robust[index] = net(found).argmax(-1) == y[index]
        synchronize(x.device)
        seconds[name], accuracy[name] = time.perf_counter() - started, float(robust.float().mean())
    return seconds, accuracy


class PartClock:
    """The status sink of the worst-case entry: the time between its "NAME (i/n) ..." messages is NAME's time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.current: tuple[str, float] | None = None

    def __call__(self, message: str) -> None:
        self.stop()
        self.current = (message.split(" (", 1)[0], time.perf_counter())

    def stop(self) -> None:
        """Close the running sub-attack's time."""
        synchronize(self.device)
        if self.current is not None:
            name, started = self.current
            self.seconds[name] = time.perf_counter() - started
            self.current = None


def advbayes_standard(
    entry: Any, build: Any, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of each sub-attack of the `autoattack` entry and the robust accuracy after it."""
    clock = PartClock(x.device)
    bound = entry.bind(EvalContext(build_attack=build, device=x.device, status=clock))
    result = bound(as_sampled(net), x, y)
    clock.stop()
    if set(clock.seconds) - set(PARTS):  # the worst-case entry's progress messages changed: these times would lie
        raise SystemExit(f"autoattack reported sub-attacks {sorted(clock.seconds)}; this benchmark knows {PARTS}")
    # a sub-attack that found nothing left to attack was skipped: every example was broken before it
    accuracy = {name: result.diagnostics.get(f"robust_after_{name}", 0.0) for name in PARTS}
    return clock.seconds, accuracy


def network(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The attacked network (quickstart's, or the tracked run's) and the first --examples mnist-5k test digits."""
    if not args.run:
        net, x, y = trained_mnist_cnn(args.examples)
        return net.to(device).eval(), x.to(device), y.to(device)
    loaded = tracked_model(create_plugin_manager(), args.run, args.tracking_uri, device)
    x, y = (t.to(device) for t in mnist_test_digits(args.examples))
    if is_stochastic(loaded, x):
        raise SystemExit(
            f"run {args.run}: its model is stochastic; AutoAttack standard is for deterministic ones "
            "(benchmarks/autoattack_rand.py times autoattack-rand)"
        )
    net = loaded.net if isinstance(loaded, DeterministicSampled) else loaded
    return net.eval(), x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--norm", choices=("inf", "2"), default="inf")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--run", default=None, help="a tracked run on mnist-5k whose model is attacked")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    registry = load_registry(pm=create_plugin_manager())
    where = ("benchmark", "autoattack", "attack")
    entry = attrs.evolve(
        registry.build("attacks", registry.resolve("attacks", "autoattack", where=where)), eps=args.eps, norm=args.norm
    )

    def build(spec: object) -> object:
        return registry.build("attacks", registry.resolve("attacks", spec, where=where))

    net, x, y = network(args, device)
    with torch.no_grad():
        clean = float((net(x).argmax(-1) == y).float().mean())
    print(
        f"device {device}, {len(x)} mnist-5k test digits, eps {args.eps:g} (L_{args.norm}), "
        f"clean accuracy {clean:.3f}, threads {torch.get_num_threads()}, {args.repeats} repeat(s), medians"
    )
    runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {"advbayes": [], "official": []}
    for round_ in range(args.repeats):  # alternating order, so a spell of outside load hits both alike
        order = ("advbayes", "official") if round_ % 2 == 0 else ("official", "advbayes")
        for which in order:
            torch.manual_seed(round_)
            runs[which].append(
                advbayes_standard(entry, build, net, x, y)
                if which == "advbayes"
                else official_standard(net, x, y, args.eps, args.norm)
            )

    def median(which: str, name: str, part: int) -> float:
        values = sorted(run[part].get(name, 0.0) for run in runs[which])
        return values[len(values) // 2]

    print(f"{'sub-attack':<10} {'advbayes s':>11} {'robust':>7} {'official s':>11} {'robust':>7} {'ratio':>7}")
    for name in PARTS:
        ours, theirs = median("advbayes", name, 0), median("official", name, 0)
        print(
            f"{name:<10} {ours:>11.2f} {median('advbayes', name, 1):>7.3f} {theirs:>11.2f} "
            f"{median('official', name, 1):>7.3f} {ratio(theirs, ours):>7}"
        )
    totals = {which: sorted(sum(run[0].values()) for run in runs[which]) for which in runs}
    ours, theirs = (totals[w][len(totals[w]) // 2] for w in ("advbayes", "official"))
    print(f"{'all':<10} {ours:>11.2f} {'':>7} {theirs:>11.2f} {'':>7} {ratio(theirs, ours):>7}", flush=True)


if __name__ == "__main__":
    main()
