"""What a bench will cost, before it starts: a few training epochs of the defense and one of its twin, and each
protocol attack timed at its smallest and its largest radius on a few test examples, projected to the protocol's
test split, radii, epoch cap and seeds (`advbayes bench ENTRY --estimate`; benchmarks/bench_cost.py prints the same).

An attack skips an example the network already gets wrong and stops on one it has broken, so its time follows the
network's accuracy and the radius: autoattack on a converged mnist-cnn took 7.6 s per digit at eps 0.1 and 0.22 s
at 0.2 (2026-12-06), so a radius between the two measured ones is projected as a range between their times. The
estimate states the clean accuracy of the network it timed and warns where that is low."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from advbayes.errors import EvaluationWarning, RunError
from advbayes.lab.protocol import TWIN, protocol_for

LOW_ACCURACY = 0.5  # below it the timed network leaves most examples unattacked: the times are a lower bound
MAX_TRAIN_EPOCHS = 1000


@attrs.frozen
class AttackCost:
    """One protocol attack of one threat model: measured seconds per test example at the smallest and the largest
    radius, and its projected seconds per seed (the full test split at every radius) as a range: a radius between
    the two costs between their times."""

    threat: str
    name: str
    at_smallest: float  # seconds per example at the threat model's smallest radius
    at_largest: float  # ... and at its largest
    radii: int
    test_examples: int

    @property
    def seconds_per_seed(self) -> tuple[float, float]:
        """The least and the most seconds of one seed: both measured radii, and every other between their times."""
        measured = self.at_smallest + (self.at_largest if self.radii > 1 else 0.0)
        between = max(self.radii - 2, 0)
        low, high = sorted((self.at_smallest, self.at_largest))
        return (
            self.test_examples * (measured + between * low),
            self.test_examples * (measured + between * high),
        )


@attrs.frozen
class CostEstimate:
    """A bench's projected time: training epochs x measured epoch seconds plus every attack, per seed and in all."""

    defense: str
    dataset: str
    protocol: int
    device: str
    stochastic: bool
    examples: int  # test examples each attack was timed on
    trained_epochs: int  # epochs the timed network was trained
    clean_accuracy: float  # of the timed network on the timed examples
    epochs: int  # the epochs projected: the bench experiment's cap (an upper bound when it trains until converged)
    defense_epoch: float
    twin_epoch: float
    attacks: tuple[AttackCost, ...]
    seeds: int

    @property
    def training_seconds(self) -> float:
        """Seconds of one seed's training: the defense's and its twin's epochs."""
        return (self.defense_epoch + self.twin_epoch) * self.epochs

    @property
    def attack_seconds(self) -> tuple[float, float]:
        """The least and the most seconds of one seed's attacks, every threat model and radius."""
        return sum(a.seconds_per_seed[0] for a in self.attacks), sum(a.seconds_per_seed[1] for a in self.attacks)

    @property
    def total_seconds(self) -> tuple[float, float]:
        """The least and the most seconds of the whole card: every seed's training and attacks."""
        low, high = self.attack_seconds
        return self.seeds * (self.training_seconds + low), self.seeds * (self.training_seconds + high)

    def lines(self) -> list[str]:
        """The estimate as a person reads it: the measured times, then the projection."""
        kind = "stochastic" if self.stochastic else "deterministic"
        lines = [
            f"{self.defense} on {self.dataset} (protocol {self.protocol}), device {self.device}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {kind}; attacks timed on {self.examples} test "
            "examples",
            f"timed network: {self.trained_epochs} epoch(s) of training, clean accuracy {self.clean_accuracy:.3f} on "
            "the timed examples",
            f"training: {self.defense_epoch:.2f} s/epoch (twin {self.twin_epoch:.2f} s/epoch) x {self.epochs} epochs "
            "(the cap: a run that converges stops earlier)",
        ]
        for a in self.attacks:
            low, high = a.seconds_per_seed
            lines.append(
                f"  {a.threat:<5} {a.name:<24} {a.at_smallest:9.4f} s/example at the smallest radius, "
                f"{a.at_largest:.4f} at the largest -> {span(low / 60, high / 60, '.1f')} min per seed"
            )
        if self.clean_accuracy < LOW_ACCURACY:
            lines.append(
                f"warning: the timed network gets {1 - self.clean_accuracy:.0%} of the timed examples wrong, which the "
                "attacks skip: a trained one is attacked longer (time a better-trained one with --train-epochs N)"
            )
        (low, high), (total_low, total_high) = self.attack_seconds, self.total_seconds
        per_seed = span((self.training_seconds + low) / 60, (self.training_seconds + high) / 60, ".1f")
        lines.append(
            f"projected card: {per_seed} min per seed ({self.training_seconds / 60:.1f} training, "
            f"{span(low / 60, high / 60, '.1f')} attacks), {span(total_low / 3600, total_high / 3600, '.2f')} h for "
            f"{self.seeds} seeds"
        )
        return lines


