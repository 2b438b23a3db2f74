"""What a leaderboard card costs before starting one: `advbayes bench` on one defense, projected from measured times.

    python benchmarks/bench_cost.py DEFENSE [--dataset mnist-5k] [--device cpu|cuda] [--epochs N] [--examples 128]

Measures, for the defense under the protocol of the data set: the seconds of one training epoch (of the defense
and of its deterministic twin), and the seconds per test example of every attack of every threat model at its
largest radius, timed on --examples test examples (on the network after that one epoch: nearly every example is
attacked by every sub-attack, the upper end; a trained defense leaves fewer examples for the later sub-attacks).
Then projects a card: the epochs (the bench experiment's cap unless --epochs) x the epoch time, plus per threat
model the full test split x the radii x the attacks' per-example times, times the protocol's seeds. Run it with
--device cuda on a GPU to project a GPU card from that GPU's own measured times.
"""

from __future__ import annotations

import argparse
import warnings

import torch

import advbayes
from advbayes.attacks import entry
from advbayes.lab.protocol import TWIN, protocol_for
from advbayes.registry import load_registry
from advbayes.stochastic import as_sampled, is_stochastic
from advbayes.stochastic.strategy import call_seconds as call_seconds_of


def epoch_seconds(experiment: str, defense: str, device: str) -> tuple[float, torch.nn.Module, dict]:
    """Seconds of one training epoch of `defense` (from its history), the network and the resolved experiment."""
    result = advbayes.run(experiment, defense=defense, epochs=1, until_converged=False, track=False, device=device)
    assert isinstance(result, advbayes.RunResult)
    return float(result.history[-1]["epoch_seconds"]), result.model, result.spec


def call_seconds(attack: object, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    """Median seconds of the attack on (x, y) over `repeats` calls, the first included (as a card's first batch
    includes the execution strategy's measurement; an autoattack-rand call on a Bayesian CNN is minutes on a CPU)."""
    times = sorted(call_seconds_of(lambda: attack(model, x, y), x.device) for _ in range(repeats))  # type: ignore[operator]
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("defense")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs to project (default: the cap)")
    parser.add_argument("--examples", type=int, default=128, help="test examples each attack is timed on")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per attack (median)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    protocol = protocol_for(args.dataset)
    device = torch.device(args.device)
    defense_epoch, model, spec = epoch_seconds(protocol.experiment, args.defense, args.device)
    twin_epoch, twin = 0.0, None
    if args.defense != TWIN:
        twin_epoch, twin, _ = epoch_seconds(protocol.experiment, TWIN, args.device)
    model, batch = as_sampled(model).eval(), args.examples
    registry = load_registry()
    data = registry.build("datasets", spec["dataset"])
    test = data.load("test")
    x = torch.stack([torch.as_tensor(test[i][0]) for i in range(batch)]).float().to(device)
    y = torch.as_tensor([int(test[i][1]) for i in range(batch)]).to(device)
    stochastic = is_stochastic(model, x)
    epochs = args.epochs or int(registry.resolve_experiment(protocol.experiment)["epochs"])
    print(
        f"{args.defense} on {args.dataset} (protocol {protocol.version}), device {device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {'stochastic' if stochastic else 'deterministic'}, timed on {batch} "
        "test examples"
    )
    print(f"training: {defense_epoch:.2f} s/epoch (twin {twin_epoch:.2f} s/epoch) x {epochs} epochs")
    evaluation = 0.0
    for threat in protocol.threat_models:
        eps = max(threat.radii)
        for spec_ in protocol.attacks(threat, stochastic, "twin" if twin is not None else None):
            name = spec_["name"]
            if spec_.get("use") == "transfer":  # PGD-40 on the twin; the defense only predicts
                assert twin is not None
                attack, target = entry("pgd-40", eps=eps, norm=threat.norm), as_sampled(twin).eval()
            else:
                overrides = {k: v for k, v in spec_.items() if k not in ("extends", "name")}
                attack, target = entry(spec_["extends"], **{**overrides, "eps": eps}), model
            seconds = call_seconds(attack, target, x, y, args.repeats) / batch
            total = seconds * protocol.test_examples * len(threat.radii)
            evaluation += total
            print(f"  {name:<24} {seconds:8.4f} s/example -> {total / 60:8.1f} min for {len(threat.radii)} radii")
    training = (defense_epoch + twin_epoch) * epochs
    per_seed = training + evaluation
    seeds = len(protocol.seeds)
    print(
        f"projected card: {per_seed / 60:.1f} min per seed ({training / 60:.1f} training, {evaluation / 60:.1f} "
        f"attacks), {seeds * per_seed / 3600:.2f} h for {seeds} seeds"
    )


if __name__ == "__main__":
    main()