def span(low: float, high: float, spec: str) -> str:
    """'low-high' in `spec`, or one number where both print the same."""
    first, second = format(low, spec), format(high, spec)
    return first if first == second else f"{first}-{second}"


def estimate_bench(
    entry: str,
    *,
    dataset: str = "mnist-5k",
    seeds: Sequence[int] | None = None,
    overrides: Sequence[tuple[str, Any]] = (),
    device: str = "auto",
    registry: Sequence[str | Path] = (),
    examples: int = 128,
    epochs: int | None = None,
    train_epochs: int = 1,
    say: Callable[[str], None] = print,
) -> CostEstimate:
    """Measure and project what `advbayes bench entry` will cost on `device` (nothing is tracked or written)."""
    from advbayes.attacks import entry as attack_entry
    from advbayes.engine.lifecycle import run
    from advbayes.lab.bench import check_entry
    from advbayes.results import RunResult
    from advbayes.stochastic import as_sampled, is_stochastic, predict
    from advbayes.stochastic.strategy import call_seconds

    protocol = protocol_for(dataset)
    if not 1 <= examples <= protocol.test_examples:
        raise RunError(f"--examples: expected 1 to {protocol.test_examples} (the test split), got {examples}")
    if not 1 <= train_epochs <= MAX_TRAIN_EPOCHS:
        raise RunError(f"--train-epochs: expected 1 to {MAX_TRAIN_EPOCHS}, got {train_epochs}")
    loaded = check_entry(entry, registry)

    def trained_for(defense: str, epochs: int) -> RunResult:
        say(f"estimate {entry}: {epochs} training epoch(s) of {defense}")
        settings = [*overrides, ("defense", defense), ("epochs", epochs), ("until_converged", False)]
        with warnings.catch_warnings():  # one epoch is a timing: its posterior's "not converged" is no finding
            warnings.simplefilter("ignore", EvaluationWarning)
            result = run(protocol.experiment, overrides=settings, registry=registry, device=device, track=False)
        assert isinstance(result, RunResult)
        return result

    trained = trained_for(entry, train_epochs)
    spec, model = trained.spec, as_sampled(trained.model).eval()
    twin = None if spec["defense"].get("use") == TWIN else trained_for(TWIN, 1)
    test = loaded.build("datasets", spec["dataset"]).load("test")
    target = torch.device(trained.device)
    x = torch.stack([torch.as_tensor(test[i][0]) for i in range(examples)]).float().to(target)
    y = torch.as_tensor([int(test[i][1]) for i in range(examples)]).to(target)
    defense = loaded.build("defenses", spec["defense"])
    prediction = {"inference_samples": defense.inference_samples, "prediction_average": defense.prediction_average}
    stochastic = is_stochastic(model, x)
    with torch.no_grad():
        probs, _ = predict(model, x, defense.inference_samples, defense.prediction_average)
    clean = float((probs.argmax(-1) == y).float().mean())
    costs = []
    for threat in protocol.threat_models:
        for attack in protocol.attacks(threat, stochastic, "twin" if twin is not None else None):
            seconds = []
            for eps in sorted({min(threat.radii), max(threat.radii)}):
                say(f"estimate {entry}: timing {attack['name']} at eps {eps:g} on {examples} examples")
                if attack.get("use") == "transfer":  # crafted on the twin (PGD-40); the defense only predicts
                    assert twin is not None
                    call = attack_entry("pgd-40", eps=eps, norm=threat.norm)
                    victim = as_sampled(twin.model).eval()
                else:
                    own = {k: v for k, v in attack.items() if k not in ("extends", "name")}
                    call, victim = attack_entry(attack["extends"], **own, eps=eps, **prediction), model
                seconds.append(call_seconds(lambda: call(victim, x, y), x.device) / examples)  # noqa: B023 - now
            costs.append(
                AttackCost(
                    threat.name, attack["name"], seconds[0], seconds[-1], len(threat.radii), protocol.test_examples
                )
            )
    cap = epochs or int(loaded.resolve_experiment(protocol.experiment, overrides)["epochs"])  # the bench's own cap
    return CostEstimate(
        defense=entry,
        dataset=dataset,
        protocol=protocol.version,
        device=str(target),
        stochastic=stochastic,
        examples=examples,
        trained_epochs=train_epochs,
        clean_accuracy=clean,
        epochs=cap,
        defense_epoch=sum(float(h["epoch_seconds"]) for h in trained.history) / len(trained.history),
        twin_epoch=0.0 if twin is None else float(twin.history[-1]["epoch_seconds"]),
        attacks=tuple(costs),
        seeds=len(protocol.seeds if seeds is None else seeds),
    )
